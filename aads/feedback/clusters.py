"""Group captured unknowns so a person labels clusters, not one image at a time.

Ward-linkage agglomerative clustering on the adapter's features (in the OOD check's feature
space), with the number of clusters chosen by the silhouette score (scikit-learn) over
``2..max_clusters``. Why this and not k-means or a distance threshold:

- deterministic (no random initialisation): the same captures give the same clusters, so a
  review can be re-run and compared;
- one tree gives every k at once (SciPy's hierarchy, cut at each k), so choosing k costs one
  clustering, not ten;
- Ward merges the pair that grows within-cluster variance least, the Gaussian view the OOD
  check itself takes of a class;
- a distance threshold would depend on the backbone and the feature space (raw or
  L2-normalised), the silhouette does not;
- when no k reaches ``min_silhouette`` the unknowns have no clear groups and are reported as
  one cluster rather than split into invented ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.metrics import silhouette_score

from aads.errors import BadInput

MAX_CLUSTERS = 10
MIN_SILHOUETTE = 0.1


@dataclass(frozen=True)
class Clustering:
    """``labels[i]`` is image i's cluster, numbered by size (0 is the largest)."""

    labels: np.ndarray
    k: int
    silhouettes: dict[int, float]
    reason: str
    centre_distance: np.ndarray  # distance of each image to its cluster's mean: typical first

    def members(self, cluster: int) -> np.ndarray:
        """Indices of the cluster's images, the most typical (closest to its mean) first."""
        idx = np.flatnonzero(self.labels == cluster)
        return idx[np.argsort(self.centre_distance[idx], kind="stable")]


def cluster_features(
    features: np.ndarray,
    *,
    max_clusters: int = MAX_CLUSTERS,
    min_silhouette: float = MIN_SILHOUETTE,
) -> Clustering:
    """Cluster the rows of `features` (N, F); see the module docstring for the method."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or not len(x):
        raise BadInput(f"nothing to cluster: features of shape {x.shape}")
    n = len(x)
    if n < 3:
        return _finish(x, np.zeros(n, dtype=int), {}, f"{n} image(s): one cluster")
    tree = linkage(x, method="ward")
    scores: dict[int, float] = {}
    cuts: dict[int, np.ndarray] = {}
    for k in range(2, min(max_clusters, n - 1) + 1):
        labels = fcluster(tree, k, criterion="maxclust") - 1
        if len(np.unique(labels)) < 2:
            continue
        cuts[k], scores[k] = labels, float(silhouette_score(x, labels))
    if not scores:
        return _finish(x, np.zeros(n, dtype=int), {}, "all images alike: one cluster")
    best = max(scores, key=lambda k: (scores[k], -k))
    if scores[best] < min_silhouette:
        reason = (
            f"best silhouette {scores[best]:.2f} (k={best}) is under {min_silhouette}: no clear "
            "groups, one cluster"
        )
        return _finish(x, np.zeros(n, dtype=int), scores, reason)
    return _finish(x, cuts[best], scores, f"k={best}: the best silhouette ({scores[best]:.2f})")


def _finish(x: np.ndarray, labels: np.ndarray, scores: dict[int, float], reason: str) -> Clustering:
    """Number clusters by size (ties: first image first) and measure distances to centres."""
    ids, first, sizes = np.unique(labels, return_index=True, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-sizes[i], first[i]))
    renumber = {int(ids[i]): new for new, i in enumerate(order)}
    labels = np.asarray([renumber[int(c)] for c in labels])
    centres = np.stack([x[labels == c].mean(0) for c in range(len(ids))])
    distance = np.linalg.norm(x - centres[labels], axis=1)
    return Clustering(labels, len(ids), scores, reason, distance)
