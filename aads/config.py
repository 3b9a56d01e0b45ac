"""The AADS platform spec: one YAML file describes crops, backbones, adapters, OOD and platform.

Every component (CLI, KFP components, KServe servers) receives a `PlatformConfig`; nothing reads
YAML or environment variables on its own. Validation happens here, once, with errors that name
the offending field (``crops.1.phase2_batches.0: class 'healthy' is already a phase-1 class``).
Secrets never live in the file: storage and registry settings name the environment variables
that hold them, and `forbid` on every model rejects a stray ``secret_key:`` in YAML.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aads.adapters.conec.config import CONECSettings
from aads.adapters.config import BlockSelection
from aads.adapters.dora.config import DoRASettings
from aads.adapters.sd_lora.config import SDLoRASettings
from aads.capture.settings import CaptureSettings
from aads.cluster import ACCESS_KEY_ENV, ENDPOINT_ENV, SECRET_KEY_ENV
from aads.errors import BadInput, NotFound
from aads.vlm.settings import ScoutingSettings

SLUG = r"^[a-z][a-z0-9_]*$"
Slug = Annotated[str, Field(pattern=SLUG, min_length=1, max_length=48)]
DataName = Annotated[str, Field(min_length=1, max_length=200)]
"""A crop or class name as a dataset spells it (``Corn_(maize)``); compared by its slug."""


def slugify(name: str) -> str:
    """The slug a folder name becomes: ``Pepper,_bell`` -> ``pepper_bell``, ``Corn_(maize)`` ->
    ``corn_maize``. Config names and data aliases are compared through it."""
    s = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    return s if s and s[0].isalpha() else f"c_{s}" if s else "unnamed"


PATCH_SIZES = {"DINOv3": 16, "DINOv2": 14}


def named_generation(source: str) -> str | None:
    """``DINOv2`` or ``DINOv3`` when the source string says which, else None.

    DINOv2 sources name it (``facebook/dinov2-base``, ``random:dinov2_tiny``, a mirror path
    ending in the id); every other preset is DINOv3. Of a path only the last part counts (a
    parent folder says nothing about the model). A directory or a mirror whose name does not
    tell is only known once loaded (`aads.backbone.load_backbone` checks it then).
    """
    name = source.lower().rstrip("/")
    if "://" in name or name.startswith(("/", ".", "~")):
        name = name.rpartition("/")[2]
    if "dinov2" in name:
        return "DINOv2"
    if "dinov3" in name or name.startswith(("random:", "synthetic:")):
        return "DINOv3"
    return None


class ConfigError(BadInput):
    """A spec file that cannot be used; the message names the file and every bad field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------------- backbones


