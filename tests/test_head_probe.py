"""Phase 1 starts its head as a linear probe on the frozen features (LP-FT): the head gives
the class probabilities of scikit-learn's logistic regression, C picked on validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aads.adapters.phases.common import PROBE_C, AdapterTrainingError, start_head_from_probe


class Features(nn.Module):
    """Pixels are already features here: the probe sees exactly what it is given."""

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels * 3.0 + 5.0  # an offset and a scale the head must fold in


def loader(x: np.ndarray, y: np.ndarray) -> DataLoader:
    data = TensorDataset(torch.tensor(x), torch.tensor(y), torch.arange(len(y)))
    return DataLoader(data, batch_size=7)


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.slow
def test_the_head_gives_the_probabilities_of_the_probe(classes):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (classes, 6))
    y = np.repeat(np.arange(classes), 15)
    x = (centres[y] + rng.normal(0, 1.5, (len(y), 6))).astype(np.float32)
    head = nn.Linear(6, classes)
    with torch.no_grad():
        val_accuracy = start_head_from_probe(
            Features(), head, loader(x, y), loader(x, y), torch.device("cpu")
        )
        ours = head(torch.tensor(x * 3.0 + 5.0)).softmax(-1).double().numpy()
    z = StandardScaler().fit_transform(x * 3.0 + 5.0)
    probes = {c: LogisticRegression(C=c, max_iter=5000).fit(z, y) for c in PROBE_C}
    scores = {c: (p.predict(z) == y).mean() for c, p in probes.items()}
    picked = max(PROBE_C, key=lambda c: (scores[c], -c))  # same rule: ties to smaller C
    assert val_accuracy == pytest.approx(scores[picked])
    np.testing.assert_allclose(ours, probes[picked].predict_proba(z), atol=1e-4)


def test_a_class_missing_from_the_training_images_is_refused():
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    y = np.zeros(10, dtype=np.int64)
    with pytest.raises(AdapterTrainingError, match="all 3 classes"), torch.no_grad():
        start_head_from_probe(
            Features(), nn.Linear(4, 3), loader(x, y), loader(x, y), torch.device("cpu")
        )
