"""Model cards: what an adapter version is, how it was made and how far to trust it.

Why a card per registered version rather than a wiki page: the registry is where an operator
decides to promote or roll back, so the facts needed for that decision (classes in head order,
the backbone and its licence, the gate verdict, the continual-learning history, the pipeline
run that produced it) travel with the version as its description and as ``model_card.md``.
Everything comes from the package's ``adapter.json`` (`AdapterMeta`) plus the provenance the
pipeline knows (KFP run id, git sha, gate result), so the card cannot drift from the weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from aads.adapters.package import AdapterMeta

DINOV3_LICENCE = (
    "DINOv3 License (Meta; gated, see "
    "https://ai.meta.com/resources/models-and-libraries/dinov3-license/)"
)
DINOV2_LICENCE = (
    "Apache-2.0 (Meta, DINOv2; not gated, see "
    "https://github.com/facebookresearch/dinov2/blob/main/LICENSE)"
)
BUILT_IN_CODE = "none (built in code for tests and demos)"
UNKNOWN_LICENCE = "unknown: check the weights' licence"

PHASE_METHODS = {"1": "DoRA", "2": "SD-LoRA", "3": "CONEC-LoRA"}
PHASE_PURPOSE = {
    "1": "base disease classes",
    "2": "new disease classes (class-incremental, rehearsal-free)",
    "3": "new imaging conditions (domain-incremental)",
}


def backbone_licence(source: str) -> str:
    """The licence that governs a backbone source, as far as the source id tells.

    Only ids we can recognise are named; a local folder or an object-store mirror could hold
    anything, so the card says so instead of guessing.
    """
    if source.startswith("facebook/dinov3-"):
        return DINOV3_LICENCE
    if source.startswith("facebook/dinov2-"):
        return DINOV2_LICENCE
    if source.startswith(("synthetic:", "random:")):
        return BUILT_IN_CODE
    return UNKNOWN_LICENCE


# `model_card` takes a `backbone_licence` keyword that shadows the function inside it.
_licence_for = backbone_licence


def model_card(
    meta: AdapterMeta,
    *,
    kfp_run_id: str = "",
    git_sha: str = "",
    gate: dict | None = None,
    backbone_licence: str = "",
) -> str:
    """Markdown model card for one adapter package version.

    `backbone_licence` overrides the licence derived from the backbone source (e.g. when a
    mirror of approved DINOv3 weights is loaded from S3 and the caller knows what it holds).
    """
    source = str(meta.backbone_settings.get("source", "unknown"))
    licence = backbone_licence or _licence_for(source)
    sections = [
        f"# Plant-disease adapter: {meta.crop}",
        _intended_use(meta),
        _model_details(meta, source, licence),
        _training_data(meta),
        _evaluation(meta, gate),
        _history(meta),
        _provenance(kfp_run_id, git_sha),
        _limitations(meta),
    ]
    return "\n\n".join(s.strip() for s in sections) + "\n"


def _intended_use(meta: AdapterMeta) -> str:
    return f"""
## Intended use

- Triage of plant-disease photos of **{meta.crop}**: the adapter names one of the disease
  classes listed below, or answers *unknown*.
- Users: growers, extension workers and agronomists who want a first opinion and a reason to
  look closer.

### Out of scope

- Images of other crops, and diseases not listed below: the OOD check is there to answer
  *unknown* for them, never to force them into a known class.
- Not a substitute for an agronomist or a laboratory diagnosis; do not base treatment,
  quarantine or trade decisions on this model alone.
"""


def _model_details(meta: AdapterMeta, source: str, licence: str) -> str:
    image_size = meta.backbone_settings.get("image_size", "?")
    lines = [
        "## Model details",
        "",
        f"- Backbone: `{source}` (image size {image_size}, frozen)",
        f"- Backbone licence: {licence}",
        f"- Classes (head order): {', '.join(f'`{c}`' for c in meta.classes)}",
        f"- Domains: {', '.join(f'`{d}`' for d in meta.domains)}",
        f"- Package format: `{meta.format}`",
        "",
        "Methods per phase:",
        "",
    ]
    phases = sorted({p.phase for p in meta.phases}) or ["1"]
    for phase in phases:
        lines.append(
            f"- Phase {phase}: {PHASE_METHODS[phase]}{_method_settings(meta, phase)}"
            f", {PHASE_PURPOSE[phase]}"
        )
    return "\n".join(lines)


def _method_settings(meta: AdapterMeta, phase: str) -> str:
    """A short settings summary, so two versions can be compared from their cards alone."""
    key, fields = {
        "1": ("dora", ("r", "alpha", "blocks", "modules")),
        "2": ("sd_lora", ("variant", "rank", "modules")),
        "3": ("conec", ("rank", "shared_blocks", "selector", "modules")),
    }[phase]
    settings = meta.adapter_settings.get(key)
    if not isinstance(settings, Mapping):
        return ""
    shown = [f"{f}={_setting(settings[f])}" for f in fields if f in settings]
    return f" ({', '.join(shown)})" if shown else ""


def _setting(value: object) -> str:
    return "/".join(map(str, value)) if isinstance(value, list | tuple) else f"{value}"


def _training_data(meta: AdapterMeta) -> str:
    manifest = f"`{meta.manifest_sha256}`" if meta.manifest_sha256 else "not recorded"
    return f"""
