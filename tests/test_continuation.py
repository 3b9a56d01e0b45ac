"""Continue from the champion (issue 17): one task on top of a registered version, from the
task's images only, gated against that version, registered as its child with its lineage.

Real parts throughout: the phase code the full pipeline runs, a real `mlflow server`, the
`aads` CLI, a GitOps repository and git. The `random:tiny` backbone makes the numbers
meaningless, so the gate's levels are loose (`tests.continual_world`); what is checked is
which version learns what, what is recorded where, and what is refused before training.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from aads.adapters import loading
from aads.adapters.package import HEADS_FILE, read_meta, update_package
from aads.cli import app
from aads.config import PlatformConfig, SynthSettings, parse_config
from aads.continual import BaseNotFound, ContinuationError, continue_from
from aads.continual.data import EVAL_PREFIX, eval_data
from aads.continual.lineage import chain, chain_text, links
from aads.data.synth import synthesize
from aads.registry import Registry
from aads.tasks import TaskSpec, write_task
from tests.continual_world import DRAW, NEW, OLD, SPEC, ContinualWorld, build

PREFIX = "continuation-adapter-"
NAME = f"{PREFIX}tomato"  # own names: the session's MLflow server is shared by modules
runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ContinualWorld:
    return build(tmp_path_factory)


def spec_with(edit) -> PlatformConfig:
    """`SPEC` with `edit(spec)` applied (settings are frozen: a new spec is parsed)."""
    spec = copy.deepcopy(SPEC)
    edit(spec)
    return parse_config(spec)


def new_class_task() -> TaskSpec:
    return TaskSpec(kind="classes", crop="tomato", classes=[NEW])


def continued(world, tmp_path: Path, *, config: PlatformConfig | None = None, eval_dir=None):
    """The new-class task continued from the world's parent into ``tmp_path/out``."""
    return continue_from(
        config or world.config,
        str(world.parent),
        new_class_task(),
        world.new_class,
        tmp_path / "out",
        eval_dir=eval_dir,
    )


def field_task() -> TaskSpec:
    return TaskSpec(kind="domain", crop="tomato", domain="field", classes=OLD)


# --------------------------------------------------------------------------- evaluation sets


