"""`aads promote` / `aads rollback` end to end: a real MLflow server, a temporary git repo with
the chart and the GitOps layout, pins, trailers, aliases, refusals, idempotence."""

from __future__ import annotations

import shutil
import subprocess
from contextlib import contextmanager

import pytest
import yaml
from mlflow import MlflowClient

from aads.adapters.package import update_package
from aads.config import parse_config
from aads.promotion import PromotionError, promote, read_pin, rollback
from aads.registry import Registry
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # a real server or a training run in every test

CROP = "promotest"
NAME = f"aads-adapter-{CROP}"
CRDS = ROOT.parent / "shared" / "crds" / "kserve"


def git(repo, *args) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def world(mlflow_server, trained, tmp_path_factory):
    """Three versions of one adapter (v1, v2 passed the gate, v3 failed) and a GitOps repo.
    The versions are copies of a real trained package (every version is an MLflow model, so
    it must load), each with its own digest."""
    tmp = tmp_path_factory.mktemp("promotion")
    config = parse_config(
        {
            "crops": [{"name": CROP, "phase1_classes": ["healthy", "rust"]}],
            "router": {"source": "random:tiny"},
            "adapter": {"backbone": {"source": "random:tiny"}},
            # The registry's server stores artifacts at artifact_store: proxied sources map there.
            "registry": {
                "experiment": "promotion-test",
                "artifact_store": "s3://aads/mlflow",
                "tracking_uri": mlflow_server,
            },
        }
    )
    registry = Registry(config.registry, tracking_uri=mlflow_server)
    for i, gate in enumerate(("passed", "passed", "failed"), start=1):
        pkg = shutil.copytree(trained.adapter, tmp / f"pkg{i}")
        update_package(
            pkg, lambda _, meta, i=i: meta.model_copy(update={"manifest_sha256": f"{i}"})
        )
        registry.register_package(
            pkg,
            name=NAME,
            tags={
                "gate": gate,
                "gate_detail": f"{gate}: accuracy",
                "metric.phase1_test_accuracy": "0.9",
                "metric.ood_far_auroc": "0.97",
            },
            description="# card",
            metrics={"phase1_test_accuracy": 0.9, "ood_far_auroc": 0.97, "ood_near_auroc": 0.81},
            kfp_run_id=f"run-{i}",
        )
    repo = tmp / "gitops"
    repo.mkdir()
    shutil.copytree(ROOT / "charts", repo / "charts")
    shutil.copytree(ROOT / "manifests", repo / "manifests")
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "ci@aads.test")
    git(repo, "config", "user.name", "AADS CI")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "initial layout")
    return {"config": config, "repo": repo, "uri": mlflow_server}


def run_promote(world, version, env="staging", canary=None):
    return promote(
        world["config"],
        world["repo"],
        CROP,
        version,
        env,
        canary=canary,
        tracking_uri=world["uri"],
        crds=CRDS,
    )


def run_rollback(world, env="staging"):
    return rollback(world["config"], world["repo"], CROP, env, tracking_uri=world["uri"], crds=CRDS)


def aliases(world) -> dict[str, str]:
    return dict(MlflowClient(tracking_uri=world["uri"]).get_registered_model(NAME).aliases)


def test_promotion_writes_the_pin_and_commits_with_trailers(world):
    result = run_promote(world, "1")
    pin = read_pin(world["repo"], "staging", CROP)
    assert pin["version"] == "1" and pin["modelName"] == NAME
    assert pin["storageUri"].startswith("s3://aads/mlflow/") and pin["digest"].startswith("sha256:")
    message = git(world["repo"], "log", "-1", "--format=%B")
    for trailer in (
        "Model-Name: ",
        "Model-Version: 1",
        "Model-URI: s3://",
        "Artifact-Digest: ",
        "MLflow-Run-Id: ",
        "KFP-Run-Id: run-1",
        "Previous-Version: none",
    ):
        assert trailer in message
    assert result.commit == git(world["repo"], "rev-parse", "HEAD").strip()
    app = (world["repo"] / "manifests" / "argocd" / "staging.yaml").read_text()
    assert f"pins/{CROP}.yaml" in app


def test_promotion_records_the_environment_alias_and_the_commit_in_mlflow(world):
    result = run_promote(world, "2")
    client = MlflowClient(tracking_uri=world["uri"])
    version = client.get_model_version_by_alias(NAME, "staging")
    assert version.version == "2"
    assert version.tags["promoted.staging.commit"] == result.commit
    assert result.previous_version == "1"


def test_promoting_what_is_pinned_again_changes_nothing(world):
    head = git(world["repo"], "rev-parse", "HEAD")
    result = run_promote(world, "2")
    assert result.commit == "" and git(world["repo"], "rev-parse", "HEAD") == head


def test_a_version_that_failed_its_gate_is_refused(world):
    with pytest.raises(PromotionError, match="did not pass its gate"):
        run_promote(world, "3")
    assert read_pin(world["repo"], "staging", CROP)["version"] == "2"


def test_a_missing_version_is_refused(world):
    with pytest.raises(PromotionError, match="cannot promote"):
        run_promote(world, "99")


