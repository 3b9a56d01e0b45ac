"""KFP v2 components of the AADS training pipeline: thin shells over `aads.steps`.

Each component parses its parameters, calls one `aads` function and writes KFP artifacts
(folders for models and manifests, Metrics, ClassificationMetrics, Markdown, HTML). They are
lightweight Python components whose base image is the AADS component image (``Dockerfile``
here), which has `aads` installed: the same function body runs in that image on a cluster and
in this environment under ``kfp.local.SubprocessRunner`` (which refuses containerised
components, i.e. ones with a ``target_image``, so none is set).
"""

from components.adapter import calibrate_ood, evaluate_adapter, train_adapter_phase
from components.continuation import continue_adapter, register_continuation
from components.data import preprocess, resolve_config
from components.registry import gate_failure_report, register_adapter, register_router
from components.router import train_router
from components.tracking import close_pipeline_run, open_pipeline_run

__all__ = [
    "calibrate_ood",
    "close_pipeline_run",
    "continue_adapter",
    "evaluate_adapter",
    "gate_failure_report",
    "open_pipeline_run",
    "preprocess",
    "register_adapter",
    "register_continuation",
    "register_router",
    "resolve_config",
    "train_adapter_phase",
    "train_router",
]