@pytest.fixture(scope="module")
def drawn_golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthesised set as `aads data synth` writes it: the layout marker and
    ``<domain>/<crop>/<part>/<class>/<image>``."""
    out = tmp_path_factory.mktemp("drawn-golden")
    synthesize(
        parse_config(DRAW),
        out,
        settings=SynthSettings(images_per_class=3, images_per_domain_class=2, image_size=32),
    )
    return out


def test_a_synthesised_evaluation_set_is_read_in_its_own_layout(drawn_golden):
    rows = eval_data(parse_config(DRAW), drawn_golden, "tomato")
    tomato = {(r.domain, r.label) for r in rows if r.crop == "tomato"}
    assert {("base", c) for c in [*OLD, NEW]} <= tomato and ("field", OLD[0]) in tomato
    assert all(r.path.startswith(f"{EVAL_PREFIX}/") and r.path.count("/") == 5 for r in rows)


def test_an_evaluation_set_of_crop_part_class_folders_without_the_marker_is_read(
    drawn_golden, tmp_path
):
    """What a team keeps by hand: the synthesised tree without its marker, as links."""
    for image in (drawn_golden / "field").rglob("*.jpg"):
        link = tmp_path / image.relative_to(drawn_golden)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(image)
    rows = eval_data(parse_config(DRAW), tmp_path, "tomato")
    assert {r.domain for r in rows} == {"field"} and {r.part for r in rows} >= {"leaf"}


def test_an_evaluation_set_of_domain_crop_class_folders_is_read(world):
    rows = eval_data(world.config, world.evaluation, "tomato")
    assert {(r.domain, r.crop) for r in rows} == {("base", "tomato"), ("base", "corn")}
    assert {r.label for r in rows if r.crop == "tomato"} == {*OLD, "mosaic_virus"}


# --------------------------------------------------------------------------- refused first


@pytest.fixture
def no_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the continuation gets as far as loading a backbone."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a backbone was loaded before the input was refused")

    monkeypatch.setattr(loading, "package_backbone", refuse)
    monkeypatch.setattr("aads.adapters.phases.phase1.load_backbone", refuse)


def refused(
    world: ContinualWorld,
    tmp_path: Path,
    match: str,
    *,
    base: object = None,
    task: TaskSpec | None = None,
    data: Path | None = None,
    config: PlatformConfig | None = None,
    eval_dir: Path | None = None,
    error: type[Exception] = ContinuationError,
) -> None:
    """The continuation raises `error` naming `match`, and leaves no output behind."""
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        continue_from(
            config or world.config,
            str(world.parent) if base is None else base,
            task or new_class_task(),
            data or world.new_class,
            out,
            eval_dir=eval_dir,
        )
    assert not out.exists()


@pytest.mark.usefixtures("no_backbone")
def test_a_task_repeating_a_known_class_is_refused_naming_it(world, tmp_path):
    task = TaskSpec(kind="classes", crop="tomato", classes=["early_blight"])
    refused(world, tmp_path, r"task.classes: \['early_blight'\] already known", task=task)


@pytest.mark.usefixtures("no_backbone")
def test_a_task_repeating_a_learned_domain_is_refused(world, tmp_path):
    base = shutil.copytree(world.parent, tmp_path / "with-field")
    update_package(base, lambda _d, meta: meta.model_copy(update={"domains": ["base", "field"]}))
    refused(world, tmp_path, "task.domain 'field' is already learned", base=base, task=field_task())


@pytest.mark.usefixtures("no_backbone")
def test_a_base_failing_its_checksums_is_refused(world, tmp_path):
    base = shutil.copytree(world.parent, tmp_path / "corrupt")
    heads = base / HEADS_FILE
    heads.write_bytes(heads.read_bytes()[:-1] + b"\0")
    refused(world, tmp_path, "heads.safetensors does not match its checksum", base=base)


@pytest.mark.usefixtures("no_backbone")
def test_a_base_made_for_another_backbone_is_refused(world, tmp_path):
    other = spec_with(lambda s: s["adapter"]["backbone"].update(image_size=64))
    refused(world, tmp_path, "another backbone .*image_size: parent 32, config 64", config=other)


@pytest.mark.usefixtures("no_backbone")
def test_a_task_without_usable_images_is_refused(world, tmp_path):
    data = tmp_path / "empty" / "tomato" / NEW
    data.mkdir(parents=True)
    (data / "notes.jpg").write_text("not an image")
    refused(world, tmp_path, "no usable images", data=tmp_path / "empty")


@pytest.mark.usefixtures("no_backbone")
def test_images_of_a_class_the_task_does_not_name_are_refused(world, tmp_path):
    data = shutil.copytree(world.new_class, tmp_path / "mixed")
    shutil.copytree(world.field / "tomato" / "healthy", data / "tomato" / "healthy")
    refused(world, tmp_path, r"class\(es\) \['healthy'\] that the task does not name", data=data)


@pytest.mark.usefixtures("no_backbone")
def test_a_first_domain_without_an_evaluation_set_is_refused(world, tmp_path):
    refused(
        world,
        tmp_path,
        "selector needs base-domain statistics",
        task=field_task(),
        data=world.field,
    )


@pytest.mark.usefixtures("no_backbone")
def test_a_base_that_does_not_exist_is_not_found(world, tmp_path):
    refused(world, tmp_path, "no such folder", base=str(tmp_path / "nowhere"), error=BaseNotFound)


def test_a_base_in_the_object_store_is_fetched_and_verified_before_training(
    world, fresh_bucket, tmp_path
):
    from aads.continual import plan_continuation
    from aads.storage import open_store, put_dir

    config = world.config.model_copy(update={"storage": fresh_bucket})
    uri = f"s3://{fresh_bucket.bucket}/adapters/tomato/v1"
    store, prefix = open_store(uri, fresh_bucket)
    put_dir(store, world.parent, prefix)
    plan = plan_continuation(config, uri, new_class_task(), world.new_class)
    assert plan.parent is not None and plan.parent.path != world.parent
    assert plan.parent.meta.classes == OLD and plan.parent.source == uri
    assert [r.label for r in plan.rows] == [NEW] * 16  # the task's images, nothing else


@pytest.mark.usefixtures("no_backbone")
def test_a_base_tampered_with_in_the_object_store_is_refused(world, fresh_bucket, tmp_path):
    from aads.storage import open_store, put_dir

    config = world.config.model_copy(update={"storage": fresh_bucket})
    uri = f"s3://{fresh_bucket.bucket}/adapters/tomato/v1"
    store, prefix = open_store(uri, fresh_bucket)
    put_dir(store, world.parent, prefix)
    tampered = tmp_path / "heads.safetensors"
    tampered.write_bytes((world.parent / HEADS_FILE).read_bytes()[:-1] + b"\0")
    store.put_file(tampered, f"{prefix}/{HEADS_FILE}")
    refused(world, tmp_path, "heads.safetensors", base=uri, config=config, error=Exception)


# --------------------------------------------------------------------------- what it learns


def test_a_classes_task_learns_only_the_new_class_and_records_its_parent(world, tmp_path):
    result = continued(world, tmp_path, eval_dir=world.evaluation)
    meta = read_meta(result.package)
    assert meta.classes == [*OLD, NEW]
    assert [p.phase for p in meta.phases] == ["1", "2"]
    assert meta.phases[-1].added == [NEW]
    step = meta.lineage[-1]
    assert step.parent_source == str(world.parent) and step.task.classes == [NEW]
    assert step.task.images == {NEW: 16}
    assert result.gate.passed, result.gate.summary()
    report = json.loads((result.report / "comparison.json").read_text())
    assert set(report["measures"]) >= {"old_accuracy", "near_ood_auroc", "far_ood_auroc"}
    assert "## Against its parent" in result.card and "## Lineage" in result.card


def test_without_an_evaluation_set_the_ood_check_is_carried_and_its_drift_measured(world, tmp_path):
    config = spec_with(lambda s: s["gate"].update(not_measured="pass"))
    result = continued(world, tmp_path, config=config)
    meta = read_meta(result.package)
    assert meta.ood is not None and meta.ood["carried_from_parent"] == 1.0
    assert meta.metrics["ood_task_feature_shift"] > 0
    record = json.loads((result.package / "ood" / "calibration.json").read_text())
    parent = json.loads((world.parent / "ood" / "calibration.json").read_text())
    assert record["classes"] == [*OLD, NEW]
    for name in OLD:  # the old classes' thresholds are the parent's, unchanged
        assert record["per_class"][name]["threshold"] == parent["per_class"][name]["threshold"]
    old_checks = [c for c in result.gate.checks if c.metric == "old_accuracy_change"]
    assert old_checks[0].outcome == "not measured"


def test_an_evaluation_set_thinner_than_the_parents_check_carries_it(world, tmp_path):
    """8 evaluation images a class (about 5 to fit on) against the parent's 11: re-estimating
    on them would trade the parent's statistics for noisier ones, so they only measure."""
    result = continued(world, tmp_path, eval_dir=world.evaluation)
    meta = read_meta(result.package)
    assert meta.ood is not None and meta.ood["carried_from_parent"] == 1.0
    assert "ood_old_score_ratio" in meta.ood  # measured on the evaluation set


