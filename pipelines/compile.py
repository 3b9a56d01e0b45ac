"""Compile the training pipeline: KFP IR YAML (``pipelines/training.yaml``, what the KFP UI and
`kfp.Client` upload) and the Kubernetes-native ``Pipeline`` + ``PipelineVersion`` objects for
GitOps (``manifests/base/pipelines/aads-training.yaml``; KFP's Kubernetes pipeline store).

Both are committed; a test recompiles and fails when they are stale, so the YAML in git is
always what the Python says.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from kfp import compiler
from kfp.compiler.compiler_utils import KubernetesManifestOptions

from aads.atomic import atomic_write_text
from pipelines.training import PIPELINE_NAME, default_pipeline, pipeline_version_name

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_YAML = ROOT / "pipelines" / "training.yaml"
MANIFEST_YAML = ROOT / "manifests" / "base" / "pipelines" / "aads-training.yaml"


def compiled_texts(
    namespace: str = "kubeflow", cluster: str | None = None, spec: str | None = None
) -> dict[Path, str]:
    """{path: YAML text} of both outputs, compiled in a temporary folder with the cluster
    settings in `cluster` (default: config/cluster.yaml). The PipelineVersion is named by
    the one scheme (`pipeline_version_name`: one per released package version)."""
    training_pipeline = default_pipeline(cluster, spec)
    with tempfile.TemporaryDirectory() as tmp:
        ir, k8s = Path(tmp) / "ir.yaml", Path(tmp) / "k8s.yaml"
        compiler.Compiler().compile(training_pipeline, str(ir))
        compiler.Compiler().compile(
            training_pipeline,
            str(k8s),
            kubernetes_manifest_format=True,
            kubernetes_manifest_options=KubernetesManifestOptions(
                pipeline_name=PIPELINE_NAME,
                pipeline_display_name="AADS training",
                pipeline_version_name=pipeline_version_name(),
                namespace=namespace,
                include_pipeline_manifest=True,
            ),
        )
        return {PIPELINE_YAML: ir.read_text(), MANIFEST_YAML: k8s.read_text()}


def compile_all(
    namespace: str = "kubeflow", cluster: str | None = None, spec: str | None = None
) -> list[Path]:
    written = []
    for path, text in compiled_texts(namespace, cluster, spec).items():
        atomic_write_text(path, text)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in compile_all():
        print(p)
