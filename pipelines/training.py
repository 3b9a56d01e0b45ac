"""The AADS training pipeline: data -> router -> per crop (phases 1-3 -> OOD -> gate) -> MLflow.

Control flow at a glance::

    ExitHandler(close_pipeline_run: end the MLflow parent run, finished or failed):
      open_pipeline_run (MLflow parent run) ──> `mlflow_run` artifact to every step below
      preprocess ──> train_router ──> If(passed): register_router   Else: gate_failure_report
                └──> ParallelFor(crops):
                       phase 1 (DoRA) -> phase 2 (SD-LoRA) -> phase 3 (CONEC-LoRA)
                       -> calibrate_ood -> evaluate_adapter
                       -> If(passed): register_adapter (alias candidate)
                          Else: gate_failure_report

Every training step logs its own MLflow run nested under the parent run, so each step gets the
parent run as an input artifact (a task output parameter would do on a cluster, but kfp.local
replaces task outputs passed into a ParallelFor with the loop item): a step's inputs differ per
pipeline run and KFP's cache never reuses a tracked step (a cached step would leave no run).
Steps that read mutable state (the data URI, the registry) never use KFP's cache at all. GPU
steps request ``nvidia.com/gpu`` and land on GPU nodes through a node selector and toleration;
credentials (S3, MLflow) reach steps only as Secret-backed env vars.
"""

from dataclasses import dataclass, field

from kfp import dsl, kubernetes

from components import (
    calibrate_ood,
    close_pipeline_run,
    evaluate_adapter,
    gate_failure_report,
    open_pipeline_run,
    preprocess,
    register_adapter,
    register_router,
    train_adapter_phase,
    train_router,
)

PIPELINE_NAME = "aads-training"


@dataclass(frozen=True)
class ClusterSettings:
    """Where steps run on a cluster; kfp.local ignores all of it."""

    gpu_resource: str = "nvidia.com/gpu"
    gpus_per_step: int = 1
    gpu_node_selector: tuple[str, str] = ("nvidia.com/gpu.present", "true")
    gpu_toleration_key: str = "nvidia.com/gpu"
    cpu_limit: str = "8"
    memory_limit: str = "64G"
    s3_secret: str = "aads-s3"
    mlflow_secret: str = "aads-mlflow"
    s3_env: dict[str, str] = field(
        default_factory=lambda: {
            "accesskey": "AWS_ACCESS_KEY_ID",
            "secretkey": "AWS_SECRET_ACCESS_KEY",
            "endpoint": "AWS_ENDPOINT_URL_S3",
        }
    )
    mlflow_env: dict[str, str] = field(
        default_factory=lambda: {
            "tracking_uri": "MLFLOW_TRACKING_URI",
            "s3_endpoint": "MLFLOW_S3_ENDPOINT_URL",
        }
    )


CLUSTER = ClusterSettings()


def _storage_env(task: dsl.PipelineTask) -> dsl.PipelineTask:
    kubernetes.use_secret_as_env(
        task, secret_name=CLUSTER.s3_secret, secret_key_to_env=CLUSTER.s3_env
    )
    return task