@pytest.fixture(scope="module")
def thick_golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An evaluation set of 24 images a class: more to fit on than the parent's check had."""
    from tests.continual_world import _copy

    tmp = tmp_path_factory.mktemp("thick-golden")
    drawn, golden = tmp / "drawn", tmp / "golden"
    synthesize(
        parse_config(DRAW), drawn, settings=SynthSettings(images_per_class=24, image_size=32)
    )
    _copy(drawn, golden / "base", "base", "tomato", OLD)
    _copy(drawn, golden / "base", "base", "corn", ["healthy", "common_rust"])
    return golden


def test_an_evaluation_set_as_large_as_the_parents_check_re_estimates_it(
    world, thick_golden, tmp_path
):
    result = continued(world, tmp_path, eval_dir=thick_golden)
    meta = read_meta(result.package)
    parent = json.loads((world.parent / "ood" / "calibration.json").read_text())
    record = json.loads((result.package / "ood" / "calibration.json").read_text())
    assert meta.ood is not None and "carried_from_parent" not in meta.ood
    for name in OLD:
        fitted = record["per_class"][name]["fit_samples"]
        assert fitted >= parent["per_class"][name]["fit_samples"]


def test_a_config_that_says_carry_carries_the_check_past_any_evaluation_set(
    world, thick_golden, tmp_path
):
    config = spec_with(lambda s: s.update(continuation={"ood": "carry"}))
    result = continued(world, tmp_path, config=config, eval_dir=thick_golden)
    meta = read_meta(result.package)
    assert meta.ood is not None and meta.ood["carried_from_parent"] == 1.0


