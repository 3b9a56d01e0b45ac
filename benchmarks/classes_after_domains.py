"""Classes after domains, measured: a `classes` child of a package that has learned domains
(learned in the heads, `aads.adapters.phases.heads`) against its parent, per domain, and the
rule for the later domains' new head rows against the alternatives.

    python benchmarks/classes_after_domains.py --parent P --child C --data DIR --crop pepper \
        --new anthracnose --config SPEC [--out benchmarks/results/classes_after_domains.json]

DIR is the synthesiser's layout (``<domain>/<crop>/<part>/<class>/<image>``, e.g. `make demo`'s
data). Per domain the packages know: the images of the parent's classes and of the new class
in that domain, answered as served (the domain selector routes each image; the answer is the
arg-max class, before the OOD check). The child is scored with four rules for a later
domain's new head rows: ``zero`` (what ships: the rows `grow_head` starts from, zero weights
and the old rows' mean bias), ``copy`` (head 0's new rows, their bias offset from the old
rows' mean kept), ``copy_raw`` (head 0's rows and biases as they are) and ``align`` (new rows
fitted on draws of every class's statistics against the domain head's frozen old rows).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from aads.adapters.loading import LoadedAdapter, load_adapter
from aads.adapters.package import CLASS_STATS_FILE, read_tensors
from aads.backbone import preprocess_image
from aads.config import load_config
from aads.gaussians import SharedCovarianceGaussians

RULES = ("zero", "copy", "copy_raw", "align")


def images_by_domain(data: Path, crop: str, classes: list[str]) -> dict[str, dict[str, list]]:
    """{domain: {class: [image paths]}} for `classes` of `crop` in the synthesiser's layout."""
    out: dict[str, dict[str, list]] = {}
    for domain_dir in sorted(p for p in Path(data).iterdir() if p.is_dir()):
        for name in classes:
            found = sorted((domain_dir / crop).glob(f"*/{name}/*.jpg"))
            if found:
                out.setdefault(domain_dir.name, {})[name] = found
    return out


@torch.no_grad()
def answers(adapter: LoadedAdapter, paths: list[Path]) -> tuple[list[int], list[str | None]]:
    """Arg-max class index and the selector's domain per image, as served."""
    size, norm = adapter.backbone.image_size, adapter.backbone.normalization
    picked: list[int] = []
    routed: list[str | None] = []
    for start in range(0, len(paths), 32):
        chunk = paths[start : start + 32]
        pixels = torch.stack([preprocess_image(p, size, norm) for p in chunk])
        picked += adapter.logits(pixels).argmax(-1).tolist()
        routed += adapter.domain_picks(len(chunk))
    return picked, routed


def align_new_rows(
    head: nn.Linear,
    stats: SharedCovarianceGaussians,
    n_old: int,
    *,
    samples_per_class: int = 256,
    epochs: int = 30,
    lr: float = 1e-2,
    seed: int = 0,
) -> float:
    """Fit only `head`'s rows from `n_old` on (its first `n_old` rows frozen) on balanced
    Gaussian draws of every class, as `align_head` fits all of them; returns the final loss.
    For a head whose old rows must not move (a later CONEC domain's: fitted on images the
    task does not have), the new rows learn to compete with those rows as they are."""
    if stats.num_groups != head.out_features or not 0 < n_old < head.out_features:
        raise ValueError(
            f"statistics for {stats.num_groups} classes, head has {head.out_features} outputs, "
            f"{n_old} of them old"
        )
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat([stats.sample(c, samples_per_class, gen) for c in range(stats.num_groups)])
    y = torch.arange(stats.num_groups).repeat_interleave(samples_per_class)
    x = x.to(head.weight.device, head.weight.dtype)
    y = y.to(head.weight.device)
    weight = head.weight[n_old:].detach().clone().requires_grad_(True)
    bias = head.bias[n_old:].detach().clone().requires_grad_(True)
    old_w, old_b = head.weight[:n_old].detach(), head.bias[:n_old].detach()
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    loss = torch.tensor(float("nan"))
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=gen).to(y.device)
            for batch in order.split(256):
                xb = x[batch]
                logits = torch.cat([xb @ old_w.T + old_b, xb @ weight.T + bias], dim=1)
                loss = nn.functional.cross_entropy(logits, y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        head.weight[n_old:] = weight
        head.bias[n_old:] = bias
    return float(loss.detach())


def set_rule(
    child: LoadedAdapter,
    original: list[torch.Tensor],
    n_old: int,
    rule: str,
    stats: SharedCovarianceGaussians,
) -> None:
    """Rewrite every later domain's new head rows by `rule` (`original`: the shipped heads)."""
    heads = child.network.heads.heads
    base = heads[0]
    with torch.no_grad():
        for d in range(1, len(heads)):
            weight, bias = original[2 * d - 2], original[2 * d - 1]
            heads[d].weight.copy_(weight)
            heads[d].bias.copy_(bias)
            if rule.startswith("copy"):
                offset = bias[:n_old].mean() - base.bias[:n_old].mean() if rule == "copy" else 0
                heads[d].weight[n_old:] = base.weight[n_old:]
                heads[d].bias[n_old:] = base.bias[n_old:] + offset
            elif rule == "zero":  # as `later_domain_rows` leaves them
                heads[d].weight[n_old:] = 0
                heads[d].bias[n_old:] = bias[:n_old].mean()
            elif rule == "align":
                align_new_rows(heads[d], stats, n_old)


def score(adapter: LoadedAdapter, images: dict[str, list], names: list[str]) -> dict:
    """Per class: share answered as itself; and where the selector sent the images."""
    out: dict[str, object] = {}
    routes: dict[str, int] = {}
    for name, paths in images.items():
        picked, routed = answers(adapter, paths)
        target = names.index(name) if name in names else -1
        out[name] = round(sum(p == target for p in picked) / len(picked), 4)
        for r in routed:
            routes[str(r)] = routes.get(str(r), 0) + 1
    out["routed"] = routes
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parent", type=Path, required=True)
    parser.add_argument("--child", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--crop", required=True)
    parser.add_argument("--new", required=True, help="the class the child added")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/classes_after_domains.json")
    )
    args = parser.parse_args()
    cfg = load_config(args.config)
    started = time.monotonic()
    parent = load_adapter(args.parent, cfg.storage, device="cpu")
    child = load_adapter(args.child, cfg.storage, device="cpu")
    n_old = len(parent.classes)
    data = images_by_domain(args.data, args.crop, [*parent.classes, args.new])
    heads = child.network.heads.heads
    stats = SharedCovarianceGaussians.from_state_dict(read_tensors(args.child, CLASS_STATS_FILE))
    original = [t.detach().clone() for h in list(heads)[1:] for t in (h.weight, h.bias)]
    result: dict[str, object] = {
        "parent": str(args.parent),
        "child": str(args.child),
        "parent_classes": parent.classes,
        "child_classes": child.classes,
        "domains": child.meta.domains,
        "images": {d: {c: len(p) for c, p in by.items()} for d, by in data.items()},
        "heads_record": child.meta.phases[-1].metrics,
        "per_domain": {},
    }
    for domain, by_class in data.items():
        row: dict[str, object] = {"parent": score(parent, by_class, parent.classes)}
        for rule in RULES:
            set_rule(child, original, n_old, rule, stats)
            row[f"child_{rule}"] = score(child, by_class, child.classes)
        set_rule(child, original, n_old, "zero", stats)
        result["per_domain"][domain] = row  # type: ignore[index]
    result["seconds"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["per_domain"], indent=1))


if __name__ == "__main__":
    main()
