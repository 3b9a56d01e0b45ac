"""The continuation as pipeline steps: URIs in, a folder and a verdict out.

`continuation_step` is what the KFP component ``continue_adapter`` runs (and the same function
runs under `kfp.local`): the task's images and the evaluation set may be ``s3://`` prefixes
(fetched into the verified cache) or folders. Its output folder holds ``package/`` and
``report/``; `register_step` registers the package from it when the gate passed.
"""

from __future__ import annotations

import json
from pathlib import Path

from aads.config import PlatformConfig
from aads.continual.base import ContinuationError
from aads.continual.data import task_for
from aads.continual.report import REPORT_DIR
from aads.continual.run import PACKAGE_DIR, Continuation, continue_from
from aads.storage import fetch_dir_cached
from aads.tracking import RunRef


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def continuation_step(
    config: PlatformConfig,
    *,
    data_uri: str,
    base: str,
    out_dir: Path,
    crop: str = "",
    classes: str = "",
    domain: str = "",
    eval_uri: str = "",
    tracking_uri: str | None = None,
    tracking: RunRef | None = None,
) -> Continuation:
    """Fetch the images, read or build the task, continue `base` (an alias such as
    ``champion``, a version, a URI or a folder); `classes` is comma-separated."""
    data = fetch_dir_cached(data_uri, config.storage)
    evaluation = fetch_dir_cached(eval_uri, config.storage) if eval_uri else None
    task = task_for(data, crop or None, _names(classes), domain or None)
    return continue_from(
        config,
        base or f"models:/{config.registry.adapter_model_prefix}{task.crop}@champion",
        task,
        data,
        Path(out_dir),
        eval_dir=evaluation,
        tracking=tracking,
        tracking_uri=tracking_uri,
    )


def register_step(
    config: PlatformConfig,
    out_dir: Path,
    *,
    tracking_uri: str | None,
    kfp_run_id: str = "",
    git_sha: str = "",
) -> str:
    """Register ``<out_dir>/package`` with what ``<out_dir>/report`` says of it; returns
    ``<model>/<version>``. A refused candidate is never registered."""
    from aads.continual.lineage import register_continuation
    from aads.gate import GateResult

    report = Path(out_dir) / REPORT_DIR
    try:
        gate = GateResult.model_validate_json((report / "gate.json").read_text())
        card = (report / "model_card.md").read_text()
    except OSError as err:
        raise ContinuationError(f"{out_dir}: not a continuation's output ({err})") from None
    package = Path(out_dir) / PACKAGE_DIR
    metrics = json.loads((package / "adapter.json").read_text()).get("metrics", {})
    found = register_continuation(
        config,
        package,
        gate_passed=gate.passed,
        gate_summary=gate.summary(),
        metrics={k: float(v) for k, v in metrics.items()},
        card=card,
        tracking_uri=tracking_uri,
        kfp_run_id=kfp_run_id,
        git_sha=git_sha,
    )
    return f"{found.name}/{found.version}"