## Training data

- Data manifest sha256: {manifest} (the ingested manifest lists every image, its split and
  phase; the same hash identifies the same data)
- No training images are kept in the package: class statistics only (means, covariance).
"""


def _evaluation(meta: AdapterMeta, gate: dict | None) -> str:
    lines = ["## Evaluation", "", "Final metrics (test split, after the last phase):", ""]
    lines += _table(("metric", "value"), sorted(meta.metrics.items())) or ["(none recorded)"]
    if meta.ood:
        numeric = sorted((k, v) for k, v in meta.ood.items() if _is_number(v))
        labels = [(k, v) for k, v in meta.ood.items() if not _is_number(v) and v not in ("", None)]
        lines += ["", "### Out-of-distribution check", ""]
        lines += [f"- {k}: `{_fmt(v)}`" for k, v in labels]
        if numeric:
            lines += [""] + _table(("OOD metric", "value"), numeric)
    if gate is not None:
        lines += ["", "### Evaluation gate", "", _gate_verdict(gate)]
        thresholds = gate.get("thresholds") or {}
        measured = {**meta.metrics, **(gate.get("metrics") or gate.get("measured") or {})}
        checks = [c for c in gate.get("checks") or [] if isinstance(c, Mapping)]
        if checks:  # `aads.gate.GateResult.model_dump()`
            rows = [
                (
                    c.get("name", "-"),
                    c.get("metric", "-"),
                    _fmt(c.get("minimum", "-")),
                    _fmt(c["value"]) if c.get("value") is not None else "-",
                    c.get("outcome", "-"),
                )
                for c in checks
            ]
            header = ("check", "metric", "minimum", "measured", "outcome")
            lines += [""] + _table(header, rows)
        if thresholds:
            rows = [(k, _fmt(t), _fmt(measured.get(k, "-"))) for k, t in sorted(thresholds.items())]
            lines += [""] + _table(("gated metric", "threshold", "measured"), rows)
        reasons = gate.get("reasons") or gate.get("failures") or []
        reasons = [reasons] if isinstance(reasons, str) else list(reasons)
        lines += ([""] + [f"- {r}" for r in reasons]) if reasons else []
    return "\n".join(lines)


def _gate_verdict(gate: dict) -> str:
    passed = gate.get("passed")
    verdict = "passed" if passed is True else "FAILED" if passed is False else "not decided"
    return f"Gate: **{verdict}**"


def _history(meta: AdapterMeta) -> str:
    lines = ["## Continual-learning history", ""]
    rows = [
        (
            p.phase,
            PHASE_METHODS[p.phase],
            p.task or "-",
            ", ".join(p.added) or "-",
            p.epochs,
            f"{p.seconds:.1f}",
            "; ".join(f"{k}={_fmt(v)}" for k, v in sorted(p.metrics.items())) or "-",
            p.finished,
        )
        for p in meta.phases
    ]
    header = ("phase", "method", "task", "added", "epochs", "seconds", "metrics", "finished")
    return "\n".join(lines + (_table(header, rows) or ["(no phase recorded)"]))


def _provenance(kfp_run_id: str, git_sha: str) -> str:
    return f"""
## Provenance

- KFP run id: {f"`{kfp_run_id}`" if kfp_run_id else "not recorded (not run by the pipeline)"}
- Git sha: {f"`{git_sha}`" if git_sha else "not recorded"}
"""


def _limitations(meta: AdapterMeta) -> str:
    return f"""
## Limitations

- It knows only the {len(meta.classes)} classes above and the domains
  {", ".join(meta.domains)}; accuracy under other lighting, cameras or backgrounds is not
  measured.
- The OOD check rejects by distance to known classes: a new disease that looks like a known
  one can be named as that one, and some in-distribution images are answered *unknown*.
- Metrics come from held-out splits of the training data source, not from a field trial.
"""


def _table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> list[str]:
    body = [
        "| " + " | ".join(_cell(v) for v in row) + " |"
        for row in rows  # materialised first so an empty table reports as empty
    ]
    if not body:
        return []
    header = list(header)
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *body]


def _cell(value: object) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else "n/a"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    return str(value)
