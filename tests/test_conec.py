"""CONEC-LoRA specifications: block split, exact base domain, frozen domain sets, per-sample
routing, domain selectors, distillation and the state file, on a 4-block random DINOv3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.covariance import LedoitWolf
from torch import nn
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from aads.adapters.conec.layer import ConecError, DomainLoRALinear, DomainRouting, SharedLoRALinear
from aads.adapters.conec.model import (
    ConecHeads,
    ConecLoRA,
    ConecState,
    apply_conec,
    boundary_features,
    conec_logits,
    conec_state_dict,
    distillation_loss,
    load_conec_state_dict,
    snapshot_shared,
)
from aads.adapters.conec.selector import (
    LinearDomainSelector,
    MahalanobisDomainSelector,
    unit_features,
)
from aads.config import CONECSettings

WIDTH, CLASSES = 64, 3
SETTINGS = CONECSettings()


def vit(depth: int = 4, seed: int = 0) -> DINOv3ViTModel:
    config = DINOv3ViTConfig(
        hidden_size=WIDTH,
        intermediate_size=128,
        num_hidden_layers=depth,
        num_attention_heads=2,
        num_register_tokens=4,
        image_size=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DINOv3ViTModel(config).eval()


def pixels(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def randomise(params: list[torch.Tensor], seed: int, scale: float = 0.3) -> None:
    """Give LoRA pairs and heads non-trivial values, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=generator) * scale)


def conec_with_domains(
    domains: int, seed: int = 0, settings: CONECSettings = SETTINGS
) -> tuple[DINOv3ViTModel, ConecState, ConecHeads]:
    """A model with `domains` late sets (0 included) and heads, all with random values."""
    model = vit(seed=seed)
    state = apply_conec(model, settings)
    heads = ConecHeads(nn.Linear(2 * WIDTH, CLASSES))
    method = ConecLoRA(model, state, heads)
    for domain in range(1, domains):
        method.start_task(domain)
        method.finish_task()
    late = [t for layer in state.late.values() for t in layer.domains.parameters()]
    shared = [t for layer in state.shared.values() for t in layer.lora.parameters()]
    randomise(late + shared + list(heads.parameters()), seed=seed + 100)
    return model, state, heads