def test_a_continuation_that_forgets_is_refused_by_the_gate(world, tmp_path):
    # A learning rate that wrecks what the old classes relied on.
    config = spec_with(lambda s: s["training"]["phase2"].update(lr=9.0))
    result = continued(world, tmp_path, config=config, eval_dir=world.evaluation)
    assert not result.gate.passed
    failed = [c.metric for c in result.gate.checks if c.outcome == "failed"]
    assert "old_accuracy_change" in failed
    gate = json.loads((result.report / "gate.json").read_text())
    assert gate["passed"] is False


# --------------------------------------------------------------------------- the registry


@pytest.fixture(scope="module")
def registered(world, mlflow_server, tmp_path_factory):
    """The parent registered as v1 and made champion; a spec file pointing at the server."""
    tmp = tmp_path_factory.mktemp("continuation-registry")
    spec = {
        **SPEC,
        "registry": {
            "tracking_uri": mlflow_server,
            "experiment": "continuation-test",
            "artifact_store": "s3://aads/mlflow",
            "adapter_model_prefix": PREFIX,
        },
        "storage": {"cache_dir": str(tmp / "cache")},
    }
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    config = PlatformConfig.model_validate(spec)
    registry = Registry(config.registry, tracking_uri=mlflow_server)
    v1 = registry.register_package(
        world.parent,
        name=NAME,
        tags={"gate": "passed", "gate_detail": "passed: accuracy"},
        description="# v1",
        metrics={},
        kfp_run_id="continuation-test-v1",
    )
    registry.promote(NAME, v1.version)
    return {"spec": path, "config": config, "registry": registry, "v1": v1.version, "tmp": tmp}


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_continuing_the_champion_registers_its_child_with_lineage(world, registered):
    batch = shutil.copytree(world.new_class, registered["tmp"] / "batch")
    write_task(batch, new_class_task())  # as `aads feedback import` writes it
    result = invoke(
        "train",
        "continue",
        "--data",
        batch,
        "--eval",
        world.evaluation,
        "--out",
        registered["tmp"] / "v2",
        "--register",
        "--config",
        registered["spec"],
        "-o",
        "json",
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    registry: Registry = registered["registry"]
    child = registry.resolve(NAME, answer["registered"]["version"])
    assert child.aliases == ["candidate"]
    assert child.tags["parent_version"] == registered["v1"]
    assert child.tags["task_kind"] == "classes" and child.tags["task"] == NEW
    meta = read_meta(registry.download(NAME, child.version, registered["tmp"] / "v2-fetched"))
    assert meta.lineage[-1].parent_version == registered["v1"]
    assert meta.lineage[-1].parent_model == NAME and meta.classes == [*OLD, NEW]
    registered["v2"] = child.version


def test_lineage_prints_the_chain_of_continuations(world, registered):
    if "v2" not in registered:
        pytest.skip("needs the registered child of the previous test")
    result = invoke(
        "train",
        "continue",
        "--from",
        registered["v2"],
        "--domain",
        "field",
        "--data",
        world.field,
        "--eval",
        world.evaluation,
        "--out",
        registered["tmp"] / "v3",
        "--register",
        "--config",
        registered["spec"],
        "-o",
        "json",
    )
    assert result.exit_code == 0, result.output
    v3 = json.loads(result.stdout)["registered"]["version"]
    found = links(registered["registry"], NAME)
    assert chain_text(chain(found, v3)) == (
        f"v{registered['v1']} base -> v{registered['v2']} + {NEW} -> v{v3} + field"
    )
    shown = invoke("lineage", "--crop", "tomato", "--config", registered["spec"])
    assert shown.exit_code == 0, shown.output
    assert f"v{registered['v2']} + {NEW} -> v{v3} + field" in shown.output


def test_promoting_a_continued_version_commits_its_parent_version(registered, tmp_path):
    from aads.promotion import promote
    from tests.conftest import ROOT
    from tests.test_promotion import CRDS, git

    if "v2" not in registered:
        pytest.skip("needs the registered child of the lineage test")
    repo = tmp_path / "gitops"
    repo.mkdir()
    shutil.copytree(ROOT / "charts", repo / "charts")
    shutil.copytree(ROOT / "manifests", repo / "manifests")
    for args in (
        ("init", "-q"),
        ("config", "user.email", "ci@aads.test"),
        ("config", "user.name", "AADS CI"),
        ("add", "."),
        ("commit", "-q", "-m", "layout"),
    ):
        git(repo, *args)
    config = registered["config"]
    promote(
        config,
        repo,
        "tomato",
        registered["v2"],
        "staging",
        tracking_uri=config.registry.tracking_uri,
        crds=CRDS,
    )
    message = git(repo, "log", "-1", "--format=%B")
    assert f"Parent-Version: {registered['v1']}" in message
    assert f"Model-Version: {registered['v2']}" in message


def test_an_unknown_alias_is_not_found_naming_the_aliases(world, registered, tmp_path):
    result = invoke(
        "train",
        "continue",
        "--from",
        "championn",
        "--classes",
        NEW,
        "--data",
        world.new_class,
        "--out",
        tmp_path / "out",
        "--config",
        registered["spec"],
    )
    assert result.exit_code == 2
    assert "no alias 'championn'" in result.output and "champion -> v" in result.output
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the pipeline


def test_the_compiled_continuation_pipeline_matches_the_code(tmp_path):
    from pipelines.continuation import PIPELINE_YAML, compile_continuation

    fresh = compile_continuation(tmp_path / "continuation.yaml").read_text()
    assert fresh == PIPELINE_YAML.read_text(), "recompile: python -m pipelines.continuation"


@pytest.mark.timeout(1500)
@pytest.mark.slow
def test_the_continuation_pipeline_runs_locally_and_registers_the_child(
    world, registered, mlflow_server
):
    from kfp import local

    from pipelines.continuation import default_pipeline

    root = registered["tmp"] / "kfp"
    root.mkdir()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    before = set(registered["registry"].versions(NAME))
    default_pipeline(local=True)(
        data_uri=str(world.new_class),
        base="champion",
        crop="tomato",
        classes=NEW,
        eval_uri=str(world.evaluation),
        config_yaml=registered["spec"].read_text(),
        tracking_uri=mlflow_server,
    )
    added = sorted(set(registered["registry"].versions(NAME)) - before, key=int)
    assert len(added) == 1
    child = registered["registry"].resolve(NAME, added[0])
    assert child.tags["parent_version"] == registered["v1"]  # the champion it continued
    assert child.tags["task"] == NEW and child.tags["gate"] == "passed"


# --------------------------------------------------------------------------- OOD drift maths


@pytest.mark.parametrize("covariance", ["shared_empirical", "diagonal", "per_class"])
def test_the_task_feature_shift_is_measured_under_every_covariance(covariance, monkeypatch):
    """Each image's shift, parent to child features, in the parent's Mahalanobis metric (with
    per-class covariances, its nearest class's): a shift of the pooled threshold's square root
    along a whitened axis reads 1.0."""
    from types import SimpleNamespace

    import numpy as np

    from aads.continual import ood
    from aads.ood.mahalanobis import MahalanobisEstimator

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (60, 4)), rng.normal(6, 1, (60, 4))])
    est = MahalanobisEstimator(covariance, "raw").fit(x, np.repeat([0, 1], 60))
    features = {"parent": x[:10], "child": x[:10] + 0.5}
    monkeypatch.setattr(
        ood, "adapter_features", lambda a, rows, root: SimpleNamespace(features=features[a.name])
    )
    pooled = 2.0
    detector = SimpleNamespace(estimator=est, thresholds=SimpleNamespace(pooled=pooled))
    parent = SimpleNamespace(name="parent", ood=detector)
    shift = ood.task_feature_shift(parent, SimpleNamespace(name="child"), [None] * 10, Path())
    precision = est.precision_ if est.precision_.ndim < 3 else est.precision_[0]
    step = np.full(4, 0.5)
    expected = (step**2 * precision).sum() if precision.ndim == 1 else step @ precision @ step
    assert shift == pytest.approx(expected / pooled)


