"""Every continual method has the same three verbs, and one driver runs any of them: a method
written here in a few lines (a head-only linear probe) trains through the code the phases use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import aads.config
from aads.adapters.classifier import AdapterClassifier
from aads.adapters.conec.config import CONECSettings
from aads.adapters.conec.model import ConecHeads, ConecLoRA, apply_conec
from aads.adapters.dora.config import DoRASettings
from aads.adapters.method import ContinualMethod, TaskSetup, train_task
from aads.adapters.sd_lora.config import SDLoRASettings
from aads.adapters.sd_lora.model import SDLoRA, apply_sd_lora
from aads.backbone import Backbone, load_backbone, resolve_lora_targets
from aads.config import BackboneSettings, TrainingSettings

ROOT = Path(__file__).resolve().parents[1]
TRAINING = TrainingSettings(epochs=8, batch_size=8, lr=0.05, early_stopping_patience=None)


class LinearProbe:
    """A fourth method: each task trains the head alone on the frozen backbone."""

    def __init__(self, head: nn.Linear) -> None:
        self.head = head

    def start_task(self, task: int) -> None:
        self.head.requires_grad_(True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def finish_task(self) -> dict[str, float]:
        self.head.requires_grad_(False)
        return {"head_norm": float(self.head.weight.norm())}


def colour_images(n: int = 24) -> TensorDataset:
    """Class 0 reddish, class 1 greenish noise: easy for any frozen feature extractor."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    pixels = torch.rand(n, 3, 32, 32, generator=generator) * 0.5
    pixels[labels == 0, 0] += 1.0
    pixels[labels == 1, 1] += 1.0
    return TensorDataset(pixels, labels, torch.arange(n))


def cross_entropy(model: nn.Module, batch: tuple) -> torch.Tensor:
    pixels, labels, _ = batch
    return nn.functional.cross_entropy(model(pixels), labels)


def accuracy(model: nn.Module, data: TensorDataset) -> float:
    pixels, labels, _ = data.tensors
    with torch.no_grad():
        return float((model.eval()(pixels).argmax(1) == labels).float().mean())


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return load_backbone(BackboneSettings(source="random:tiny", image_size=32))


def test_a_head_only_method_trains_through_the_phases_driver(tiny):
    backbone = tiny.model.requires_grad_(False)
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    head = nn.Linear(tiny.feature_dim, 2)
    nn.init.zeros_(head.weight)  # no preference before training: accuracy 0.5
    network = AdapterClassifier(backbone, head, tiny.pooling, tiny.prefix_tokens)
    data = colour_images()
    probe = LinearProbe(head)
    assert isinstance(probe, ContinualMethod)
    before = accuracy(network, data)

    outcome = train_task(
        probe,
        0,
        lambda: TaskSetup(
            network=network,
            train_loader=DataLoader(data, batch_size=8, shuffle=False),
            loss_fn=cross_entropy,
            monitor=None,
        ),
        settings=TRAINING,
    )

    assert before == 0.5 and accuracy(network, data) == 1.0
    assert outcome.report == {"head_norm": pytest.approx(float(head.weight.norm()))}
    assert len(outcome.fit.history) == TRAINING.epochs
    assert all(torch.equal(v, frozen[k]) for k, v in backbone.state_dict().items())
    assert not any(p.requires_grad for p in head.parameters()), "finish_task ran after training"


class Recording:
    """Records the order of the driver's calls and the seed each task started under."""

    def __init__(self, parameter: nn.Parameter) -> None:
        self.parameter, self.calls = parameter, []

    def start_task(self, task: int) -> None:
        self.calls.append(("start", task, torch.initial_seed()))

    def trainable_parameters(self) -> list[nn.Parameter]:
        self.calls.append(("parameters",))
        return [self.parameter]

    def finish_task(self) -> dict[str, float]:
        self.calls.append(("finish",))
        return {}


def test_the_driver_seeds_starts_sets_up_trains_and_finishes_in_that_order():
    own, extra = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    method = Recording(own)
    settings = TrainingSettings(seed=40, epochs=1, batch_size=2, early_stopping_patience=None)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.own, self.extra = own, extra

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * (self.own + self.extra)

    def setup() -> TaskSetup:
        method.calls.append(("setup",))
        return TaskSetup(
            network=Net(),
            train_loader=[torch.ones(2, 2)],
            loss_fn=lambda m, x: (m(x) - 1).square().mean(),
            monitor=None,
            extra_parameters=[extra],
        )

    outcome = train_task(method, 3, setup, settings=settings)

    assert [c[0] for c in method.calls] == ["start", "setup", "parameters", "finish"]
    assert method.calls[0][1:] == (3, 40 + 3)
    assert own.abs().sum() > 0 and extra.abs().sum() > 0, "both the method's and the extra train"
    assert outcome.report == {} and outcome.seconds > 0


def test_sd_lora_and_conec_lora_have_the_same_verbs(tiny):
    sd_model = load_backbone(BackboneSettings(source="random:tiny", image_size=32)).model
    apply_sd_lora(sd_model, resolve_lora_targets(sd_model, [0, 1], ["q_proj", "v_proj"]))
    conec_model = load_backbone(BackboneSettings(source="random:tiny", image_size=32)).model
    state = apply_conec(conec_model, CONECSettings(rank=2))
    methods = [
        SDLoRA(sd_model, SDLoRASettings(rank=2)),
        ConecLoRA(conec_model, state, ConecHeads(nn.Linear(tiny.feature_dim, 2))),
    ]
    for method in methods:
        assert isinstance(method, ContinualMethod)
        method.start_task(1)
        trainable = method.trainable_parameters()
        assert trainable and all(p.requires_grad for p in trainable)
        assert method.finish_task()["rank"] == 2.0


def test_each_method_s_settings_live_in_its_folder_and_the_spec_re_exports_them():
    assert aads.config.DoRASettings is DoRASettings
    assert aads.config.SDLoRASettings is SDLoRASettings
    assert aads.config.CONECSettings is CONECSettings
    assert aads.config.AdapterSettings.model_fields["conec"].annotation is CONECSettings


def test_a_spec_loads_without_importing_torch():
    probe = (
        "import sys, aads.config; "
        "aads.config.load_config('config/demo.yaml'); "
        "print(sorted(m for m in ('torch', 'peft', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
