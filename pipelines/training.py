"""The AADS training pipeline: data -> router -> per crop (phases 1-3 -> OOD -> gate) -> MLflow.

Control flow at a glance::

    ExitHandler(close_pipeline_run: end the MLflow parent run, finished or failed):
      resolve_config ──> open_pipeline_run (MLflow parent run; its `mlflow_run` artifact
                         goes to every tracked step below)
      preprocess ──> train_router ──> If(passed): register_router   Else: gate_failure_report
                └──> ParallelFor(crops, parallelism=max_parallel_crops):
                       phase 1 (DoRA) -> phase 2 (SD-LoRA) -> phase 3 (CONEC-LoRA)
                       -> calibrate_ood -> evaluate_adapter
                       -> If(passed): register_adapter (alias candidate)
                          Else: gate_failure_report

Every training step logs its own MLflow run nested under the parent run, so each gets the
parent run as an input artifact (a task output parameter would do on a cluster, but kfp.local
replaces task outputs passed into a ParallelFor with the loop item): a tracked step's inputs
differ per pipeline run, so KFP's cache never reuses one (a cached step would leave no run).

A run started from the KFP UI needs only `data_uri`: the platform spec comes by reference
(the ConfigMap the chart installs, mounted at /etc/aads/spec.yaml, or an ``s3://`` URI; YAML
text in `config_yaml` overrides it) and the crops default to every crop it configures.

Where steps run (image, GPU label and toleration, requests and limits, retries, the crops
loop's parallelism, the Secret and ConfigMap names) comes from ``config/cluster.yaml``
(`aads.cluster`), applied when the pipeline is compiled: change the file and recompile, never
the code. Steps that read mutable state (the spec, the data URI, the registry) never use KFP's
cache. Credentials (S3, MLflow) reach steps only as Secret-backed environment variables.
"""

from collections.abc import Callable
from pathlib import Path

from kfp import dsl, kubernetes

from aads.cluster import SPEC_MOUNT, ClusterSettings, StepResources, load_cluster, package_version
from aads.config import load_config
from aads.phases import NUMBERS as PHASE_NUMBERS
from aads.phases import PHASES
from components import (
    calibrate_ood,
    close_pipeline_run,
    evaluate_adapter,
    gate_failure_report,
    open_pipeline_run,
    preprocess,
    register_adapter,
    register_router,
    resolve_config,
    train_adapter_phase,
    train_router,
)

PIPELINE_NAME = "aads-training"
DEFAULT_CONFIG_URI = f"{SPEC_MOUNT}/spec.yaml"
PLATFORM_SPEC = Path(__file__).resolve().parents[1] / "config" / "production.yaml"
"""The platform spec the chart installs (charts/files/platform-spec.yaml links it): the
compiled pipeline's default crops are its crops."""


def pipeline_version_name(git_sha: str = "", dirty: bool = False, stamp: int = 0) -> str:
    """The one naming scheme of pipeline versions (`aads pipeline upload`/`submit`, the chart's
    upload Job, the committed manifests): ``aads-training-v0-1-0`` for a released package;
    from a git checkout ``...-g<sha12>``, and ``-dirty-<unix time>`` when it has uncommitted
    changes (that code has no commit to name)."""
    name = f"{PIPELINE_NAME}-v{package_version().replace('.', '-').replace('+', '-')}"
    if git_sha:
        name += f"-g{git_sha[:12]}"
        if dirty:
            name += f"-dirty-{stamp}"
    return name