def gaussian_domains(
    domains: int, per_domain: int, dim: int = 16, draw: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples of `domains` fixed Gaussians (same means for every `draw`)."""
    means = torch.randn(domains, dim, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(domains).repeat_interleave(per_domain)
    noise = torch.randn(len(ids), dim, generator=torch.Generator().manual_seed(1 + draw))
    return means[ids] + 0.2 * noise, ids


# --------------------------------------------------------------------------- wiring


@pytest.mark.parametrize("depth", [2, 4])
def test_first_half_of_the_blocks_is_shared_and_only_configured_modules_are_wrapped(
    depth: int,
) -> None:
    model = vit(depth)
    state = apply_conec(model, SETTINGS)

    assert state.shared_blocks == list(range(depth // 2))
    assert state.late_blocks == list(range(depth // 2, depth))
    for i, block in enumerate(model.model.layer):
        wrapper = SharedLoRALinear if i < depth // 2 else DomainLoRALinear
        assert isinstance(block.attention.q_proj, wrapper)
        assert isinstance(block.attention.v_proj, wrapper)
        for plain in (block.attention.k_proj, block.attention.o_proj, block.mlp.up_proj):
            assert type(plain) is nn.Linear
    assert sorted(state.shared) == sorted(
        f"model.layer.{i}.attention.{m}" for i in range(depth // 2) for m in ("q_proj", "v_proj")
    )


def test_shared_blocks_must_precede_late_blocks() -> None:
    with pytest.raises(ConecError, match="shared blocks before late blocks"):
        apply_conec(vit(), CONECSettings(shared_blocks=[0, 2]))


def test_a_task_adds_one_late_set_and_head_and_trains_only_the_newest() -> None:
    model, state, heads = conec_with_domains(2)
    method = ConecLoRA(model, state, heads)

    method.start_task(2)

    assert (state.num_domains, heads.num_domains, state.domain) == (3, 3, 2)
    expected = [
        *(p for layer in state.shared.values() for p in (layer.lora.A, layer.lora.B)),
        *(p for layer in state.late.values() for p in (layer.pair(2).A, layer.pair(2).B)),
        *heads.heads[2].parameters(),
    ]
    assert [id(p) for p in method.trainable_parameters()] == [id(p) for p in expected]
    assert not any(p.requires_grad for p in heads.heads[1].parameters())
    assert method.finish_task() == {"rank": float(SETTINGS.rank)} and method.teacher is None


def test_domains_are_learned_in_order() -> None:
    model, state, heads = conec_with_domains(2)
    with pytest.raises(ConecError, match="the next CONEC domain is 2, not 3"):
        ConecLoRA(model, state, heads).start_task(3)
    assert state.num_domains == 2


def test_domain_zero_reproduces_the_base_model_exactly() -> None:
    batch = pixels(4)
    expected = vit()(pixel_values=batch).last_hidden_state
    model = vit()
    state = apply_conec(model, SETTINGS)
    ConecLoRA(model, state, ConecHeads(nn.Linear(2 * WIDTH, CLASSES))).start_task(1)
    randomise([t for layer in state.late.values() for t in layer.domains.parameters()], seed=3)

    state.use_domain(0)
    got = model(pixel_values=batch).last_hidden_state

    assert torch.equal(got, expected)


def test_training_a_new_domain_leaves_earlier_domain_sets_bit_identical() -> None:
    model, state, heads = conec_with_domains(2)
    batch, labels = pixels(4), torch.tensor([0, 1, 2, 0])
    earlier = ("late.1.", "heads.0.", "heads.1.")
    frozen = {k: v for k, v in conec_state_dict(state, heads).items() if k.startswith(earlier)}
    shared_before = snapshot_shared(state)

    method = ConecLoRA(model, state, heads)
    method.start_task(2)
    optimiser = torch.optim.AdamW(method.trainable_parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        loss = nn.functional.cross_entropy(conec_logits(model, state, heads, batch), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    after = conec_state_dict(state, heads)
    assert len(frozen) == 4 * 3 + 4  # 4 late modules x (A, B, scaling) + 2 heads x 2
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert all(not torch.equal(v, shared_before[k]) for k, v in snapshot_shared(state).items()), (
        "every shared LoRA tensor keeps training"
    )
    newest = [v for k, v in after.items() if k.startswith("late.2.") and k.endswith(".B")]
    assert newest and all(v.abs().sum() > 0 for v in newest)


def test_a_mixed_domain_batch_equals_each_domain_run_separately() -> None:
    model, state, heads = conec_with_domains(3)
    batch, ids = pixels(6), torch.tensor([0, 2, 1, 2, 0, 1])

    state.use_domains(ids)
    mixed = conec_logits(model, state, heads, batch)

    for domain in range(3):
        rows = ids == domain
        state.use_domain(domain)
        alone = conec_logits(model, state, heads, batch[rows])
        torch.testing.assert_close(mixed[rows], alone, rtol=1e-5, atol=1e-5)
    state.use_domain(0)
    assert not torch.allclose(mixed[ids > 0], conec_logits(model, state, heads, batch)[ids > 0])


def test_merged_layers_compute_the_same_function() -> None:
    torch.manual_seed(0)
    base, x = nn.Linear(8, 5), torch.randn(3, 7, 8)
    shared = SharedLoRALinear(nn.Linear(8, 5), rank=2, alpha=4.0)
    routing = DomainRouting()
    late = DomainLoRALinear(base, routing)
    late.add_domain(rank=2, alpha=4.0)
    randomise([shared.lora.B, late.domains["1"].B], seed=0)

    routing.route_all(1, batch=3, device="cpu")
    torch.testing.assert_close(late.merged(1)(x), late(x))
    torch.testing.assert_close(shared.merged()(x), shared(x))
    assert torch.equal(late.merged(0).weight, base.weight)


# --------------------------------------------------------------------------- selector


def test_mahalanobis_scores_equal_a_direct_numpy_computation() -> None:
    features, ids = gaussian_domains(3, 20)
    selector = MahalanobisDomainSelector().fit(features, ids)
    queries = torch.randn(5, 16, generator=torch.Generator().manual_seed(9))

    x = queries.double().numpy()
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    precision, means = selector.precision_.numpy(), selector.means_.numpy()
    expected = np.array([[np.sqrt((q - m) @ precision @ (q - m)) for m in means] for q in x])

    np.testing.assert_allclose(selector.scores(queries).numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("selector_class", [MahalanobisDomainSelector, LinearDomainSelector])
def test_selectors_pick_the_right_domain_of_separated_gaussians(selector_class: type) -> None:
    train, train_ids = gaussian_domains(4, 50)
    test, test_ids = gaussian_domains(4, 50, draw=1)

    predicted = selector_class().fit(train, train_ids).predict(test)

    assert (predicted == test_ids).float().mean() > 0.95


def test_adding_domains_one_by_one_equals_fitting_them_together() -> None:
    features, ids = gaussian_domains(3, 30)
    together = MahalanobisDomainSelector().fit(features, ids)
    incremental = MahalanobisDomainSelector()
    for domain in range(3):
        assert incremental.add_domain(features[ids == domain]) == domain

    torch.testing.assert_close(incremental.means_, together.means_, rtol=0, atol=1e-12)
    # Exact in theory too: the Ledoit-Wolf statistics are kept, not re-estimated.
    torch.testing.assert_close(incremental.precision_, together.precision_, rtol=1e-9, atol=1e-9)
    assert incremental.shrinkage_ == pytest.approx(together.shrinkage_, abs=1e-12)


def test_shared_covariance_is_sklearn_ledoit_wolf_on_within_domain_residuals() -> None:
    features, ids = gaussian_domains(3, 12, dim=24)  # fewer samples than dims: real shrinkage
    selector = MahalanobisDomainSelector().fit(features, ids)

    x = unit_features(features)
    residuals = x - selector.means_[ids]
    reference = LedoitWolf().fit(residuals.numpy())
    covariance, shrinkage = selector.stats.covariance()

    assert shrinkage == pytest.approx(reference.shrinkage_, rel=1e-9)
    np.testing.assert_allclose(covariance.numpy(), reference.covariance_, rtol=1e-9, atol=1e-12)


def test_linear_selector_learns_a_new_domain_without_old_features() -> None:
    features, ids = gaussian_domains(3, 50)
    selector = LinearDomainSelector().fit(features[ids < 2], ids[ids < 2])

    assert selector.add_domain(features[ids == 2]) == 2
    test, test_ids = gaussian_domains(3, 50, draw=1)
    assert (selector.predict(test) == test_ids).float().mean() > 0.95


# --------------------------------------------------------------------------- distillation


def test_distillation_loss_is_zero_when_the_student_is_the_teacher() -> None:
    model, state, heads = conec_with_domains(2)
    batch = pixels(4)
    state.use_domain(1)

    student = conec_logits(model, state, heads, batch)
    loss = distillation_loss(model, state, batch, student, snapshot_shared(state), 1, heads, 2.0)

    assert loss.item() == pytest.approx(0.0, abs=1e-7)


def test_distillation_loss_is_positive_and_trains_the_shared_loras_once_they_drift() -> None:
    model, state, heads = conec_with_domains(2)
    batch = pixels(4)
    method = ConecLoRA(model, state, heads)
    method.start_task(2)  # the teacher: domain 1's network as it was
    shared = [t for layer in state.shared.values() for t in (layer.lora.A, layer.lora.B)]
    randomise(shared, seed=7)

    student = conec_logits(model, state, heads, batch)
    loss = method.distillation_loss(batch, student)
    loss.backward()

    assert method.teacher_domain == 1
    assert loss.item() > 1e-4
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in shared)
    assert state.mode == "fixed" and state.domain == 2, "routing restored after the teacher"


# --------------------------------------------------------------------------- state file


def test_state_file_round_trip_reproduces_outputs_and_selector_routing(tmp_path: Path) -> None:
    model, state, heads = conec_with_domains(3)
    base = pixels(8, seed=2)
    domain_images = [base, base * 0.2, base + 1.5]  # lab, low light, washed out
    features = [boundary_features(model, state, images) for images in domain_images]
    state.selector.fit(torch.cat(features), torch.arange(3).repeat_interleave(8))
    save_file(conec_state_dict(state, heads), tmp_path / "conec.safetensors")

    restored_model = vit()
    restored = apply_conec(restored_model, SETTINGS)
    restored_heads = ConecHeads(nn.Linear(2 * WIDTH, CLASSES))
    load_conec_state_dict(restored, load_file(tmp_path / "conec.safetensors"), restored_heads)

    mixed = torch.cat([images[:3] for images in domain_images])
    for s in (state, restored):
        s.use_selector()
    expected = conec_logits(model, state, heads, mixed)
    got = conec_logits(restored_model, restored, restored_heads, mixed)
    assert torch.equal(restored.routing.domain_ids, state.routing.domain_ids)
    assert torch.equal(restored.routing.domain_ids, torch.arange(3).repeat_interleave(3))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_loading_a_file_with_missing_tensors_names_them() -> None:
    _, state, heads = conec_with_domains(2)
    tensors = conec_state_dict(state, heads)
    del tensors["shared.model.layer.0.attention.q_proj.B"]

    fresh = apply_conec(vit(), SETTINGS)
    with pytest.raises(ConecError, match=r"missing keys \['shared\.model\.layer\.0\.attention"):
        load_conec_state_dict(fresh, tensors, ConecHeads(nn.Linear(2 * WIDTH, CLASSES)))
