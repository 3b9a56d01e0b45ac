"""The AADS continuation pipeline: one task on top of a registered version, gated against it.

Control flow at a glance::

    resolve_config ──> continue_adapter (fetch and verify the base, refuse bad input before
                       training, train exactly the task: classes -> SD-LoRA, domain ->
                       CONEC-LoRA; OOD carried or re-estimated; parent and child measured on
                       the same images)
                   ──> If(passed): register_continuation (alias candidate, lineage tags)
                       Else: gate_failure_report

Where steps run comes from ``config/cluster.yaml`` as for the training pipeline (the same
placement, `pipelines.training._Placement`); the continuation step is a GPU step.
"""

from collections.abc import Callable
from pathlib import Path

from kfp import compiler, dsl

from aads.atomic import atomic_write_text
from aads.cluster import ClusterSettings, load_cluster
from components import continue_adapter, register_continuation, resolve_config
from pipelines.training import DEFAULT_CONFIG_URI, _Placement

PIPELINE_NAME = "aads-continuation"
PIPELINE_YAML = Path(__file__).resolve().with_name("continuation.yaml")


def build_pipeline(cluster: ClusterSettings) -> Callable:
    """The continuation pipeline with `cluster`'s placement compiled in."""
    place = _Placement(cluster)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Continue a registered AADS crop adapter by one task (new disease classes "
        "or a new domain) from the task's images only; gated against its parent, registered "
        "as its child.",
    )
    def continuation_pipeline(
        data_uri: str,
        base: str = "champion",
        crop: str = "",
        classes: str = "",
        domain: str = "",
        eval_uri: str = "",
        config_uri: str = DEFAULT_CONFIG_URI,
        config_yaml: str = "",
        tracking_uri: str = "",
        git_sha: str = "",
    ):
        """Learn one task on top of `base` and register the child when the gate passes.

        Args:
            data_uri: The task's images only (s3://bucket/prefix or a folder):
                <crop>/<class>/<image>, with the task.json `aads feedback import` writes.
            base: The version to continue: an alias of the crop's model (champion,
                candidate), a version number, models:/NAME@ALIAS, or an s3:// package.
            crop: The crop; empty: task.json's, or the data's only crop folder.
            classes: New disease classes, comma-separated (a classes task); with domain: the
                known classes the images show. Empty: task.json's.
            domain: A new condition (farm, camera, season) of known classes (a domain task).
            eval_uri: Optional evaluation ("golden") set of earlier classes and domains: it
                measures retention and recalibrates the OOD check, never trains. Without it
                the gate's old-class and OOD checks are not measured (gate.not_measured).
            config_uri: Where the platform spec is (the chart's ConfigMap by default).
            config_yaml: Optional: a whole platform spec as YAML text, used instead.
            tracking_uri: MLflow tracking URI; empty: the aads-mlflow Secret's.
            git_sha: The commit of the code, recorded on the registered version.
        """
        spec = place.cpu(
            resolve_config(config_uri=config_uri, config_yaml=config_yaml, crops=[])
        ).set_caching_options(False)
        spec.set_display_name("platform spec")
        step = place.tracked(
            place.gpu(
                continue_adapter(
                    config=spec.output,
                    data_uri=data_uri,
                    base=base,
                    crop=crop,
                    classes=classes,
                    domain=domain,
                    eval_uri=eval_uri,
                    tracking_uri=tracking_uri,
                )
            )
        ).set_display_name("continue from the base")
        place.register_if_passed(
            step,
            crop or "the crop",
            lambda: register_continuation(
                config=spec.output,
                continuation=step.outputs["continuation"],
                tracking_uri=tracking_uri,
                kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                git_sha=git_sha,
            ),
        ).set_display_name("register the child")

    return continuation_pipeline


def default_pipeline(cluster_file: str | None = None, *, local: bool = False) -> Callable:
    """Placed by `cluster_file` (default: config/cluster.yaml); `local`: no GPU retries."""
    cluster = load_cluster(cluster_file)
    if local:
        retries = cluster.retries.model_copy(update={"gpu_steps": 0})
        cluster = cluster.model_copy(update={"retries": retries})
    return build_pipeline(cluster)


def compile_continuation(path: Path = PIPELINE_YAML) -> Path:
    """Write the KFP IR YAML (what the KFP UI uploads) to `path`."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "continuation.yaml"
        compiler.Compiler().compile(default_pipeline(), str(out))
        atomic_write_text(path, out.read_text())
    return path


if __name__ == "__main__":
    print(compile_continuation())