class BackboneSettings(_Model):
    """Where a DINOv3 (or, as the ungated fallback, DINOv2) backbone comes from and how images
    are fed to it. The source decides the generation: ``facebook/dinov2-base`` or
    ``random:dinov2_tiny`` is DINOv2 (patch 14), and every stage after loading follows it.

    ``source`` is a Hugging Face id (``facebook/dinov3-vitl16-pretrain-lvd1689m``), a local
    directory saved with ``save_pretrained``, an ``s3://bucket/prefix`` mirror, or
    ``random:<preset>`` (weights built in code from ``seed``; for tests and benchmarks), or
    ``synthetic:<preset>`` (built in code, then pretrained once on synthetic plants of other
    crops and cached: a stand-in foundation model for the demo).
    """

    source: str = Field(min_length=1)
    revision: str | None = None
    image_size: int = Field(
        224,
        ge=16,
        le=1024,
        description="square input side, a multiple of the patch: 16 (DINOv3), 14 (DINOv2)",
    )
    pooling: Literal["cls", "cls_mean"] = Field(
        "cls_mean", description="cls, or CLS concatenated with mean patch token (DINOv3 probe)"
    )
    normalization: Literal["auto", "lvd1689m", "sat493m", "lvd142m"] = Field(
        "auto", description="auto picks by the pretraining dataset in the model id"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    gradient_checkpointing: bool = False
    seed: int = Field(0, description="weight seed for random:<preset> sources")

    @field_validator("source")
    @classmethod
    def _source_form(cls, v: str) -> str:
        if v.startswith(("random:", "synthetic:")) and not re.fullmatch(
            r"(random|synthetic):[a-z0-9_+]+", v
        ):
            raise ValueError(f"'{v}' is not random:<preset> or synthetic:<preset>")
        if v.startswith("s3://") and not re.fullmatch(r"s3://[a-z0-9.\-]{3,63}/.+", v):
            raise ValueError(f"'{v}' is not s3://<bucket>/<prefix>")
        return v

    @field_validator("image_size")
    @classmethod
    def _patch_multiple(cls, v: int, info: ValidationInfo) -> int:
        # A side off the patch grid loses its last pixels in the patch convolution.
        generation = named_generation(str(info.data.get("source", "")))
        if generation is None:
            if all(v % p for p in PATCH_SIZES.values()):
                raise ValueError(
                    f"image_size {v} must be a multiple of a patch size: 16 (DINOv3) or 14 (DINOv2)"
                )
            return v
        patch = PATCH_SIZES[generation]
        if v % patch:
            below = v // patch * patch
            raise ValueError(
                f"image_size {v} must be a multiple of the patch size {patch} ({generation}), "
                f"e.g. {below} or {below + patch}"
            )
        return v


# --------------------------------------------------------------------------- adapters
# Each method's settings live beside its code: `aads/adapters/{dora,sd_lora,conec}/config.py`.


class ThresholdSettings(_Model):
    mode: Literal["percentile", "mean_std"] = "percentile"
    k: float = Field(2.0, gt=0, description="mean + k * std mode")
    percentile: float = Field(95.0, gt=50, lt=100, description="per-class percentile mode")
    min_samples: int = Field(10, ge=2, description="below this a class uses the pooled threshold")


class OODSettings(_Model):
    covariance: Literal["shared_ledoit_wolf", "shared_empirical", "diagonal", "per_class"] = (
        "shared_ledoit_wolf"
    )
    feature_space: Literal["raw", "l2"] = "l2"
    relative: bool = False
    threshold: ThresholdSettings = ThresholdSettings()


class TrainingSettings(_Model):
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=8192)
    lr: float = Field(1e-3, gt=0, lt=10)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_accumulation: int = Field(1, ge=1, le=1024)
    gradient_checkpointing: bool = False
    early_stopping_patience: int | None = Field(3, ge=1)
    num_workers: int = Field(0, ge=0, le=64)


class PhaseTraining(_Model):
    router: TrainingSettings = TrainingSettings(epochs=30, lr=1e-2, batch_size=64)
    phase1: TrainingSettings = TrainingSettings(epochs=10, lr=1e-3)
    phase2: TrainingSettings = TrainingSettings(epochs=5, lr=1e-3)
    phase3: TrainingSettings = TrainingSettings(epochs=5, lr=1e-3)


class AdapterSettings(_Model):
    backbone: BackboneSettings
    dora: DoRASettings = DoRASettings()
    sd_lora: SDLoRASettings = SDLoRASettings()
    conec: CONECSettings = CONECSettings()
    ood: OODSettings = OODSettings()


# --------------------------------------------------------------------------- crops & data


