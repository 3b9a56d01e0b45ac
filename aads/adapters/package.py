"""The adapter package: one directory that is a crop adapter, from training to serving.

Layout (every tensor file is safetensors; nothing is pickled)::

    adapter.json          what it is: crop, classes (head order), domains, backbone settings
                          and signature, phase history, settings, metrics, data manifest hash
    dora/                 phase 1 DoRA adapter in PEFT's own format
    sd_lora.safetensors   phase 2 SD-LoRA pairs and magnitudes (absent before phase 2)
    conec.safetensors     phase 3 shared + per-domain LoRAs and the domain selector
    class_stats.safetensors  per-class feature statistics (means, shared covariance), no images
    heads.safetensors     the disease head(s): ``head.<domain>.weight/bias``
    ood/                  OOD calibration slot (filled by the OOD calibration step)
    metrics/              confusion matrices (PNG + JSON) per phase
    SHA256SUMS            written last: a package without it is incomplete

Only low-rank factors are stored, never merged backbone weights: the base weights come from
the backbone source, which is why the package records the backbone's signature and refuses a
different one. A package is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from safetensors.torch import load_file, save_file
from torch import nn

from aads.atomic import atomic_dir, atomic_write, atomic_write_text
from aads.backbone import Backbone, load_backbone
from aads.config import BASE_DOMAIN, BackboneSettings, StorageSettings
from aads.errors import BadInput
from aads.features import backbone_signature
from aads.storage import CHECKSUM_FILE, StorageError, verify_checksums, write_checksums
from aads.tasks import TaskSpec
from aads.training.loop import EpochLog

FORMAT = "aads-adapter/1"
META_FILE = "adapter.json"
HEADS_FILE = "heads.safetensors"
SD_LORA_FILE = "sd_lora.safetensors"
CONEC_FILE = "conec.safetensors"
CLASS_STATS_FILE = "class_stats.safetensors"
OOD_DIR = "ood"
METRICS_DIR = "metrics"


class PackageError(BadInput):
    """A package that is incomplete, corrupt, or does not fit what it is loaded with."""


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    """JSON has no NaN: a metric that could not be computed is left out, not written as null."""
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}


FiniteMetrics = Annotated[dict[str, float], AfterValidator(_finite)]


class PhaseRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phase: Literal["1", "2", "3"]
    task: str = Field("", description="phase-2 batch index or phase-3 domain")
    added: list[str] = Field(default_factory=list, description="classes or domain added")
    epochs: int = 0
    seconds: float = 0.0
    metrics: FiniteMetrics = Field(default_factory=dict)
    finished: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    history: list[EpochLog] = Field(
        default_factory=list, description="the training loop's epochs (loss, validation, lr)"
    )

    @field_validator("history")
    @classmethod
    def _finite_history(cls, history: list[EpochLog]) -> list[EpochLog]:
        """JSON has no NaN: an epoch metric that could not be computed is left out."""
        return [replace(log, metrics=_finite(log.metrics)) for log in history]


class ContinuationRecord(BaseModel):
    """One continuation (`aads train continue`): which version it started from and the task it
    learned. A package's ``lineage`` lists them oldest first; a package trained by the full
    pipeline has none."""

    model_config = ConfigDict(extra="forbid")

    parent_model: str = Field("", description="registered model name ('' for a folder)")
    parent_version: str = Field("", description="registry version number ('' for a folder)")
    parent_source: str = Field("", description="what --from named: alias, version, URI, path")
    parent_sha256: str = Field("", description="sha256 of the parent's SHA256SUMS: its digest")
    task: TaskSpec
    finished: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class AdapterMeta(BaseModel):
    """``adapter.json``; validated on load so a hand-edited file fails naming the field."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    format: Literal["aads-adapter/1"] = FORMAT
    crop: str
    classes: list[str] = Field(min_length=2)
    domains: list[str] = Field(default_factory=lambda: ["base"], min_length=1)
    backbone_settings: dict
    backbone_signature: dict[str, str]
    adapter_settings: dict
    phases: list[PhaseRecord] = Field(default_factory=list)
    metrics: FiniteMetrics = Field(default_factory=dict)
    manifest_sha256: str = ""
    ood: dict | None = None
    lineage: list[ContinuationRecord] = Field(
        default_factory=list, description="continuations this package went through, oldest first"
    )

    @property
    def last_phase(self) -> str:
        return self.phases[-1].phase if self.phases else "0"

    @property
    def has_domains(self) -> bool:
        """Whether the package has learned a domain (CONEC-LoRA), whatever came after: the
        one answer to "is this network CONEC-routed" (a classes task after a domain is a
        phase-2 record on a CONEC package, so the last phase does not say it)."""
        return self.domains != [BASE_DOMAIN]