def test_rollback_restores_the_previous_version(world):
    result = rollback(
        world["config"], world["repo"], CROP, "staging", tracking_uri=world["uri"], crds=CRDS
    )
    assert result.version == "1" and read_pin(world["repo"], "staging", CROP)["version"] == "1"
    assert "Rollback" in git(world["repo"], "log", "-1", "--format=%s")


def test_production_promotion_moves_champion_and_keeps_a_rollback(world):
    run_promote(world, "1", env="production")
    run_promote(world, "2", env="production")
    aliases = MlflowClient(tracking_uri=world["uri"]).get_registered_model(NAME).aliases
    assert (
        aliases["production"] == "2" and aliases["champion"] == "2" and aliases["rollback"] == "1"
    )


def test_cli_refuses_a_failed_version_with_one_line_and_exit_2(world, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from aads.cli import app

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(world["config"].model_dump(mode="json")))
    result = CliRunner().invoke(
        app,
        [
            "promote",
            "--crop",
            CROP,
            "--version",
            "3",
            "--env",
            "staging",
            "--repo",
            str(world["repo"]),
            "--config",
            str(spec),
            "--tracking-uri",
            world["uri"],
        ],
    )
    assert result.exit_code == 2 and "did not pass its gate" in result.output


# --------------------------------------------------------------------------- canaries
# (staging holds v1 after the rollback above)


def test_a_canary_keeps_the_pinned_version_and_adds_a_traffic_share(world):
    result = run_promote(world, "2", canary=20)
    pin = read_pin(world["repo"], "staging", CROP)
    assert pin["version"] == "1" and result.previous_version == "1"
    assert pin["canary"]["version"] == "2" and pin["canary"]["trafficPercent"] == 20
    assert pin["canary"]["digest"].startswith("sha256:")
    message = git(world["repo"], "log", "-1", "--format=%B")
    assert message.startswith("Canary promotest") and "Canary-Percent: 20" in message
    assert aliases(world)["staging"] == "1" and aliases(world)["staging-canary"] == "2"


def test_the_canary_pin_renders_a_split_the_router_knows(world):
    from aads.chart import environment_values, render

    repo = world["repo"]
    docs = render(repo / "charts", environment_values(repo, "staging"), namespace="aads-staging")
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "InferenceService"}
    assert f"aads-{CROP}-canary" in names
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    canaries = yaml.safe_load(config_map["data"]["spec.yaml"])["serving"]["canaries"]
    assert canaries[CROP]["percent"] == 20 and canaries[CROP]["version"] == "2"


def test_the_same_canary_again_changes_nothing(world):
    head = git(world["repo"], "rev-parse", "HEAD")
    assert run_promote(world, "2", canary=20).commit == ""
    assert git(world["repo"], "rev-parse", "HEAD") == head


def test_a_canary_of_a_failed_version_is_refused(world):
    with pytest.raises(PromotionError, match="did not pass its gate"):
        run_promote(world, "3", canary=10)
    assert read_pin(world["repo"], "staging", CROP)["canary"]["version"] == "2"


def test_rollback_during_a_canary_ends_the_canary(world):
    result = run_rollback(world)
    pin = read_pin(world["repo"], "staging", CROP)
    assert pin["version"] == "1" and "canary" not in pin and result.version == "1"
    assert "staging-canary" not in aliases(world)
    assert git(world["repo"], "log", "-1", "--format=%s").startswith("Rollback canary")


def test_promoting_the_canary_version_fully_ends_the_canary(world):
    run_promote(world, "2", canary=50)
    run_promote(world, "2")
    pin = read_pin(world["repo"], "staging", CROP)
    assert pin["version"] == "2" and "canary" not in pin
    assert aliases(world)["staging"] == "2" and "staging-canary" not in aliases(world)


def test_rollback_after_an_ended_canary_returns_to_the_version_before_the_pinned_one(world):
    run_promote(world, "1", canary=30)  # staging holds v2, which replaced v1
    run_rollback(world)  # ends the canary; v2 stays
    result = run_rollback(world)
    assert result.version == "1" and read_pin(world["repo"], "staging", CROP)["version"] == "1"


# --------------------------------------------------------------------------- atomic and readable


def snapshot(repo) -> dict:
    """Every byte of the work tree, the HEAD commit and the index: what must not change."""
    files = {
        p.relative_to(repo).as_posix(): p.read_bytes()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(repo).parts
    }
    return {
        "files": files,
        "head": git(repo, "rev-parse", "HEAD"),
        "status": git(repo, "status", "--porcelain"),
    }


@contextmanager
def values_file(world, env: str, append: bytes = b"", replace: bytes | None = None):
    """The environment's values file edited by hand (broken) for one test, then restored."""
    path = world["repo"] / "manifests" / "environments" / env / "values.yaml"
    original = path.read_bytes()
    path.write_bytes(replace if replace is not None else original + append)
    try:
        yield path
    finally:
        path.write_bytes(original)