def _tracking_env(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """MLflow's URI (and its S3 endpoint) for a step that logs a run."""
    kubernetes.use_secret_as_env(
        task, secret_name=CLUSTER.mlflow_secret, secret_key_to_env=CLUSTER.mlflow_env
    )
    return task


def _registry_env(task: dsl.PipelineTask) -> dsl.PipelineTask:
    _storage_env(task)
    return _tracking_env(task).set_caching_options(False)


def _on_gpu(task: dsl.PipelineTask) -> dsl.PipelineTask:
    task.set_accelerator_type(CLUSTER.gpu_resource).set_accelerator_limit(CLUSTER.gpus_per_step)
    task.set_cpu_limit(CLUSTER.cpu_limit).set_memory_limit(CLUSTER.memory_limit)
    key, value = CLUSTER.gpu_node_selector
    kubernetes.add_node_selector(task, label_key=key, label_value=value)
    kubernetes.add_toleration(
        task, key=CLUSTER.gpu_toleration_key, operator="Exists", effect="NoSchedule"
    )
    return _tracking_env(_storage_env(task))


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Continual training of AADS crop adapters (DoRA, SD-LoRA, CONEC-LoRA) with "
    "Mahalanobis OOD calibration, gated registration in MLflow.",
)
def training_pipeline(
    config: str,
    data_uri: str,
    crops: list = ["tomato"],  # noqa: B006 - KFP pipeline parameter default, never mutated
    phases: list = ["1", "2", "3"],  # noqa: B006
    tracking_uri: str = "",
    git_sha: str = "",
    trainer_nodes: int = 0,
    trainer_gpus_per_node: int = 8,
):
    """`config`: the platform spec (YAML text); `data_uri`: image folder or s3:// prefix;
    `crops`: which crops' adapters to train; `phases`: which phases to run (others pass the
    previous package through); `tracking_uri`: MLflow (empty: from the env/Secret);
    `trainer_nodes` > 0: each phase runs as a Kubeflow Trainer TrainJob (torchrun DDP) on that
    many nodes x `trainer_gpus_per_node` GPUs, for backbones one GPU cannot train."""
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    closing = _registry_env(
        close_pipeline_run(config=config, tracking_uri=tracking_uri, kfp_run_id=run_id)
    ).set_display_name("end MLflow run")
    with dsl.ExitHandler(closing, name="training"):
        opened = _registry_env(
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

        prep = preprocess(config=config, data_uri=data_uri).set_caching_options(False)
        _storage_env(prep)
        manifest = prep.outputs["manifest"]

        router = _on_gpu(train_router(config=config, manifest=manifest, **tracking))
        with dsl.If(router.outputs["passed"] == True):  # noqa: E712 - KFP condition syntax
            _registry_env(
                register_router(
                    config=config,
                    router=router.outputs["router"],
                    kfp_run_id=run_id,
                    git_sha=git_sha,
                    **tracking,
                )
            )
        with dsl.Else():
            gate_failure_report(subject="router", gate=router.outputs["gate"])

        trainer = {
            "trainer_nodes": trainer_nodes,
            "trainer_gpus_per_node": trainer_gpus_per_node,
            "kfp_run_id": run_id,
        }
        with dsl.ParallelFor(crops) as crop:
            # After the router: both load the same backbone, and on a first run the router
            # step fills the shared backbone cache instead of every crop downloading it at once.
            p1 = _on_gpu(
                train_adapter_phase(
                    config=config,
                    manifest=manifest,
                    crop=crop,
                    phase="1",
                    phases=phases,
                    **trainer,
                    **tracking,
                )
            ).set_display_name("phase 1: DoRA")
            p1.after(router)
            p2 = _on_gpu(
                train_adapter_phase(
                    config=config,
                    manifest=manifest,
                    crop=crop,
                    phase="2",
                    phases=phases,
                    previous=p1.outputs["adapter"],
                    **trainer,
                    **tracking,
                )
            ).set_display_name("phase 2: SD-LoRA")
            p3 = _on_gpu(
                train_adapter_phase(
                    config=config,
                    manifest=manifest,
                    crop=crop,
                    phase="3",
                    phases=phases,
                    previous=p2.outputs["adapter"],
                    **trainer,
                    **tracking,
                )
            ).set_display_name("phase 3: CONEC-LoRA")
            calibrated = _on_gpu(
                calibrate_ood(
                    config=config, manifest=manifest, adapter=p3.outputs["adapter"], **tracking
                )
            ).set_display_name("OOD calibration")
            evaluation = _tracking_env(
                evaluate_adapter(
                    config=config,
                    adapter=calibrated.outputs["calibrated"],
                    kfp_run_id=run_id,
                    git_sha=git_sha,
                    **tracking,
                )
            )
            with dsl.If(evaluation.outputs["passed"] == True):  # noqa: E712
                _registry_env(
                    register_adapter(
                        config=config,
                        adapter=calibrated.outputs["calibrated"],
                        kfp_run_id=run_id,
                        git_sha=git_sha,
                        **tracking,
                    )
                )
            with dsl.Else():
                gate_failure_report(subject=crop, gate=evaluation.outputs["gate"])