@dataclass
class PackageContents:
    """What a training phase hands to `write_package`."""

    meta: AdapterMeta
    heads: dict[str, torch.Tensor]
    dora: nn.Module | None = None  # a PeftModel, saved in PEFT's format
    dora_from: Path | None = None  # or: copy the dora/ folder of an earlier package
    sd_lora: dict[str, torch.Tensor] | None = None
    conec: dict[str, torch.Tensor] | None = None
    class_stats: dict[str, torch.Tensor] | None = None
    extra: Callable[[Path], None] | None = None  # writes metrics/ etc. into the staging dir


def write_package(contents: PackageContents, out_dir: Path) -> Path:
    """Write the package to a temporary sibling, checksum it, then rename it into `out_dir`."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as staging:
        _write_contents(contents, staging)
        write_checksums(staging)  # last: its presence marks a complete package
    return out_dir


def update_package(pkg_dir: Path, change: Callable[[Path, AdapterMeta], AdapterMeta]) -> Path:
    """Apply `change(staging_dir, meta) -> new meta` to a verified copy, re-checksum, swap in.

    Used by steps that add to a finished package (OOD calibration): readers see the old
    package or the new one, never a mix, and a failed change leaves the old one untouched.
    """
    pkg_dir = Path(pkg_dir)
    verify_package(pkg_dir)
    with atomic_dir(pkg_dir) as staging:
        shutil.copytree(pkg_dir, staging, dirs_exist_ok=True)
        (staging / CHECKSUM_FILE).unlink()
        meta = change(staging, read_meta(staging))
        atomic_write_text(staging / META_FILE, meta.model_dump_json(indent=2) + "\n")
        write_checksums(staging)
    return pkg_dir


def _write_contents(c: PackageContents, d: Path) -> None:
    from aads.adapters.dora.model import ADAPTER_DIR, save_dora

    atomic_write_text(d / META_FILE, c.meta.model_dump_json(indent=2) + "\n")
    _save_tensors(c.heads, d / HEADS_FILE)
    if c.dora is not None:
        save_dora(c.dora, d)  # type: ignore[arg-type]
        (d / ADAPTER_DIR / "README.md").unlink(missing_ok=True)  # PEFT's empty model card
    elif c.dora_from is not None:
        shutil.copytree(Path(c.dora_from) / ADAPTER_DIR, d / ADAPTER_DIR)
    if c.sd_lora is not None:
        _save_tensors(c.sd_lora, d / SD_LORA_FILE)
    if c.conec is not None:
        _save_tensors(c.conec, d / CONEC_FILE)
    if c.class_stats is not None:
        _save_tensors(c.class_stats, d / CLASS_STATS_FILE)
    (d / OOD_DIR).mkdir(exist_ok=True)
    if c.extra is not None:
        c.extra(d)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(clean, tmp))


def verify_package(pkg_dir: Path) -> dict[str, str]:
    """Check every file against ``SHA256SUMS``; return the checksums (the package digest)."""
    try:
        return verify_checksums(pkg_dir)
    except StorageError as err:
        raise PackageError(str(err)) from None


def read_meta(pkg_dir: Path) -> AdapterMeta:
    path = Path(pkg_dir) / META_FILE
    try:
        return AdapterMeta.model_validate_json(path.read_text())
    except OSError as err:
        raise PackageError(f"{pkg_dir}: not an adapter package ({err.strerror or err})") from None
    except ValidationError as err:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise PackageError(f"{path}: invalid ({fields})") from None


def read_tensors(pkg_dir: Path, name: str) -> dict[str, torch.Tensor] | None:
    path = Path(pkg_dir) / name
    return load_file(str(path)) if path.is_file() else None


def package_backbone(
    meta: AdapterMeta,
    storage: StorageSettings | None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    gradient_checkpointing: bool = False,
) -> Backbone:
    """Load the backbone the package was trained on and check it is the same one."""
    settings = BackboneSettings(
        **{**meta.backbone_settings, "gradient_checkpointing": gradient_checkpointing},
        device=device,
        dtype=dtype,
    )
    backbone = load_backbone(settings, storage)
    found = backbone_signature(backbone)
    if found != meta.backbone_signature:
        diff = {
            k: (meta.backbone_signature.get(k), v)
            for k, v in found.items()
            if meta.backbone_signature.get(k) != v
        }
        raise PackageError(
            f"adapter for '{meta.crop}' was trained on another backbone setup: "
            + "; ".join(f"{k}: package {a!r}, loaded {b!r}" for k, (a, b) in diff.items())
        )
    return backbone


def backbone_settings_record(settings: BackboneSettings) -> dict:
    """What a package stores to rebuild its backbone; device and dtype belong to the host."""
    return settings.model_dump(mode="json", exclude={"device", "dtype", "gradient_checkpointing"})