class CropSpec(_Model):
    """One crop: its parts, the disease classes each phase learns, its domain shifts."""

    name: Slug
    parts: list[Slug] = Field(default_factory=lambda: ["leaf"], min_length=1)
    phase1_classes: list[Slug] = Field(min_length=2)
    phase2_batches: list[list[Slug]] = Field(default_factory=list)
    phase3_domains: list[Slug] = Field(default_factory=list)
    ood_holdout: list[Slug] = Field(
        default_factory=list, description="classes never trained: near-OOD evaluation only"
    )
    aliases: list[DataName] = Field(
        default_factory=list,
        description="this crop's names in the data, e.g. PlantVillage's 'Corn_(maize)' for "
        "corn; compared by slug (corn_maize)",
    )
    class_aliases: dict[Slug, list[DataName]] = Field(
        default_factory=dict,
        description="configured class -> its names in the data, e.g. gray_leaf_spot: "
        "['Cercospora_leaf_spot Gray_leaf_spot']; compared by slug",
    )

    @model_validator(mode="after")
    def _aliases_unambiguous(self) -> CropSpec:
        classes = set(self.all_classes)
        owner: dict[str, str] = {}
        for cls_name, names in self.class_aliases.items():
            if cls_name not in classes:
                raise ValueError(
                    f"class_aliases names '{cls_name}', which is not a class of this crop "
                    f"({', '.join(self.all_classes)})"
                )
            for alias in names:
                slug = slugify(alias)
                if slug in classes and slug != cls_name:
                    raise ValueError(
                        f"class_aliases.{cls_name}: '{alias}' is the configured class '{slug}'"
                    )
                if owner.setdefault(slug, cls_name) != cls_name:
                    raise ValueError(
                        f"class_aliases: '{alias}' is claimed by both '{owner[slug]}' and "
                        f"'{cls_name}'"
                    )
        return self

    @model_validator(mode="after")
    def _classes_disjoint(self) -> CropSpec:
        seen: dict[str, str] = {}

        def claim(cls_name: str, where: str) -> None:
            if cls_name in seen:
                raise ValueError(f"class '{cls_name}' in {where} is already in {seen[cls_name]}")
            seen[cls_name] = where

        for c in self.phase1_classes:
            claim(c, "phase1_classes")
        for i, batch in enumerate(self.phase2_batches):
            if not batch:
                raise ValueError(f"phase2_batches.{i} is empty; each batch adds >= 1 class")
            for c in batch:
                claim(c, f"phase2_batches.{i}")
        for c in self.ood_holdout:
            claim(c, "ood_holdout")
        if len(set(self.phase3_domains)) != len(self.phase3_domains):
            raise ValueError(f"phase3_domains has duplicates: {self.phase3_domains}")
        if BASE_DOMAIN in self.phase3_domains:
            raise ValueError(f"phase3_domains cannot contain the base domain '{BASE_DOMAIN}'")
        if len(set(self.parts)) != len(self.parts):
            raise ValueError(f"parts has duplicates: {self.parts}")
        return self

    @property
    def known_classes(self) -> list[str]:
        """Every class the adapter learns, in head order: phase 1, then each phase-2 batch."""
        return [*self.phase1_classes, *(c for b in self.phase2_batches for c in b)]

    @property
    def all_classes(self) -> list[str]:
        return [*self.known_classes, *self.ood_holdout]

    def names_crop(self, found: str) -> bool:
        """Whether a crop name found in the data (any spelling) is this crop."""
        slug = slugify(found)
        return slug == self.name or slug in {slugify(a) for a in self.aliases}

    def class_named(self, *found: str) -> str | None:
        """The configured class that a class name found in the data stands for (itself or
        through `class_aliases`), trying each spelling given in turn; None if none."""
        for name in found:
            slug = slugify(name)
            if slug in self.all_classes:
                return slug
            for cls_name, names in self.class_aliases.items():
                if slug in {slugify(a) for a in names}:
                    return cls_name
        return None


BASE_DOMAIN = "base"
"""Domain name of images that are not a domain shift (lab photos, PlantVillage)."""


class SplitFractions(_Model):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, ge=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self


class SynthSettings(_Model):
    """The deterministic synthetic dataset `aads data synth` draws for demos and tests."""

    images_per_class: int = Field(24, ge=1, le=100_000)
    images_per_domain_class: int = Field(12, ge=0, le=100_000)
    image_size: int = Field(128, ge=32, le=1024)
    seed: int = 0


