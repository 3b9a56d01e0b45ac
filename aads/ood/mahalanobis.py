"""Class-conditional Gaussian (Mahalanobis) scores for OOD detection, scikit-learn style.

`MahalanobisEstimator.fit(X, y)` learns class means and a covariance; `score_samples(X)`
returns squared Mahalanobis distances of N samples to C classes, (N, C), in float64. The
Gaussian maths is `aads.gaussians` (shared with classifier alignment and CONEC's domain
selector): the precision is factored once (P = L L^T) at fit or load time, so scoring is one or
two matrix products with no loop over samples or classes (per-class covariances loop over
memory-bounded chunks of samples only). Arrays in and out are numpy; the maths runs on torch
views of them (no copies).

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
import torch

from aads.errors import BadInput
from aads.gaussians import SharedCovarianceGaussians, precision_factor, squared_distances

Covariance = Literal["shared_ledoit_wolf", "shared_empirical", "diagonal", "per_class"]
FeatureSpace = Literal["raw", "l2"]
COVARIANCES: tuple[str, ...] = get_args(Covariance)
FEATURE_SPACES: tuple[str, ...] = get_args(FeatureSpace)
MIN_PER_CLASS_SAMPLES = 2
DIAGONAL_FLOOR = 1e-6


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
        xt, yt = _tensor(x), torch.from_numpy(y.astype(np.int64))
        stats = SharedCovarianceGaussians.from_groups(xt, yt)
        if not bool((stats.scatter.diagonal() > 0).any()):
            raise OODError(
                "features have no within-class variance (constant features, or one sample per "
                "class): a covariance cannot be estimated"
            )
        self.n_features_in_ = x.shape[1]
        self.counts_ = counts
        self.means_ = stats.means().numpy()
        self.fallback_classes_: list[int] = []
        self.shrinkage_ = 0.0
        if self.covariance == "per_class":
            shared, self.shrinkage_ = _precision("shared_ledoit_wolf", stats)
            precisions = []
            for c in range(classes):
                if counts[c] < MIN_PER_CLASS_SAMPLES:
                    self.fallback_classes_.append(c)
                    precisions.append(shared)
                else:
                    precisions.append(own_class_precision(xt[yt == c]))
            self.precision_ = np.stack(precisions)
        else:
            self.precision_, self.shrinkage_ = _precision(self.covariance, stats)
        if self.relative:
            background = _one_group(xt)
            self.background_mean_ = background.means()[0].numpy()
            kind = "shared_ledoit_wolf" if self.covariance == "per_class" else self.covariance
            self.background_precision_, _ = _precision(kind, background)
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
        x = _tensor(self.transform(features))
        d = squared_distances(x, _tensor(self.means_), self._factor_)
        if self.relative:
            background = _tensor(self.background_mean_[None])
            d = d - squared_distances(x, background, self._background_factor_)
        return d.numpy()

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
        self._factor_ = precision_factor(_tensor(self.precision_))
        if self.relative:
            self._background_factor_ = precision_factor(_tensor(self.background_precision_))

    def _check_fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise OODError("the OOD estimator is not fitted: call fit() or load a calibration")


def _precision(kind: str, stats: SharedCovarianceGaussians) -> tuple[np.ndarray, float]:
    """(precision, shrinkage) of `stats`' shared covariance; diagonal returns the (F,) inverse
    variances, floored at `DIAGONAL_FLOOR` of their mean."""
    if kind == "diagonal":
        var = stats.variances().numpy()
        return 1.0 / np.maximum(var, DIAGONAL_FLOOR * max(float(var.mean()), 1e-300)), 0.0
    precision, shrinkage = stats.precision(
        "empirical" if kind == "shared_empirical" else "ledoit_wolf"
    )
    return precision.numpy(), shrinkage


def own_class_precision(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """One class's Ledoit-Wolf precision from its own (transformed) features: what
    ``per_class`` fits for a class with `MIN_PER_CLASS_SAMPLES` or more, and what a carried
    calibration fits for a class a continuation added."""
    return _precision("per_class", _one_group(torch.as_tensor(x, dtype=torch.float64)))[0]


def _one_group(x: torch.Tensor) -> SharedCovarianceGaussians:
    """Statistics of all of `x` as one group (a class's own covariance, the background)."""
    return SharedCovarianceGaussians.from_groups(x, torch.zeros(len(x), dtype=torch.long))


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A float64 torch view of `array` (a copy only when it is not contiguous and writable)."""
    return torch.from_numpy(np.require(array, np.float64, ("C", "W")))
