"""Continuation components: one task on top of a registered version, and its registration."""

from typing import NamedTuple

from kfp.dsl import Input, Markdown, Metrics, Model, Output

from components.image import aads_component


@aads_component
def continue_adapter(
    config: str,
    data_uri: str,
    base: str,
    crop: str,
    classes: str,
    domain: str,
    eval_uri: str,
    tracking_uri: str,
    continuation: Output[Model],
    model_card: Output[Markdown],
    metrics: Output[Metrics],
) -> NamedTuple("Outputs", passed=bool, gate=str):
    """Learn the task in `data_uri` on top of `base`, gated against it (`aads.continual`);
    `continuation` holds ``package/`` and ``report/``, whether the gate passed or not."""
    import os
    from collections import namedtuple
    from pathlib import Path

    from aads.continual.step import continuation_step
    from aads.steps import component_inputs

    step = component_inputs(config, os.environ, tracking_uri=tracking_uri)
    result = continuation_step(
        step.config,
        data_uri=data_uri,
        base=base,
        out_dir=Path(continuation.path),
        crop=crop,
        classes=classes,
        domain=domain,
        eval_uri=eval_uri,
        tracking_uri=step.tracking_uri,
    )
    Path(model_card.path).write_text(result.card, encoding="utf-8")
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    outputs = namedtuple("Outputs", ["passed", "gate"])
    return outputs(result.gate.passed, result.gate.summary())


@aads_component
def register_continuation(
    config: str, continuation: Input[Model], tracking_uri: str, kfp_run_id: str, git_sha: str
) -> str:
    """The gated child as the next version (alias ``candidate``) with its lineage tags;
    returns ``<model>/<version>``."""
    import os
    from pathlib import Path

    from aads.continual.step import register_step
    from aads.steps import component_inputs

    step = component_inputs(config, os.environ, tracking_uri=tracking_uri)
    return register_step(
        step.config,
        Path(continuation.path),
        tracking_uri=step.tracking_uri,
        kfp_run_id=kfp_run_id,
        git_sha=git_sha,
    )
