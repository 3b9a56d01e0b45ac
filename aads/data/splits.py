"""Stratified train/val/test splits and the phase each image belongs to.

Splits are stratified by (crop, class, domain) and depend only on the seed and the images'
hashes, never on file order or paths, so renaming or re-ingesting a dataset keeps every image
in the same split: a test image never leaks into training across re-runs.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from aads.config import BASE_DOMAIN, PlatformConfig, SplitFractions


def _group_seed(seed: int, key: tuple[str, ...]) -> int:
    h = hashlib.sha256(("\x1f".join((str(seed), *key))).encode()).digest()
    return int.from_bytes(h[:8], "little")


def split_counts(n: int, fractions: SplitFractions) -> tuple[int, int, int]:
    """(train, val, test) sizes: at least one of each non-zero split once a group has 3+."""
    n_val = round(n * fractions.val)
    n_test = round(n * fractions.test)
    if n >= 3:
        n_val = max(n_val, 1 if fractions.val > 0 else 0)
        n_test = max(n_test, 1 if fractions.test > 0 else 0)
    while n - n_val - n_test < 1 and (n_val or n_test):
        if n_test >= n_val and n_test:
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def assign_splits(
    items: Iterable[tuple[str, tuple[str, ...]]], fractions: SplitFractions, seed: int
) -> dict[str, str]:
    """Map each item id (its sha256) to a split, stratified by its group key."""
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for item_id, key in items:
        groups[key].append(item_id)
    out: dict[str, str] = {}
    for key, ids in groups.items():
        ids = sorted(ids)
        order = np.random.default_rng(_group_seed(seed, key)).permutation(len(ids))
        n_train, n_val, _ = split_counts(len(ids), fractions)
        for rank, idx in enumerate(order):
            out[ids[idx]] = (
                "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
            )
    return out


def assign_phase(
    config: PlatformConfig | None, crop: str, label: str, domain: str
) -> tuple[str, str]:
    """(phase, task) for one image under the config; ("", "") when the config does not use it.

    Base-domain images of phase-1 classes train phase 1; of phase-2 batch i, phase 2 task i.
    Images in one of the crop's phase-3 domains train phase 3 for that domain. Hold-out
    classes are near-OOD evaluation data in every domain.
    """
    if config is None or crop not in config.crop_names:
        return "", ""
    spec = config.crop(crop)
    if label in spec.ood_holdout:
        return "ood", ""
    if label not in spec.known_classes:
        return "", ""
    if domain == BASE_DOMAIN:
        if label in spec.phase1_classes:
            return "1", ""
        for i, batch in enumerate(spec.phase2_batches):
            if label in batch:
                return "2", str(i)
    if domain in spec.phase3_domains:
        return "3", domain
    return "", ""
