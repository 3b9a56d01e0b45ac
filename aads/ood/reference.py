"""A bounded sample of the calibration images' features, kept in the package for drift checks.

Drift monitoring (`aads.drift`) compares the features of recent field images with those of the
images the OOD check was calibrated on. The Gaussian statistics in ``calibration.safetensors``
are not enough for a two-sample test, and the images themselves are not in the package (and
must not be: no data in a model artifact), so calibration stores up to `MAX_ROWS` feature rows
of its held-out (validation-split) images, float32, chosen by a seeded draw:
``ood/reference_features.safetensors`` (checksummed with the rest of the package).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from aads.atomic import atomic_write
from aads.ood.mahalanobis import OODError

REFERENCE_FILE = "reference_features.safetensors"
MAX_ROWS = 512
SEED = 0


def reference_sample(features: np.ndarray, limit: int = MAX_ROWS, seed: int = SEED) -> np.ndarray:
    """At most `limit` rows of `features` (float32), drawn without replacement, in row order."""
    features = np.asarray(features)
    if len(features) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(len(features), limit, replace=False))
        features = features[rows]
    return np.ascontiguousarray(features, dtype=np.float32)


def save_reference_features(ood_dir: Path, features: np.ndarray, total: int) -> Path:
    """Write the sample; `total` is how many calibration rows it was drawn from."""
    path = Path(ood_dir) / REFERENCE_FILE
    metadata = {"source": "calibration split (held-out in-distribution)", "rows_total": str(total)}
    sample = np.ascontiguousarray(features, dtype=np.float32)
    atomic_write(path, lambda tmp: save_file({"features": sample}, str(tmp), metadata=metadata))
    return path


def load_reference_features(ood_dir: Path) -> np.ndarray | None:
    """The stored sample (N, F) float32, or None for packages calibrated before it existed."""
    path = Path(ood_dir) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        features = load_file(str(path))["features"]
    except (SafetensorError, KeyError, OSError) as err:
        raise OODError(f"{path}: not a reference feature file ({err})") from None
    if features.ndim != 2 or not len(features):
        raise OODError(f"{path}: expected (rows, features), got shape {features.shape}")
    return features