def test_trailers_carry_the_headline_metrics_and_the_gate(world):
    run_promote(world, "1", env="production")
    message = git(world["repo"], "log", "-1", "--format=%B")
    assert "Metric-accuracy: 0.9000" in message and "Metric-far_ood_auroc: 0.9700" in message
    assert "Metric-near_ood_auroc: 0.8100" in message  # from the registering run's metrics
    assert "Metric-retention" not in message  # not measured: not reported as 0
    assert "Gate: passed (passed: accuracy)" in message


def test_a_malformed_values_file_leaves_the_repository_byte_identical(world):
    with values_file(world, "staging", append=b"adapters: {mode: [unclosed\n"):
        before = snapshot(world["repo"])
        with pytest.raises(PromotionError) as refused:
            run_promote(world, "2", canary=40)
        assert snapshot(world["repo"]) == before
        assert "values.yaml" in str(refused.value) and "\n" not in str(refused.value)


def test_the_cli_reports_a_malformed_values_file_in_one_line_and_exit_2(world, tmp_path):
    from typer.testing import CliRunner

    from aads.cli import app

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(world["config"].model_dump(mode="json")))
    with values_file(world, "staging", replace=b"router: [\n"):
        before = snapshot(world["repo"])
        result = CliRunner().invoke(
            app,
            ["promote", "--crop", CROP, "--version", "2", "--env", "staging"]
            + ["--repo", str(world["repo"]), "--config", str(spec), "--tracking-uri", world["uri"]],
        )
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and "values.yaml" in lines[0]
        assert "Traceback" not in result.output
        assert snapshot(world["repo"]) == before


def test_a_refused_commit_leaves_the_repository_byte_identical(world):
    repo = world["repo"]
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'policy: no commits today' >&2\nexit 1\n")
    hook.chmod(0o755)
    try:
        before = snapshot(repo)
        with pytest.raises(PromotionError, match="nothing was changed: git commit"):
            run_promote(world, "2", env="production", canary=15)
        assert snapshot(repo) == before
    finally:
        hook.unlink()


def test_a_release_that_would_not_deploy_leaves_the_repository_byte_identical(world):
    with values_file(world, "production", append=b"kserve: {deploymentMode: Serverless}\n"):
        before = snapshot(world["repo"])
        with pytest.raises(PromotionError, match="would not deploy"):
            run_promote(world, "2", env="production")
        assert snapshot(world["repo"]) == before


def test_yaml_edits_keep_comments_and_flow_style(world):
    repo = world["repo"]
    pin = repo / "manifests" / "environments" / "production" / "pins" / f"{CROP}.yaml"
    app = repo / "manifests" / "argocd" / "production.yaml"
    text = pin.read_text().replace(
        "      version:", "      # reviewed by the agronomy team\n      version:"
    )
    text += "    other: {storageUri: 's3://aads/x', version: '4'}  # a flow-style neighbour\n"
    pin.write_text(text)
    git(repo, "commit", "-qam", "hand edit")
    app_before = app.read_text()
    run_promote(world, "2", env="production", canary=25)
    after = pin.read_text()
    assert "# reviewed by the agronomy team" in after
    assert "other: {storageUri: 's3://aads/x', version: '4'}  # a flow-style neighbour" in after
    assert after.startswith("# Promoted model for")
    assert app.read_text() == app_before  # already listed: untouched, comments and all
    run_rollback(world, env="production")


def test_a_promotion_changes_the_routers_pod_template_checksum(world):
    from aads.chart import environment_values, render

    repo = world["repo"]

    def router_checksum() -> str:
        docs = render(repo / "charts", environment_values(repo, "staging"), namespace="aads")
        (router,) = [
            d
            for d in docs
            if d["kind"] == "InferenceService" and d["metadata"]["name"] == "aads-router"
        ]
        return router["spec"]["predictor"]["annotations"]["checksum/spec"]

    run_promote(world, "1")  # staging pins v1 (a no-op after the tests above)
    before = router_checksum()
    run_promote(world, "2", canary=35)
    assert router_checksum() != before
    run_rollback(world)
    assert router_checksum() == before


def test_a_model_registered_by_the_demo_is_published_to_the_store_and_pinned(
    world, s3_settings, tmp_path
):
    """`make demo`'s MLflow keeps artifacts on its own disk (no artifact_store): promote
    copies the verified package to the serving store and pins that."""
    from aads.storage import S3Store, verify_checksums

    demo = world["config"].model_copy(
        update={
            "registry": world["config"].registry.model_copy(
                update={"artifact_store": None, "tracking_uri": None}
            ),
            "storage": s3_settings,
        }
    )
    S3Store(s3_settings.bucket, s3_settings).ensure_bucket()
    result = promote(
        demo, world["repo"], CROP, "2", "staging", tracking_uri=world["uri"], crds=CRDS
    )
    expected = f"s3://{s3_settings.bucket}/models/adapters/{CROP}/v2"
    assert result.storage_uri == expected
    assert read_pin(world["repo"], "staging", CROP)["storageUri"] == expected
    from aads.storage import get_dir

    local = tmp_path / "published"
    get_dir(S3Store(s3_settings.bucket, s3_settings), f"models/adapters/{CROP}/v2", local)
    verify_checksums(local)
