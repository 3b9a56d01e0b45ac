"""Compile the training pipeline: KFP IR YAML (``pipelines/training.yaml``, what the KFP UI and
`kfp.Client` upload) and the Kubernetes-native ``Pipeline`` + ``PipelineVersion`` objects for
GitOps (``manifests/base/pipelines/aads-training.yaml``; KFP's Kubernetes pipeline store).

Both are committed; a test recompiles and fails when they are stale, so the YAML in git is
always what the Python says.
"""

from __future__ import annotations

import tempfile
from importlib.metadata import version
from pathlib import Path

from kfp import compiler
from kfp.compiler.compiler_utils import KubernetesManifestOptions

from aads.atomic import atomic_write_text
from pipelines.training import PIPELINE_NAME, training_pipeline

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_YAML = ROOT / "pipelines" / "training.yaml"
MANIFEST_YAML = ROOT / "manifests" / "base" / "pipelines" / "aads-training.yaml"


def pipeline_version_name() -> str:
    """``aads-training-v0-1-0``: one PipelineVersion per released package version."""
    return f"{PIPELINE_NAME}-v{version('aads').replace('.', '-').replace('+', '-')}"


def compiled_texts(namespace: str = "kubeflow") -> dict[Path, str]:
    """{path: YAML text} of both outputs, compiled in a temporary folder."""
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


def compile_all(namespace: str = "kubeflow") -> list[Path]:
    written = []
    for path, text in compiled_texts(namespace).items():
        atomic_write_text(path, text)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in compile_all():
        print(p)