class ExcludedImage(_Model):
    """One image a dataset is known to get wrong (a fruit filed as a leaf, a screenshot),
    named by its bytes' sha256 (survives renames and copies) or its path under the data root;
    ingest reports it as ``excluded`` with `reason`."""

    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    path: str | None = Field(None, min_length=1, description="relative to the data root, '/'")
    reason: str = Field(min_length=1, description="why it is left out (shown in rejects.csv)")

    @model_validator(mode="after")
    def _one_key(self) -> ExcludedImage:
        if (self.sha256 is None) == (self.path is None):
            raise ValueError("give exactly one of sha256 or path")
        return self


class DataSettings(_Model):
    root: Path = Path(".aads/data")
    split: SplitFractions = SplitFractions()
    split_seed: int = 0
    min_image_side: int = Field(32, ge=1, description="smaller images are rejected")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="decompression-bomb guard: larger images are rejected"
    )
    synth: SynthSettings = SynthSettings()
    exclude: list[ExcludedImage] = Field(
        default_factory=list, description="known-bad images left out of every manifest"
    )


# --------------------------------------------------------------------------- platform


class StorageSettings(_Model):
    """S3-compatible object store (MinIO in the cluster). Credentials come from environment
    variables named here, never from the file."""

    endpoint: str | None = Field(
        None, description="host:port or URL; None means AWS S3 (s3.amazonaws.com)"
    )
    region: str | None = None
    secure: bool = True
    bucket: str = Field("aads", pattern=r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
    prefix: str = ""
    access_key_env: str = ACCESS_KEY_ENV
    secret_key_env: str = SECRET_KEY_ENV
    endpoint_env: str = Field(
        ENDPOINT_ENV, description="overrides endpoint when set (Kubernetes Secrets)"
    )
    retries: int = Field(5, ge=1, le=20, description="attempts before a clear 'store down' error")
    timeout_s: float = Field(30.0, gt=0, le=3600, description="per-request connect/read timeout")
    cache_dir: Path = Path.home() / ".cache" / "aads"

    def credentials(self, environ: dict[str, str] | None = None) -> tuple[SecretStr, SecretStr]:
        """Read the access and secret key from the environment at the moment of use."""
        env = os.environ if environ is None else environ
        return SecretStr(env.get(self.access_key_env, "")), SecretStr(
            env.get(self.secret_key_env, "")
        )

    def resolved_endpoint(self, environ: dict[str, str] | None = None) -> str | None:
        env = os.environ if environ is None else environ
        return env.get(self.endpoint_env) or self.endpoint


class RegistrySettings(_Model):
    tracking_uri: str | None = Field(
        None, description="None: `aads` starts MLflow on sqlite under .aads/ for local runs"
    )
    experiment: str = "aads"
    adapter_model_prefix: str = "aads-adapter-"
    router_model_name: str = "aads-router"
    environments: list[Slug] = Field(
        default_factory=lambda: ["staging", "production"],
        description="GitOps environments; each is also an MLflow alias set by `aads promote`",
    )
    artifact_store: str | None = Field(
        None,
        description="the MLflow server's --artifacts-destination (s3://...): maps proxied "
        "mlflow-artifacts:/ sources to URIs KServe's storage initializer can read",
    )


class ContinuationGateSettings(_Model):
    """What a continuation (`aads train continue`) must reach against its parent, both measured
    on the same evaluation images (`aads.continual.gate`)."""

    min_new_task_accuracy: float = Field(
        0.8,
        ge=0,
        le=1,
        description="accuracy on the task's own test images (new classes; known classes in the "
        "new domain). 0.8: as the whole-pipeline gate's min_accuracy",
    )
    max_old_accuracy_drop: float = Field(
        0.05,
        ge=0,
        le=1,
        description="how far accuracy on the evaluation set's earlier classes may fall below the "
        "parent's (absolute). 0.05: a continuation may not buy a new disease with one in twenty "
        "of the old answers",
    )
    max_ood_auroc_drop: float = Field(
        0.05,
        ge=0,
        le=1,
        description="how far near- and far-OOD AUROC on the evaluation set may fall below the "
        "parent's (absolute)",
    )


class GateSettings(_Model):
    """What a trained adapter must reach to be registered as a ``candidate`` (`aads.gate`).

    Checks apply where they mean something: retention for each continual phase that ran,
    near-OOD AUROC when the crop has diseases the adapter does not know (``ood_holdout``),
    far-OOD AUROC when other crops are configured. A check that applies but whose number the
    run did not produce is "not measured" and `not_measured` decides; accuracy is always
    required. The defaults are for real DINOv3 backbones (see each field); the levels, and the
    measurements behind them, are in ``benchmarks/results/gate_levels.md``.
    """

    min_accuracy: float = Field(
        0.9,
        ge=0,
        le=1,
        description="accuracy of the last phase on every test image (pooled over classes and "
        "domains; the confusion matrix's number). 0.9: published PlantVillage models reach "
        "0.99 on lab images and about 0.7 on field photos, so 0.9 holds with up to 3 field "
        "images in 10 (config/production.yaml); below it one diagnosis in ten is wrong",
    )
    min_retention: float = Field(
        0.9,
        ge=0,
        le=2,
        description="old-class accuracy after phase 2 / before, and base-domain accuracy after "
        "phase 3 / before. 0.9: at most a tenth of what was known may be lost",
    )
    min_far_ood_auroc: float = Field(
        0.95,
        ge=0,
        le=1,
        description="AUROC of the OOD check against other crops' images. 0.95: another crop "
        "must almost never pass for this one",
    )
    min_near_ood_auroc: float = Field(
        0.7,
        ge=0,
        le=1,
        description="AUROC of the OOD check against the crop's diseases the adapter does not "
        "know (ood_holdout). 0.7: clearly better than chance (0.5) on the hardest case",
    )
    min_router_crop_accuracy: float = Field(
        0.9, ge=0, le=1, description="router: test accuracy of the crop head"
    )
    not_measured: Literal["fail", "pass"] = Field(
        "fail",
        description="a check that applies but was not measured (e.g. no images of the "
        "hold-out diseases): fail (default, nothing unmeasured ships) or pass",
    )
    continuation: ContinuationGateSettings = Field(
        default_factory=ContinuationGateSettings,
        description="a continuation against its parent (not_measured applies to it too)",
    )


class CanaryRoute(_Model):
    """A crop's canary predictor in Standard mode, where KServe has no traffic split: the
    router sends ``percent`` of that crop's images to ``url`` instead of the stable one.

    The share is picked per image by a hash of its bytes, so a retried image meets the same
    model and two replicas of the router agree."""

    url: str = Field(min_length=1, description="the canary predictor's base URL")
    percent: float = Field(gt=0, lt=100, description="share of the crop's images, in percent")
    version: str = Field("", description="model version the canary serves (for answers)")


class ServingSettings(_Model):
    """Limits, batching and connection hygiene of the KServe router, adapter predictors and
    scouting service (README, "Serving": what each bounds, and the worst case they allow)."""

    max_image_bytes: int = Field(10 * 2**20, ge=1024, description="per encoded image")
    max_request_bytes: int = Field(
        64 * 2**20, ge=1024, description="per request body, enforced while it streams in"
    )
    max_inflight_request_bytes: int = Field(
        128 * 2**20,
        ge=1024,
        description="request bodies being read or answered at once, per process; a request "
        "that would exceed it is answered 503 (retry later)",
    )
    max_images_per_request: int = Field(64, ge=1, le=4096)
    max_pixels: int = Field(40_000_000, ge=1024, description="decoded width x height, per image")
    max_request_pixels: int = Field(
        256_000_000, ge=1024, description="decoded pixels of a request's images together"
    )
    max_concurrent_decodes: int = Field(
        2, ge=1, le=64, description="images decoded at once, per process (memory bound)"
    )
    max_concurrent_requests: int = Field(
        64, ge=1, le=100_000, description="requests in flight per process; more are 503"
    )
    max_connections: int = Field(
        0,
        ge=0,
        description="open connections per process; 0: the file-descriptor limit less a reserve. "
        "At the limit the longest-idle connection is closed for a new one",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=600, description="to receive a request's headers (else 408, closed)"
    )
    max_header_bytes: int = Field(
        64 * 2**10, ge=1024, description="request line and headers together (else 431, closed)"
    )
    body_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="to receive a request's body once its headers are in"
    )
    keep_alive_timeout_s: float = Field(
        65.0, gt=0, le=3600, description="an idle keep-alive connection is closed after this"
    )
    model_repository: bool = Field(
        False,
        description="expose KServe's model repository load/unload routes (an unauthenticated "
        "admin surface: keep off on anything reachable)",
    )
    max_batch_size: int = Field(16, ge=1, le=1024, description="dynamic batching")
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description="dynamic batching")
    top_k: int = Field(3, ge=1, le=100)
    predictor_timeout_s: float = Field(30.0, gt=0, le=600)
    predictor_retries: int = Field(2, ge=0, le=10)
    predictor_url_template: str = Field(
        "http://aads-adapter-{crop}-predictor",
        description="where the router finds a crop's predictor; {crop} is substituted",
    )
    predictor_urls: dict[str, str] = Field(
        default_factory=dict, description="per-crop overrides of the template"
    )
    canaries: dict[str, CanaryRoute] = Field(
        default_factory=dict, description="per-crop canary predictors (Standard mode)"
    )
    scouting_url: str = Field(
        "",
        description="the scouting (VLM) service's base URL; empty: scouting is not offered",
    )
    scouting_default: bool = Field(
        False, description="scout images whose request does not say (needs scouting_url)"
    )
    scouting_timeout_s: float = Field(
        120.0, gt=0, le=600, description="per scouting call (it diagnoses every region)"
    )
    capture: CaptureSettings = Field(
        default_factory=CaptureSettings,
        description="what the router keeps of the images it answers (aads.capture); off",
    )
    metrics: bool = Field(
        True,
        description="count requests, answers, stages and batches on /metrics (aads.telemetry); "
        "off only to measure what counting costs",
    )

    @model_validator(mode="after")
    def _default_needs_a_service(self) -> ServingSettings:
        if self.scouting_default and not self.scouting_url:
            raise ValueError("scouting_default is true but scouting_url is empty")
        return self