class _Placement:
    """Applies the cluster settings to tasks; kfp.local ignores all of it."""

    def __init__(self, cluster: ClusterSettings) -> None:
        self.cluster = cluster

    def _common(self, task: dsl.PipelineTask, resources: StepResources) -> dsl.PipelineTask:
        task.set_container_image(self.cluster.component_image_ref)
        task.set_cpu_request(resources.cpu_request).set_cpu_limit(resources.cpu_limit)
        task.set_memory_request(resources.memory_request)
        task.set_memory_limit(resources.memory_limit)
        secrets = self.cluster.secrets
        kubernetes.use_secret_as_env(
            task, secret_name=secrets.storage, secret_key_to_env=secrets.storage_env
        )
        kubernetes.use_config_map_as_volume(
            task, config_map_name=self.cluster.spec_config_map, mount_path=SPEC_MOUNT, optional=True
        )
        return task

    def cpu(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        return self._common(task, self.cluster.resources.cpu_step)

    def gpu(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        gpu, retries = self.cluster.gpu, self.cluster.retries
        self._common(task, self.cluster.resources.gpu_step)
        task.set_accelerator_type(gpu.resource).set_accelerator_limit(gpu.per_step)
        for key, value in gpu.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for t in gpu.tolerations:
            kubernetes.add_toleration(
                task, key=t.key, operator=t.operator, value=t.value or None, effect=t.effect or None
            )
        if retries.gpu_steps:
            task.set_retry(
                retries.gpu_steps,
                backoff_duration=retries.backoff,
                backoff_factor=retries.backoff_factor,
                backoff_max_duration=retries.backoff_max,
            )
        # TrainJobs (trainer_nodes > 0) run the same image as the step that creates them.
        return task.set_env_variable("AADS_IMAGE", self.cluster.component_image_ref)

    def tracked(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """MLflow's URI (and its S3 endpoint) for a step that logs a run; never cached."""
        secrets = self.cluster.secrets
        kubernetes.use_secret_as_env(
            task, secret_name=secrets.registry, secret_key_to_env=secrets.registry_env
        )
        return task.set_caching_options(False)

    def registry(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        return self.tracked(self.cpu(task))

    def register_if_passed(
        self, gated: dsl.PipelineTask, subject: str, register: Callable[[], dsl.PipelineTask]
    ) -> dsl.PipelineTask:
        """How every pipeline ends a model: `register()` (a registry step, built inside the
        branch) when `gated`'s ``passed`` output is true, else the gate's failure report for
        `subject`. Returns the register step."""
        with dsl.If(gated.outputs["passed"] == True):  # noqa: E712 - KFP condition syntax
            registered = self.registry(register())
        with dsl.Else():
            self.cpu(gate_failure_report(subject=subject, gate=gated.outputs["gate"]))
        return registered


def build_pipeline(cluster: ClusterSettings, default_crops: list[str]) -> Callable:
    """The pipeline function with `cluster`'s placement compiled in; `crops` defaults to
    `default_crops` (the platform spec's crops)."""
    place = _Placement(cluster)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Continual training of AADS crop adapters (DoRA, SD-LoRA, CONEC-LoRA) with "
        "Mahalanobis OOD calibration, gated registration in MLflow.",
    )
    def training_pipeline(
        data_uri: str,
        config_uri: str = DEFAULT_CONFIG_URI,
        config_yaml: str = "",
        crops: list = default_crops,
        phases: list = list(PHASE_NUMBERS),  # noqa: B006
        tracking_uri: str = "",
        git_sha: str = "",
        trainer_nodes: int = 0,
        trainer_gpus_per_node: int = 8,
    ):
        """Train, calibrate, gate and register the router and every crop's adapter.

        Args:
            data_uri: The images: an s3://bucket/prefix (or a folder the steps can read) in
                one of the layouts `aads data ingest` reads (plantvillage, crop-class,
                crop-part-class).
            config_uri: Where the platform spec is: the ConfigMap the Helm chart installs
                (mounted at /etc/aads/spec.yaml, the default) or an s3://bucket/key.yaml.
            config_yaml: Optional: a whole platform spec as YAML text; when set it is used
                instead of config_uri.
            crops: Crops to train, e.g. ["tomato", "corn"]; the default is every crop of the
                platform spec the chart installs. Each must be a crop of the run's spec.
            phases: Phases to run ("1" DoRA, "2" SD-LoRA, "3" CONEC-LoRA); a phase left out
                passes the previous package through.
            tracking_uri: MLflow tracking URI; empty: the aads-mlflow Secret's
                MLFLOW_TRACKING_URI, then the spec's registry.tracking_uri.
            git_sha: The commit of the code that built this pipeline, recorded on every
                registered version.
            trainer_nodes: 0: each phase trains in its own step on one GPU. N > 0: each phase
                runs as a Kubeflow Trainer TrainJob (torchrun DDP) on N nodes, for backbones
                one GPU cannot train.
            trainer_gpus_per_node: GPUs per node of a TrainJob (with trainer_nodes > 0).
        """
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        closing = place.registry(
            close_pipeline_run(
                config_uri=config_uri,
                config_yaml=config_yaml,
                tracking_uri=tracking_uri,
                kfp_run_id=run_id,
            )
        ).set_display_name("end MLflow run")
        with dsl.ExitHandler(closing, name="training"):
            spec = place.cpu(
                resolve_config(config_uri=config_uri, config_yaml=config_yaml, crops=crops)
            ).set_caching_options(False)
            spec.set_display_name("platform spec")
            config = spec.output
            opened = place.registry(
                open_pipeline_run(
                    config=config,
                    data_uri=data_uri,
                    crops=crops,
                    phases=phases,
                    tracking_uri=tracking_uri,
                    git_sha=git_sha,
                    kfp_run_id=run_id,
                )
            ).set_display_name("start MLflow run")
            # Every step's MLflow run nests under the pipeline's parent run, named in an artifact.
            tracking = {"tracking_uri": tracking_uri, "mlflow_run": opened.outputs["mlflow_run"]}
            prep = place.cpu(preprocess(config=config, data_uri=data_uri))
            prep.set_caching_options(False)
            manifest = prep.outputs["manifest"]

            router = place.tracked(
                place.gpu(train_router(config=config, manifest=manifest, **tracking))
            )
            place.register_if_passed(
                router,
                "router",
                lambda: register_router(
                    config=config,
                    router=router.outputs["router"],
                    kfp_run_id=run_id,
                    git_sha=git_sha,
                    **tracking,
                ),
            )

            trainer = {
                "trainer_nodes": trainer_nodes,
                "trainer_gpus_per_node": trainer_gpus_per_node,
                "kfp_run_id": run_id,
            }
            with dsl.ParallelFor(crops, parallelism=cluster.max_parallel_crops) as crop:
                # The spec again inside the loop: a step's string output does not reach into a
                # ParallelFor under kfp.local (artifacts and parameters do), and one cheap read
                # per crop keeps local and cluster runs the same graph.
                crop_spec = place.cpu(
                    resolve_config(config_uri=config_uri, config_yaml=config_yaml, crops=[])
                ).set_caching_options(False)
                crop_spec.set_display_name("platform spec")
                config = crop_spec.output
                # After the router: both load the same backbone, and on a first run the router
                # step fills the shared backbone cache instead of every crop downloading it.
                previous: dict = {}
                for phase in PHASES:
                    step = train_adapter_phase(
                        config=config,
                        manifest=manifest,
                        crop=crop,
                        phase=phase.number,
                        phases=phases,
                        **previous,
                        **trainer,
                        **tracking,
                    )
                    step = place.tracked(place.gpu(step)).set_display_name(
                        f"phase {phase.number}: {phase.method}"
                    )
                    if not phase.needs_previous:
                        step.after(router)
                    previous = {"previous": step.outputs["adapter"]}
                calibrated = place.tracked(
                    place.gpu(
                        calibrate_ood(
                            config=config,
                            manifest=manifest,
                            adapter=step.outputs["adapter"],
                            **tracking,
                        )
                    )
                ).set_display_name("OOD calibration")
                evaluation = place.tracked(
                    place.cpu(
                        evaluate_adapter(
                            config=config,
                            adapter=calibrated.outputs["calibrated"],
                            kfp_run_id=run_id,
                            git_sha=git_sha,
                            **tracking,
                        )
                    )
                )
                place.register_if_passed(
                    evaluation,
                    crop,
                    lambda: register_adapter(
                        config=config,
                        adapter=calibrated.outputs["calibrated"],
                        kfp_run_id=run_id,
                        git_sha=git_sha,
                        **tracking,
                    ),
                )

    return training_pipeline


def default_pipeline(
    cluster_file: str | None = None, spec_file: str | None = None, *, local: bool = False
) -> Callable:
    """The pipeline placed by `cluster_file` (default: the repository's config/cluster.yaml),
    its crops defaulting to those of `spec_file` (default: config/production.yaml). `local`:
    for kfp.local on this machine, where a retry only repeats a deterministic failure after
    minutes of backoff."""
    spec = Path(spec_file) if spec_file else PLATFORM_SPEC
    crops = load_config(spec).crop_names if spec_file or spec.is_file() else []
    cluster = load_cluster(cluster_file)
    if local:
        retries = cluster.retries.model_copy(update={"gpu_steps": 0})
        cluster = cluster.model_copy(update={"retries": retries})
    return build_pipeline(cluster, crops)
