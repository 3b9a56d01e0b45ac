"""Classifier alignment from class statistics: the rehearsal-free fix for recency bias.

A class-incremental task trains new head rows on new images only, so the new classes' logits
end up larger than the old ones on every image, old ones included (measured on the demo: old
classes 0.58 accurate among themselves, 0.0 once the new logits join). Following SLCA (Zhang
et al., ICCV 2023), each class keeps only sufficient statistics of its features (mean, and a
shared Ledoit-Wolf covariance: `aads.gaussians`), never images; after a task the whole head is
re-fitted on balanced draws from every seen class's Gaussian. SD-LoRA keeps old features
nearly fixed, which is what makes old statistics still valid after later tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from aads.gaussians import SharedCovarianceGaussians


@torch.no_grad()
def add_class_statistics(
    stats: SharedCovarianceGaussians,
    network: nn.Module,
    loader: torch.utils.data.DataLoader,
    class_indices: Sequence[int],
    device: torch.device,
) -> None:
    """Append the statistics of `class_indices` (in that order) from `loader`'s images.

    The network's `features` (pooled backbone output, what the head reads) are computed in
    eval mode; group g of `stats` must be class g, so classes are added in head order.
    """
    if stats.num_groups != class_indices[0]:
        raise ValueError(
            f"statistics hold {stats.num_groups} classes; the next class to add must be that "
            f"index, not {class_indices[0]}"
        )
    was_training = network.training
    network.eval()
    features, labels = [], []
    for pixels, target, _ in loader:
        features.append(network.features(pixels.to(device)).double().cpu())
        labels.append(target)
    network.train(was_training)
    x, y = torch.cat(features), torch.cat(labels)
    for c in class_indices:
        rows = x[y == c]
        if not len(rows):
            raise ValueError(f"class index {c} has no images to take statistics from")
        stats.add(rows)


def align_head(
    head: nn.Linear,
    stats: SharedCovarianceGaussians,
    *,
    samples_per_class: int = 256,
    epochs: int = 30,
    lr: float = 1e-2,
    seed: int = 0,
) -> float:
    """Re-fit `head` (all rows) on balanced Gaussian draws of every class; returns the final
    loss. Starts from the current weights, so a well-fitted head barely moves."""
    if stats.num_groups != head.out_features:
        raise ValueError(
            f"statistics for {stats.num_groups} classes, head has {head.out_features} outputs"
        )
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat([stats.sample(c, samples_per_class, gen) for c in range(stats.num_groups)])
    y = torch.arange(stats.num_groups).repeat_interleave(samples_per_class)
    x = x.to(head.weight.device, head.weight.dtype)
    y = y.to(head.weight.device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    loss = torch.tensor(float("nan"))
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=gen).to(y.device)
            for batch in order.split(256):
                loss = nn.functional.cross_entropy(head(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return float(loss.detach())