class ContinuationSettings(_Model):
    """How `aads train continue` carries what the parent knew into its child."""

    ood: Literal["auto", "carry", "re_estimate"] = Field(
        "auto",
        description="the child's OOD check: 'carry' the parent's statistics and thresholds (new "
        "classes added from the task's images), 're_estimate' it on the task's and evaluation "
        "set's images whenever they show every class, or 'auto': re-estimate only when the "
        "evaluation set fits every old class on as many images as the parent's check was "
        "fitted on (the demo's field loop: re-estimating on 6 images a class dropped far-OOD "
        "AUROC from 1.000 to 0.768; carrying kept 0.994); see aads.continual.ood",
    )


class PlatformConfig(_Model):
    """The whole platform spec file."""

    name: Slug = "aads"
    crops: list[CropSpec] = Field(min_length=1)
    router: BackboneSettings
    adapter: AdapterSettings
    training: PhaseTraining = PhaseTraining()
    data: DataSettings = DataSettings()
    storage: StorageSettings = StorageSettings()
    registry: RegistrySettings = RegistrySettings()
    gate: GateSettings = GateSettings()
    serving: ServingSettings = ServingSettings()
    continuation: ContinuationSettings = ContinuationSettings()
    scouting: ScoutingSettings | None = Field(
        None, description="the VLM scouting stage for field photos (aads.vlm); None: off"
    )

    @field_validator("crops")
    @classmethod
    def _unique_crops(cls, crops: list[CropSpec]) -> list[CropSpec]:
        names = [c.name for c in crops]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"crop names must be unique; repeated: {dupes}")
        owner = {c.name: c.name for c in crops}
        for c in crops:
            for alias in c.aliases:
                slug = slugify(alias)
                if owner.setdefault(slug, c.name) != c.name:
                    raise ValueError(
                        f"alias '{alias}' of crop '{c.name}' already names crop '{owner[slug]}'"
                    )
        return crops

    def crop_named(self, found: str) -> CropSpec | None:
        """The configured crop that a crop name found in the data stands for (its name or one
        of its `aliases`, compared by slug), or None."""
        return next((c for c in self.crops if c.names_crop(found)), None)

    def crop(self, name: str) -> CropSpec:
        for c in self.crops:
            if c.name == name:
                return c
        raise ConfigError(f"unknown crop '{name}'; configured crops: {self.crop_names}")

    @property
    def crop_names(self) -> list[str]:
        return [c.name for c in self.crops]

    @property
    def parts(self) -> list[str]:
        """Every plant part across crops, in first-seen order: the router's part head."""
        return list(dict.fromkeys(p for c in self.crops for p in c.parts))


