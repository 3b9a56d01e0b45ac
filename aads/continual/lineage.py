"""Lineage in the registry: which version a continuation came from and what it learned.

A continued version carries three tags beside the usual ones: ``parent_version`` (the
version it continued), ``task_kind`` (``classes``, ``domain`` or ``base``) and ``task`` (what
it learned: the class names, or the domain and its classes). `chain` follows the
``parent_version`` tags back from a version; `aads lineage --crop tomato` prints
``v1 base -> v2 + septoria_leaf_spot -> v3 + field``. A version the full pipeline registered
has no ``parent_version``: it is where a chain starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aads.adapters.package import AdapterMeta, read_meta
from aads.config import PlatformConfig
from aads.continual.base import ContinuationError
from aads.registry import RegisteredVersion, Registry, adapter_model_name
from aads.tracking import GATE_DETAIL_TAG, GATE_TAG

PARENT_TAG = "parent_version"
KIND_TAG = "task_kind"
TASK_TAG = "task"
HEADLINE = ("new_task_accuracy", "old_accuracy", "near_ood_auroc", "far_ood_auroc")


def task_text(meta: AdapterMeta) -> str:
    """What the package's last continuation learned: ``septoria_leaf_spot`` or
    ``field: healthy, early_blight`` ('' when it is not a continuation)."""
    if not meta.lineage:
        return ""
    task = meta.lineage[-1].task
    if task.kind == "domain":
        return f"{task.domain}: {', '.join(task.classes)}"
    return ", ".join(task.classes)


def lineage_tags(meta: AdapterMeta) -> dict[str, str]:
    """The three lineage tags of a continued package (empty for a pipeline-trained one)."""
    if not meta.lineage:
        return {}
    last = meta.lineage[-1]
    tags = {KIND_TAG: last.task.kind, TASK_TAG: task_text(meta)}
    if last.parent_version:
        tags[PARENT_TAG] = last.parent_version
    return tags


def register_continuation(
    config: PlatformConfig,
    package: Path,
    *,
    gate_passed: bool,
    gate_summary: str,
    metrics: dict[str, float],
    card: str,
    tracking_uri: str | None,
    kfp_run_id: str = "",
    git_sha: str = "",
) -> RegisteredVersion:
    """Register a gated continuation as the next version of its crop's model (alias
    ``candidate``) with its lineage tags; a refused one is never registered. Registering the
    same package again returns the version it already is (keyed by its digest)."""
    from aads.steps import package_tags
    from aads.storage import CHECKSUM_FILE, sha256_file

    if not gate_passed:
        raise ContinuationError(f"not registering: the continuation gate {gate_summary}")
    meta = read_meta(package)
    run_id = kfp_run_id or f"continue-{sha256_file(Path(package) / CHECKSUM_FILE)[:24]}"
    tags = {
        **package_tags(meta, git_sha=git_sha),
        GATE_TAG: "passed",
        GATE_DETAIL_TAG: gate_summary,
        **lineage_tags(meta),
        **{
            f"metric.{k}": f"{metrics[f'continuation_{k}']:.4f}"
            for k in HEADLINE
            if f"continuation_{k}" in metrics
        },
    }
    registry = Registry(config.registry, tracking_uri=tracking_uri)
    return registry.register_package(
        Path(package),
        name=adapter_model_name(config.registry, meta.crop),
        tags=tags,
        description=card,
        metrics={**meta.metrics, **metrics},
        kfp_run_id=run_id,
    )


@dataclass(frozen=True)
class Link:
    version: str
    aliases: list[str]
    kind: str  # classes | domain | base ('' for a pipeline-trained version)
    task: str
    parent: str

    def text(self) -> str:
        """``v2 + septoria_leaf_spot``, ``v1 base``."""
        if not self.parent:
            return f"v{self.version} base"
        return (
            f"v{self.version} + {self.task.split(':')[0] if self.kind == 'domain' else self.task}"
        )


def links(registry: Registry, name: str) -> dict[str, Link]:
    """Every version of `name` as a `Link`, by version number."""
    out = {}
    for number in registry.versions(name):
        found = registry.resolve(name, number)
        out[number] = Link(
            version=found.version,
            aliases=found.aliases,
            kind=found.tags.get(KIND_TAG, ""),
            task=found.tags.get(TASK_TAG, ""),
            parent=found.tags.get(PARENT_TAG, ""),
        )
    return out


def chain(found: dict[str, Link], version: str) -> list[Link]:
    """The links from the chain's base to `version`, following ``parent_version`` tags."""
    out: list[Link] = []
    seen: set[str] = set()
    current: str | None = version
    while current and current in found and current not in seen:
        seen.add(current)
        out.append(found[current])
        current = found[current].parent or None
    return out[::-1]


def chain_text(links_: list[Link]) -> str:
    """``v1 base -> v2 + septoria_leaf_spot -> v3 + field``."""
    return " -> ".join(link.text() for link in links_)