def test_carried_per_class_covariances_fit_a_new_class_its_own_or_the_old_classes_pooled_one():
    """A class added with enough images gets its own Ledoit-Wolf covariance, as the estimator
    fits one; a thinner one the count-weighted mean of the old classes' covariances."""
    import numpy as np

    from aads.continual.ood import _new_class_precisions, _pooled_precision
    from aads.ood.mahalanobis import MahalanobisEstimator, own_class_precision

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (30, 4)), rng.normal(5, 2, (10, 4))])
    est = MahalanobisEstimator("per_class", "raw").fit(x, np.repeat([0, 1], [30, 10]))
    new = np.concatenate([rng.normal(-5, 1, (6, 4)), rng.normal(9, 1, (1, 4))])
    state = est.state_dict()
    old_pooled = _pooled_precision(state, 2)
    grown = _new_class_precisions(state, new, np.repeat([0, 1], [6, 1]), old_pooled, 2, 2, 2)
    precision = grown["precision"]
    assert precision.shape == (4, 4, 4)
    np.testing.assert_allclose(precision[:2], est.precision_)
    np.testing.assert_allclose(precision[2], own_class_precision(new[:6]))
    pooled = (30 * np.linalg.inv(est.precision_[0]) + 10 * np.linalg.inv(est.precision_[1])) / 40
    np.testing.assert_allclose(precision[3], np.linalg.inv(pooled), rtol=1e-6)
    assert grown["fallback_classes"].tolist() == [3]