# --------------------------------------------------------------------------- loading


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per bad field, dotted path first, so a user can find it in the YAML."""
    lines = [f"{source}: {err.error_count()} invalid field(s)"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (typo? secrets belong in environment variables, not the file)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<config>") -> PlatformConfig:
    try:
        return PlatformConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


CONFIG_ENV = "AADS_CONFIG"
"""Environment variable naming the spec file when ``--config`` is not given."""
PACKAGED_SPECS = Path(__file__).resolve().parent / "specs"
"""The spec files shipped inside the package (demo.yaml, production.yaml, plantvillage.yaml)."""


class ConfigNotFound(NotFound):
    """No spec file where the user pointed, or none anywhere it is looked for by default."""


def locate_config(
    given: str | os.PathLike[str] | None,
    *,
    environ: Mapping[str, str],
    default: str = "demo.yaml",
    cwd: Path | None = None,
    given_as: str = "--config",
) -> Path:
    """The spec file a command uses: `given` (``--config``), else ``$AADS_CONFIG``, else
    ``./config/<default>`` in the working directory, else the `default` spec shipped with AADS.

    A file named explicitly (flag or variable) must exist: it is never silently replaced by a
    default. When nothing is found, the error lists every place tried.
    """
    if given is not None:
        if not Path(given).is_file():
            raise ConfigNotFound(f"{given_as} {given}: no such file".lstrip())
        return Path(given)
    if environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
        if not path.is_file():
            raise ConfigNotFound(f"${CONFIG_ENV}={path}: no such file")
        return path
    local = (cwd or Path.cwd()) / "config" / default
    if local.is_file():
        return local
    packaged = PACKAGED_SPECS / default
    if packaged.is_file():
        return packaged
    raise ConfigNotFound(
        f"no platform spec: tried --config (not given), ${CONFIG_ENV} (not set), {local} "
        f"(missing), the packaged {default} (missing); pass --config FILE or set {CONFIG_ENV}"
    )


def load_config(path: str | os.PathLike[str]) -> PlatformConfig:
    """Read and validate a spec file; every failure is a `ConfigError` naming file and field."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{p}: cannot read config ({err.strerror or err})") from None
    return parse_config_text(text, str(p))


def parse_config_text(text: str, source: str = "<config>") -> PlatformConfig:
    """A spec from YAML text (pipeline parameters carry the spec itself, not a path)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    return parse_config(data, source)


def resolve_blocks(selection: BlockSelection, depth: int) -> list[int]:
    """Turn a block selection into sorted indices for a backbone with `depth` blocks.

    The CONEC split scales with depth: ``first_half`` of 24 blocks is 0-11 (DESIGN.md s3).
    """
    half = depth // 2
    if selection == "all":
        return list(range(depth))
    if selection == "first_half":
        return list(range(half))
    if selection == "second_half":
        return list(range(half, depth))
    bad = [b for b in selection if b >= depth]
    if bad:
        raise ConfigError(f"blocks {bad} out of range for a backbone with {depth} blocks")
    if not selection:
        raise ConfigError("block list is empty")
    return sorted(set(selection))


def complement_blocks(selection: Sequence[int], depth: int) -> list[int]:
    chosen = set(selection)
    return [b for b in range(depth) if b not in chosen]
