"""Model cards: what an adapter version is, how it was made and how far to trust it.

Why a card per registered version rather than a wiki page: the registry is where an operator
decides to promote or roll back, so the facts needed for that decision (classes in head order,
the backbone and its licence, the gate verdict, the continual-learning history, the pipeline
run that produced it) travel with the version as its description and as ``model_card.md``.
Everything comes from the package (``adapter.json`` and its last confusion matrix) plus the
provenance the pipeline knows (KFP run id, git sha, gate result), so the card cannot drift
from the weights. A reader sees the headline first (`aads.headline`), the full list after.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from aads import headline
from aads.adapters.package import AdapterMeta
from aads.gate import GateResult
from aads.phases import PHASES, ROUTER
from aads.phases import get as get_phase

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

PHASE_METHODS = {p.number: p.method for p in PHASES}
PHASE_PURPOSE = {p.number: p.purpose for p in PHASES}


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
    pkg_dir: Path | None = None,
    kfp_run_id: str = "",
    git_sha: str = "",
    gate: GateResult | None = None,
    backbone_licence: str = "",
    against_parent: str = "",
) -> str:
    """Markdown model card for one adapter package version.

    It opens with the headline (`aads.headline`: accuracy with its 95 % interval, per-class
    precision and recall, retention, near- and far-OOD AUROC, the calibrated operating point,
    the gate), then every metric, then how the model was made. `pkg_dir` gives the headline
    the last phase's confusion matrix (interval, per-class scores). `backbone_licence`
    overrides the licence derived from the backbone source (e.g. when a mirror of approved
    DINOv3 weights is loaded from S3 and the caller knows what it holds). `against_parent` is a
    continuation's side-by-side section (`aads.continual.report.against_parent`).
    """
    source = str(meta.backbone_settings.get("source", "unknown"))
    licence = backbone_licence or _licence_for(source)
    sections = [
        f"# Plant-disease adapter: {meta.crop}",
        _at_a_glance(meta, pkg_dir, gate, source),
        _evaluation(meta, gate),
        against_parent,
        _intended_use(meta),
        _model_details(meta, source, licence),
        _training_data(meta),
        _history(meta),
        _lineage(meta),
        _provenance(kfp_run_id, git_sha),
        _limitations(meta),
    ]
    return "\n\n".join(s.strip() for s in sections if s.strip()) + "\n"


def _at_a_glance(
    meta: AdapterMeta, pkg_dir: Path | None, gate: GateResult | None, source: str
) -> str:
    phases = " -> ".join(dict.fromkeys(PHASE_METHODS[p.phase] for p in meta.phases)) or "none"
    lines = [
        "## At a glance",
        "",
        f"{len(meta.classes)} classes of {meta.crop}, domains {', '.join(meta.domains)}; "
        f"backbone `{source}`; phases {phases}. Accuracy is over every test image of the last "
        "phase, as in its confusion matrix; the OOD rates are at the calibrated thresholds.",
        "",
    ]
    return "\n".join(lines + headline.markdown(headline.build(pkg_dir, meta, gate)))


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
    method = get_phase(phase)
    key, fields = method.settings_key, method.card_fields
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


def _evaluation(meta: AdapterMeta, gate: GateResult | None) -> str:
    lines = ["## All metrics", "", "Test split, after the last phase:", ""]
    lines += _table(("metric", "value"), _metric_rows(meta.metrics)) or ["(none recorded)"]
    if meta.ood:
        numeric = {k: v for k, v in meta.ood.items() if _is_number(v)}
        labels = [(k, v) for k, v in meta.ood.items() if not _is_number(v) and v not in ("", None)]
        lines += ["", "### Out-of-distribution check", ""]
        lines += [f"- {k}: `{_fmt(v)}`" for k, v in labels]
        if numeric:
            lines += [""] + _table(("OOD metric", "value"), _metric_rows(numeric))
    if gate is not None:
        lines += ["", "### Evaluation gate", "", f"Gate: **{gate.verdict}**", ""]
        rows = [
            (
                c.name,
                c.metric or "-",
                _fmt(c.minimum),
                _fmt(c.value) if c.value is not None else "-",
                c.outcome + (f" ({c.note})" if c.note else ""),
            )
            for c in gate.checks
        ]
        lines += _table(("check", "metric", "minimum", "measured", "outcome"), rows)
    return "\n".join(lines)


def _metric_rows(metrics: Mapping[str, float]) -> list[tuple[str, str]]:
    """(name, value) sorted by name; counts of images as integers."""
    return [
        (k, str(round(v)) if headline.is_count(k) else _fmt(float(v)))
        for k, v in sorted(metrics.items())
    ]


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


def lineage_chain(meta: AdapterMeta) -> str:
    """``v1 base -> v2 + septoria_leaf_spot -> (this) + field``: where a continued package
    came from; the first link is the base its first continuation started from."""
    if not meta.lineage:
        return ""
    links = []
    for i, step in enumerate(meta.lineage):
        later = meta.lineage[i + 1] if i + 1 < len(meta.lineage) else None
        who = _ref(later.parent_version, later.parent_source) if later else "(this)"
        if step.task.kind == "base":
            links.append(f"{who} base")
            continue
        if i == 0:
            links.append(f"{_ref(step.parent_version, step.parent_source)} base")
        added = step.task.domain if step.task.kind == "domain" else ", ".join(step.task.classes)
        links.append(f"{who} + {added}")
    return " -> ".join(links)


def _ref(version: str, source: str) -> str:
    return f"v{version}" if version else (source or "?")


def _lineage(meta: AdapterMeta) -> str:
    if not meta.lineage:
        return ""
    rows = [
        (
            _ref(step.parent_version, step.parent_source),
            step.task.kind,
            step.task.domain or ", ".join(step.task.classes),
            ", ".join(f"{k}: {v}" for k, v in sorted(step.task.images.items())) or "-",
            step.task.source or "-",
            step.finished,
        )
        for step in meta.lineage
    ]
    header = ("parent", "task", "learned", "images", "labels from", "finished")
    return "\n".join(["## Lineage", "", lineage_chain(meta), "", *_table(header, rows)])


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


def router_card(
    meta: Mapping[str, object],
    metrics: Mapping[str, float],
    gate: GateResult,
    *,
    kfp_run_id: str = "",
    git_sha: str = "",
) -> str:
    """Markdown card of a router version (`meta` is its ``router.json``)."""
    settings = meta.get("backbone_settings") or {}
    source = str(settings.get("source", "")) if isinstance(settings, Mapping) else ""
    crops, parts = meta.get("crops") or [], meta.get("parts") or []
    purpose = ROUTER.purpose[:1].upper() + ROUTER.purpose[1:]
    lines = [
        "# AADS crop router",
        "",
        f"{purpose}: crops {', '.join(map(str, crops))}; parts {', '.join(map(str, parts))}.",
        "",
        f"Method: {ROUTER.method} (`{source}`); a photo of no known crop is answered *unknown* "
        "by its crop-level OOD check.",
        "",
        f"Backbone licence: {backbone_licence(source)}.",
        "",
        f"Gate: **{gate.verdict}** ({gate.summary()}).",
        "",
        *_table(("metric", "value"), _metric_rows(metrics)),
        "",
        _provenance(kfp_run_id, git_sha).strip(),
    ]
    return "\n".join(lines) + "\n"