def test_a_new_class_of_fewer_photos_than_a_threshold_needs_takes_the_pooled_covariance():
    """A covariance from a few captured photos is not trusted where a threshold from as many
    would not be (measured: far-OOD AUROC -0.272 against the parent with its own from 2
    photos, -0.003 with the pooled one)."""
    from aads.config import OODSettings
    from aads.continual.ood import own_covariance_minimum

    settings = OODSettings.model_validate({"threshold": {"min_samples": 5}})
    assert own_covariance_minimum(settings) == 5
    detector, _ = _carried_thin_new_class("per_class", val_images=1, train_images=4)
    assert detector.record.covariance_fallback_classes == ["c"]
    detector, _ = _carried_thin_new_class("per_class", val_images=1, train_images=5)
    assert detector.record.covariance_fallback_classes == []


def test_near_ood_does_not_apply_once_the_task_learned_the_last_held_out_disease():
    """As the whole-pipeline gate: a check that cannot apply never fails, even where anything
    not measured fails."""
    from aads.continual.data import task_config
    from aads.continual.gate import Measurement, continuation_gate, ood_applicability

    config = spec_with(lambda s: s["gate"].update(not_measured="fail"))
    parent_meta = phase1_meta(OLD)
    derived = task_config(
        config, TaskSpec(kind="classes", crop="tomato", classes=["mosaic_virus"]), parent_meta
    )
    why = ood_applicability(derived, "tomato")
    assert set(why) == {"near_ood_auroc"}  # corn is still there: far-OOD applies
    measured = {"new_task_accuracy": 1.0, "old_accuracy": 0.9, "far_ood_auroc": 0.95}
    parent = Measurement({**measured, "new_task_accuracy": float("nan")})
    gate = continuation_gate(parent, Measurement(measured), config.gate, why)
    near = next(c for c in gate.checks if c.metric == "near_ood_auroc_change")
    assert near.outcome == "not applicable" and gate.passed
    assert not continuation_gate(parent, Measurement(measured), config.gate).passed


