"""Class-conditional Gaussian (Mahalanobis) scores for OOD detection, scikit-learn style.

`MahalanobisEstimator.fit(X, y)` learns class means and a covariance; `score_samples(X)`
returns squared Mahalanobis distances of N samples to C classes, (N, C), in float64. Scoring is
one or two matrix products: the precision is factored once (P = L L^T) at fit or load time, so
d_k(x) = ||L^T x||^2 - 2 (L^T x).(L^T m_k) + ||L^T m_k||^2 with no loop over samples or
classes (per-class covariances loop over memory-bounded chunks of samples only).

Covariance estimators (Lee et al. 2018 use one shared covariance; DESIGN.md section 4):

- ``shared_ledoit_wolf``: one covariance of the pooled within-class residuals with Ledoit-Wolf
  shrinkage (scikit-learn's ``LedoitWolf``): invertible even when width > samples.
- ``shared_empirical``: the same without shrinkage (``EmpiricalCovariance``; its precision is
  a pseudo-inverse, so directions with no variance are ignored, not infinite).
- ``diagonal``: pooled within-class variances only, floored at 1e-6 of their mean.
- ``per_class``: a Ledoit-Wolf covariance per class; a class with fewer than
  `MIN_PER_CLASS_SAMPLES` samples uses the shared Ledoit-Wolf one (listed in
  ``fallback_classes_``).

``feature_space="l2"`` L2-normalises features first (Mahalanobis++, 2025). ``relative=True``
subtracts the distance to one class-agnostic background Gaussian fitted on all samples with the
same estimator (Relative Mahalanobis, Ren et al. 2021).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
from sklearn.covariance import EmpiricalCovariance, LedoitWolf

from aads.errors import BadInput

Covariance = Literal["shared_ledoit_wolf", "shared_empirical", "diagonal", "per_class"]
FeatureSpace = Literal["raw", "l2"]
COVARIANCES: tuple[str, ...] = get_args(Covariance)
FEATURE_SPACES: tuple[str, ...] = get_args(FeatureSpace)
MIN_PER_CLASS_SAMPLES = 2
DIAGONAL_FLOOR = 1e-6
# Peak bytes of the (chunk, C, F) float64 block per-class scoring materialises.
PER_CLASS_CHUNK_BYTES = 64 * 2**20


class OODError(BadInput):
    """Features or calibration data an OOD estimator cannot use; the message says why."""


class MahalanobisEstimator:
    """Class means + covariance; `score_samples` gives squared distances to every class.

    Fitted state lives in attributes ending in ``_`` (scikit-learn's contract) and round-trips
    through `state_dict` / `from_state_dict` exactly.
    """

    def __init__(
        self,
        covariance: Covariance = "shared_ledoit_wolf",
        feature_space: FeatureSpace = "l2",
        relative: bool = False,
    ) -> None:
        if covariance not in COVARIANCES:
            raise OODError(f"covariance must be one of {list(COVARIANCES)}, got {covariance!r}")
        if feature_space not in FEATURE_SPACES:
            raise OODError(
                f"feature_space must be one of {list(FEATURE_SPACES)}, got {feature_space!r}"
            )
        self.covariance = covariance
        self.feature_space = feature_space
        self.relative = relative

    # ------------------------------------------------------------------ fitting

    def fit(self, features: np.ndarray, labels: Sequence[int] | np.ndarray) -> MahalanobisEstimator:
        """Fit on (N, F) features and integer labels 0..C-1; every class needs a sample."""
        x = self.transform(features)
        y = np.asarray(labels)
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise OODError(f"labels must be {len(x)} integers, got shape {y.shape} {y.dtype}")
        if len(x) == 0:
            raise OODError("no calibration features: need at least one sample per class")
        if y.min() < 0:
            raise OODError(f"labels must be class indices >= 0, got {int(y.min())}")
        classes = int(y.max()) + 1
        counts = np.bincount(y, minlength=classes)
        if (counts == 0).any():
            empty = np.flatnonzero(counts == 0).tolist()
            raise OODError(f"every class needs calibration samples; classes {empty} have none")
        means = (np.eye(classes)[y].T @ x) / counts[:, None]
        residuals = x - means[y]
        if not np.any(residuals):
            raise OODError(
                "features have no within-class variance (constant features, or one sample per "
                "class): a covariance cannot be estimated"
            )
        self.n_features_in_ = x.shape[1]
        self.counts_ = counts
        self.means_ = means
        self.fallback_classes_: list[int] = []
        self.shrinkage_ = 0.0
        if self.covariance == "per_class":
            shared, self.shrinkage_ = _precision("shared_ledoit_wolf", residuals)
            precisions = []
            for c in range(classes):
                if counts[c] < MIN_PER_CLASS_SAMPLES:
                    self.fallback_classes_.append(c)
                    precisions.append(shared)
                else:
                    precisions.append(_precision("per_class", x[y == c] - means[c])[0])
            self.precision_ = np.stack(precisions)
        else:
            self.precision_, self.shrinkage_ = _precision(self.covariance, residuals)
        if self.relative:
            self.background_mean_ = x.mean(0)
            kind = "shared_ledoit_wolf" if self.covariance == "per_class" else self.covariance
            self.background_precision_, _ = _precision(kind, x - self.background_mean_)
        self._factor()
        return self

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Features in the estimator's space (float64, L2-normalised for ``l2``), checked."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise OODError(f"features must be a 2-D (samples, width) array, got shape {x.shape}")
        width = getattr(self, "n_features_in_", None)
        if width is not None and x.shape[1] != width:
            raise OODError(
                f"features have width {x.shape[1]} but the OOD calibration was fitted on width "
                f"{width}: another backbone or pooling? Recalibrate for this adapter"
            )
        bad = ~np.isfinite(x).all(1)
        if bad.any():
            raise OODError(
                f"{int(bad.sum())} of {len(x)} feature vectors contain NaN or inf (first at row "
                f"{int(np.flatnonzero(bad)[0])}): the backbone produced non-finite features"
            )
        if self.feature_space == "l2":
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            if (norms == 0).any():
                raise OODError("a zero feature vector cannot be L2-normalised (feature_space=l2)")
            x = x / norms
        return x

    # ------------------------------------------------------------------ scoring

    def score_samples(self, features: np.ndarray) -> np.ndarray:
        """(N, C) squared Mahalanobis distances, minus the background's when ``relative``."""
        self._check_fitted()
        x = self.transform(features)
        if self.precision_.ndim == 3:
            d = _per_class_distances(x, self.means_, self._class_factors)
        else:
            d = _shared_distances(x, self.means_, self._shared_factor)
        if self.relative:
            d = d - _shared_distances(x, self.background_mean_[None], self._background_factor)
        return d

    def min_distance(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(nearest class, its score) per sample: the OOD score is the smallest class score."""
        d = self.score_samples(features)
        nearest = d.argmin(1)
        return nearest, d[np.arange(len(d)), nearest]

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, np.ndarray]:
        self._check_fitted()
        state = {
            "means": self.means_,
            "precision": self.precision_,
            "counts": self.counts_.astype(np.int64),
            "fallback_classes": np.asarray(self.fallback_classes_, dtype=np.int64),
            "shrinkage": np.asarray([self.shrinkage_], dtype=np.float64),
        }
        if self.relative:
            state["background_mean"] = self.background_mean_
            state["background_precision"] = self.background_precision_
        return {k: np.ascontiguousarray(v) for k, v in state.items()}

    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, np.ndarray],
        covariance: Covariance,
        feature_space: FeatureSpace,
        relative: bool,
    ) -> MahalanobisEstimator:
        est = cls(covariance, feature_space, relative)
        required = {"means", "precision", "counts", "fallback_classes", "shrinkage"}
        if relative:
            required |= {"background_mean", "background_precision"}
        missing = sorted(required - set(state))
        if missing:
            raise OODError(f"OOD calibration tensors are missing {missing}")
        means, precision = state["means"].astype(np.float64), state["precision"]
        classes, width = means.shape
        expect = (classes, width, width) if covariance == "per_class" else (width, width)
        if covariance == "diagonal":
            expect = (width,)
        if precision.shape != expect or state["counts"].shape != (classes,):
            raise OODError(
                f"OOD calibration tensors are inconsistent: means {means.shape}, precision "
                f"{precision.shape} (expected {expect}), counts {state['counts'].shape}"
            )
        est.n_features_in_ = width
        est.means_ = means
        est.precision_ = precision.astype(np.float64)
        est.counts_ = state["counts"].astype(np.int64)
        est.fallback_classes_ = state["fallback_classes"].astype(int).tolist()
        est.shrinkage_ = float(state["shrinkage"].reshape(-1)[0])
        if relative:
            est.background_mean_ = state["background_mean"].astype(np.float64)
            est.background_precision_ = state["background_precision"].astype(np.float64)
        est._factor()
        return est

    # ------------------------------------------------------------------ internals

    def _factor(self) -> None:
        """Factor the precision(s) once so scoring is matrix products only."""
        if self.precision_.ndim == 3:
            self._class_factors = np.stack([_factor(p) for p in self.precision_])
        else:
            self._shared_factor = _factor(self.precision_)
        if self.relative:
            self._background_factor = _factor(self.background_precision_)

    def _check_fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise OODError("the OOD estimator is not fitted: call fit() or load a calibration")


def _precision(kind: str, residuals: np.ndarray) -> tuple[np.ndarray, float]:
    """(precision, shrinkage) of centred residuals; diagonal returns the (F,) inverse variances."""
    if kind == "diagonal":
        var = residuals.var(0)
        return 1.0 / np.maximum(var, DIAGONAL_FLOOR * max(float(var.mean()), 1e-300)), 0.0
    if kind == "shared_empirical":
        return EmpiricalCovariance(assume_centered=True).fit(residuals).precision_, 0.0
    lw = LedoitWolf(assume_centered=True).fit(residuals)
    return lw.precision_, float(lw.shrinkage_)


def _factor(precision: np.ndarray) -> np.ndarray:
    """L with P = L L^T (diagonal: sqrt of the inverse variances, as a vector)."""
    if precision.ndim == 1:
        return np.sqrt(precision)
    eigenvalues, eigenvectors = np.linalg.eigh((precision + precision.T) / 2)
    return eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))


def _project(x: np.ndarray, factor: np.ndarray) -> np.ndarray:
    return x * factor if factor.ndim == 1 else x @ factor


def _shared_distances(x: np.ndarray, means: np.ndarray, factor: np.ndarray) -> np.ndarray:
    z, mz = _project(x, factor), _project(means, factor)
    d = (z * z).sum(1)[:, None] - 2.0 * (z @ mz.T) + (mz * mz).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _per_class_distances(x: np.ndarray, means: np.ndarray, factors: np.ndarray) -> np.ndarray:
    classes, width, _ = factors.shape
    mz = np.einsum("cf,cfg->cg", means, factors)
    chunk = max(1, PER_CLASS_CHUNK_BYTES // (8 * classes * width))
    out = np.empty((len(x), classes))
    for start in range(0, len(x), chunk):
        z = np.einsum("nf,cfg->ncg", x[start : start + chunk], factors, optimize=True)
        out[start : start + chunk] = ((z - mz[None]) ** 2).sum(-1)
    return out