def phase1_meta(classes: list[str]):
    """A phase-1 parent's record of what it learned (no backbone: the metadata only)."""
    from aads.adapters.package import AdapterMeta, PhaseRecord

    return AdapterMeta.model_construct(
        crop="tomato",
        classes=classes,
        phases=[PhaseRecord.model_construct(phase="1", task="", added=classes)],
    )


def _carried_thin_new_class(covariance: str, val_images: int, train_images: int = 12):
    """A parent fitted on two well-sampled classes, carried forward with a third class learned
    from `train_images` training photos and `val_images` validation photos; returns the
    child's detector and fresh photos of the new class."""
    import numpy as np

    from aads.config import OODSettings
    from aads.continual.ood import carried_detector
    from aads.ood.calibrate import FeatureSet
    from aads.ood.detector import fit_detector

    rng = np.random.default_rng(3)
    settings = OODSettings.model_validate(
        {"covariance": covariance, "feature_space": "raw", "threshold": {"min_samples": 5}}
    )
    old = np.concatenate([rng.normal(0, 1, (80, 6)), rng.normal(8, 1, (80, 6))])
    labels = np.repeat([0, 1], 80)
    parent = fit_detector(old[::2], labels[::2], old[1::2], labels[1::2], ["a", "b"], settings)
    draw = lambda n: rng.normal(-8, 2, (n, 6))  # noqa: E731 - the new class, wider than the old
    n = train_images
    fit = FeatureSet(draw(n), np.zeros((n, 3)), np.full(n, 2))
    val = FeatureSet(draw(val_images), np.zeros((val_images, 3)), np.full(val_images, 2))
    return carried_detector(parent, ["a", "b", "c"], fit, val, settings), draw(400)


@pytest.mark.parametrize("covariance", ["shared_ledoit_wolf", "per_class"])
def test_a_new_class_with_one_validation_photo_is_thresholded_on_held_out_training_photos(
    covariance,
):
    """One validation score sets a threshold near the class's median (half its photos would be
    answered unknown); its training photos, each scored against the class fitted without it,
    give the held-out scores a threshold needs."""
    detector, fresh = _carried_thin_new_class(covariance, val_images=1)
    calibration = detector.record.per_class["c"]
    assert calibration.leave_one_out_samples == 12
    assert calibration.calibration_samples == 13 and calibration.source == "class"
    accepted = ~detector.detect(fresh).is_ood
    assert accepted.mean() >= 0.85


def test_a_new_class_with_enough_validation_photos_is_thresholded_on_them_alone():
    detector, _ = _carried_thin_new_class("per_class", val_images=6)
    calibration = detector.record.per_class["c"]
    assert calibration.leave_one_out_samples == 0 and calibration.calibration_samples == 6
