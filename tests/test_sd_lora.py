"""SD-LoRA: normalised low-rank directions with learnable magnitudes, on one layer and wired
into a DINOv3 backbone (task lifecycle, -RR ranks, -KD folding, state dict, merge)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from aads.adapters.sd_lora.layer import SDLoRAError, SDLoRALinear
from aads.adapters.sd_lora.model import (
    SDLoRA,
    apply_sd_lora,
    load_sd_lora_state_dict,
    merge_sd_lora,
    rank_for_task,
    sd_lora_layers,
    sd_lora_state_dict,
)
from aads.backbone import build_random_model, resolve_lora_targets
from aads.config import SDLoRASettings


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def layer_with_pairs(
    ranks: list[int], d_in: int = 12, d_out: int = 10, dtype: torch.dtype = torch.float32
) -> SDLoRALinear:
    gen = seeded()
    base = nn.Linear(d_in, d_out).to(dtype)
    with torch.no_grad():
        base.weight.copy_(torch.randn(d_out, d_in, generator=gen))
        base.bias.copy_(torch.randn(d_out, generator=gen))
    layer = SDLoRALinear(base)
    for rank in ranks:
        layer.add_pair(rank, generator=gen)
    return layer


def set_alphas(layer: SDLoRALinear, values: list[float]) -> None:
    with torch.no_grad():
        layer.alphas.copy_(torch.tensor(values))


def tiny_backbone(
    blocks: list[int] | None = None, modules: tuple[str, ...] = ("q_proj", "v_proj")
) -> tuple[nn.Module, list[str]]:
    """A tiny DINOv3 in eval mode (training mode jitters RoPE coordinates at random)."""
    model = build_random_model("tiny", seed=0).eval()
    targets = resolve_lora_targets(model, blocks or [0, 1], list(modules))
    return model, targets


def as_if_trained(model: nn.Module, seed: int) -> None:
    """Give every open task pair a non-zero B, as training would (open pairs start at B = 0)."""
    gen = seeded(100 + seed)
    with torch.no_grad():
        for layer in sd_lora_layers(model).values():
            if layer.open:
                layer.B[-1].copy_(torch.randn(layer.B[-1].shape, generator=gen))


def start(model: nn.Module, settings: SDLoRASettings, task: int, seed: int | None = None) -> SDLoRA:
    """Start `task` with pairs drawn from a generator seeded `seed` (None: torch's global)."""
    method = SDLoRA(model, settings, None if seed is None else seeded(seed))
    method.start_task(task)
    return method


def run_tasks(model: nn.Module, settings: SDLoRASettings, tasks: int) -> None:
    for t in range(tasks):
        method = start(model, settings, t, seed=t)
        as_if_trained(model, t)
        method.finish_task()


def images(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=seeded(seed))


# ---------------------------------------------------------------------- one layer


def test_output_equals_base_without_pairs_and_with_all_alphas_zero():
    layer = layer_with_pairs([])
    x = torch.randn(4, 12, generator=seeded(1))
    assert torch.equal(layer(x), layer.base_layer(x))
    layer = layer_with_pairs([3, 2])
    set_alphas(layer, [0.0, 0.0])
    torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=0, atol=0)


def test_new_pair_and_every_alpha_train_while_old_pairs_are_frozen():
    layer = layer_with_pairs([3, 2])
    layer(torch.randn(4, 12, generator=seeded(1))).square().sum().backward()
    old = (layer.A[0], layer.B[0])
    assert all(not p.requires_grad and p.grad is None for p in old)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (layer.A[1], layer.B[1]))
    assert layer.alphas.grad is not None and (layer.alphas.grad != 0).all()
    assert not any(p.requires_grad for p in layer.base_layer.parameters())


def test_fresh_pair_gives_finite_nonzero_gradients_to_A_B_and_alpha():
    """B is not initialised to zero, so the normalisation never divides 0 by 0."""
    layer = layer_with_pairs([4])
    layer(torch.randn(4, 12, generator=seeded(1))).square().sum().backward()
    for grad in (layer.A[0].grad, layer.B[0].grad, layer.alphas.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_a_pair_with_zero_product_adds_nothing_instead_of_nan():
    layer = layer_with_pairs([3])
    with torch.no_grad():
        layer.B[0].zero_()
    x = torch.randn(4, 12, generator=seeded(1))
    torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=0, atol=0)


def test_every_direction_has_unit_frobenius_norm_from_initialisation_on():
    layer = layer_with_pairs([4])
    assert torch.linalg.matrix_norm(layer.directions()[0]).item() == pytest.approx(1, abs=1e-5)
    layer.add_pair(3, generator=seeded(2))
    layer.add_pair(1, generator=seeded(3))
    norms = [torch.linalg.matrix_norm(d).item() for d in layer.directions()]
    assert norms == pytest.approx([1, 1, 1], abs=1e-5)


def test_forward_equals_the_explicit_sd_lora_formula_in_float64():
    layer = layer_with_pairs([3, 2, 4], dtype=torch.float64)
    set_alphas(layer, [0.8, -1.3, 0.25])
    x = torch.randn(5, 7, 12, generator=seeded(1), dtype=torch.float64)
    w = layer.base_layer.weight.detach().clone()
    for alpha, a, b in zip(layer.alphas, layer.A, layer.B, strict=True):
        w += alpha.detach() * (b @ a).detach() / torch.linalg.matrix_norm(b @ a).detach()
    expected = x @ w.T + layer.base_layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_merged_linear_gives_the_unmerged_output():
    layer = layer_with_pairs([3, 2])
    set_alphas(layer, [1.1, 0.4])
    x = torch.randn(6, 12, generator=seeded(1))
    merged = layer.merge()
    assert type(merged) is nn.Linear and not merged.weight.requires_grad
    torch.testing.assert_close(merged(x), layer(x), rtol=1e-5, atol=1e-5)


def test_kd_folds_a_direction_spanned_by_old_ones_without_changing_the_output():
    layer = layer_with_pairs([3, 2])
    set_alphas(layer, [0.7, 1.2])
    x = torch.randn(6, 12, generator=seeded(1))
    before_pairs = layer.num_pairs
    layer.add_pair(5)
    with torch.no_grad():  # newest = 2 * B0 A0 - 0.5 * B1 A1, exactly in the old span
        layer.A[2].copy_(torch.cat([layer.A[0], layer.A[1]]))
        layer.B[2].copy_(torch.cat([2 * layer.B[0], -0.5 * layer.B[1]], dim=1))
    expected, alphas_before = layer(x).detach(), layer.alphas.detach().clone()

    result = layer.fold_if_spanned(0.9)

    assert result["folded"] and result["explained"] == pytest.approx(1, abs=1e-6)
    assert layer.num_pairs == before_pairs
    assert not torch.allclose(layer.alphas[:2], alphas_before[:2])
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_kd_keeps_a_direction_orthogonal_to_the_old_ones():
    layer = layer_with_pairs([3, 2])
    layer.add_pair(2)
    with torch.no_grad():  # rows of A2 orthogonal to those of A0, A1 => <d_2, d_i>_F = 0
        old_rows = torch.cat([layer.A[0], layer.A[1]])
        q, _ = torch.linalg.qr(old_rows.T)
        layer.A[2].copy_(layer.A[2] - layer.A[2] @ q @ q.T)
    alphas_before = layer.alphas.detach().clone()

    result = layer.fold_if_spanned(0.9)

    assert not result["folded"] and result["explained"] == pytest.approx(0, abs=1e-5)
    assert layer.num_pairs == 3 and torch.equal(layer.alphas.detach(), alphas_before)


# ---------------------------------------------------------------------- tasks


def test_rr_ranks_follow_the_schedule_then_repeat_the_last():
    settings = SDLoRASettings(variant="rr", rank_schedule=[10, 8, 6])
    model = nn.Sequential(nn.Linear(16, 16))
    apply_sd_lora(model, ["0"])
    ranks = [start(model, settings, t, seed=t).rank for t in range(5)]
    assert ranks == [10, 8, 6, 6, 6]
    assert model[0].ranks == [10, 8, 6, 6, 6]


def test_plain_and_kd_variants_use_one_rank_for_every_task():
    for variant in ("plain", "kd"):
        settings = SDLoRASettings(variant=variant, rank=4)
        assert [rank_for_task(settings, t) for t in range(3)] == [4, 4, 4]


def test_finish_task_folds_spanned_pairs_only_for_the_kd_variant():
    model = nn.Sequential(nn.Linear(12, 12), nn.Linear(12, 12))
    apply_sd_lora(model, ["0", "1"])
    run_tasks(model, SDLoRASettings(rank=3), 1)
    start(model, SDLoRASettings(rank=3), 1, seed=1)
    as_if_trained(model, 1)
    spanned = model[0]
    with torch.no_grad():  # layer 0's newest pair repeats its first direction
        spanned.A[1].copy_(spanned.A[0])
        spanned.B[1].copy_(3 * spanned.B[0])

    plain = SDLoRA(model, SDLoRASettings(variant="plain"))
    assert plain.finish_task()["folded_layers"] == 0 and plain.folds == {}
    kd = SDLoRA(model, SDLoRASettings(variant="kd", kd_threshold=0.9))
    assert kd.finish_task()["folded_layers"] == 1

    assert kd.folds["0"]["folded"] and not kd.folds["1"]["folded"]
    assert [model[0].num_pairs, model[1].num_pairs] == [1, 2]


# ---------------------------------------------------------------------- state dict


def test_state_dict_round_trips_through_safetensors_into_a_fresh_model(tmp_path: Path):
    settings = SDLoRASettings(variant="rr", rank_schedule=[4, 2])
    model, targets = tiny_backbone()
    apply_sd_lora(model, targets)
    run_tasks(model, settings, 3)
    with torch.no_grad():
        for i, layer in enumerate(sd_lora_layers(model).values()):
            layer.alphas.add_(0.1 * i)
    save_file(sd_lora_state_dict(model), tmp_path / "sd_lora.safetensors")

    fresh, _ = tiny_backbone()
    apply_sd_lora(fresh, targets)
    load_sd_lora_state_dict(fresh, load_file(tmp_path / "sd_lora.safetensors"))

    assert sd_lora_state_dict(fresh).keys() == sd_lora_state_dict(model).keys()
    assert "model.layer.1.attention.q_proj.sd_lora.A.2" in sd_lora_state_dict(fresh)
    assert [layer.ranks for layer in sd_lora_layers(fresh).values()] == [[4, 2, 2]] * 4
    with torch.inference_mode():
        assert torch.equal(fresh(images()).pooler_output, model(images()).pooler_output)


def test_loading_into_a_model_wrapped_differently_names_the_keys():
    model, targets = tiny_backbone(blocks=[0, 1])
    apply_sd_lora(model, targets)
    run_tasks(model, SDLoRASettings(rank=2), 1)
    state = sd_lora_state_dict(model)
    other, other_targets = tiny_backbone(blocks=[1], modules=("q_proj", "k_proj"))
    apply_sd_lora(other, other_targets)

    with pytest.raises(SDLoRAError) as err:
        load_sd_lora_state_dict(other, state)

    message = str(err.value)
    assert "missing 1 (model.layer.1.attention.k_proj.sd_lora.alphas)" in message
    assert "model.layer.0.attention.v_proj.sd_lora.A.0" in message


def test_loading_pairs_that_do_not_fit_the_layer_shapes_fails_before_changing_anything():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    apply_sd_lora(model, ["0", "1"])
    run_tasks(model, SDLoRASettings(rank=2), 1)
    state = sd_lora_state_dict(model)
    state["1.sd_lora.A.0"] = torch.zeros(2, 5)
    before = sd_lora_state_dict(model)

    with pytest.raises(SDLoRAError, match=r"^1: pair 0: A \(2, 5\)"):
        load_sd_lora_state_dict(model, state)
    assert all(torch.equal(before[k], v) for k, v in sd_lora_state_dict(model).items())


# ---------------------------------------------------------------------- DINOv3 wiring


def test_only_the_resolved_dinov3_projections_are_wrapped():
    model, targets = tiny_backbone(blocks=[1])
    apply_sd_lora(model, targets)
    assert sorted(sd_lora_layers(model)) == [
        "model.layer.1.attention.q_proj",
        "model.layer.1.attention.v_proj",
    ]
    assert type(model.model.layer[0].attention.q_proj) is nn.Linear
    assert type(model.model.layer[1].attention.k_proj) is nn.Linear
    # A wrapped model still resolves to the same names (the Linear is its `base_layer`).
    assert resolve_lora_targets(model, [1], ["q_proj", "v_proj"]) == targets


def test_trainable_parameters_are_the_newest_pairs_and_all_alphas():
    model, targets = tiny_backbone()
    layers = apply_sd_lora(model, targets)
    start(model, SDLoRASettings(rank=2), 0, seed=0)
    method = start(model, SDLoRASettings(rank=2), 1, seed=1)
    expected = {id(p) for layer in layers.values() for p in (layer.A[1], layer.B[1], layer.alphas)}
    assert {id(p) for p in method.trainable_parameters()} == expected
    assert len(method.trainable_parameters()) == 3 * len(targets)
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected


def test_a_training_step_changes_only_new_pairs_and_alphas():
    model, targets = tiny_backbone()
    apply_sd_lora(model, targets)
    run_tasks(model, SDLoRASettings(rank=2), 1)
    method = start(model, SDLoRASettings(rank=2), 1, seed=1)
    as_if_trained(model, 1)  # mid-task: B != 0, so A moves too
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.1)

    model(images()).pooler_output.square().mean().backward()
    optimizer.step()

    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    expected = {f"{t}.{p}" for t in targets for p in ("A.1", "B.1", "alphas")}
    assert changed == expected


def test_merging_the_backbone_removes_wrappers_and_keeps_the_output():
    model, targets = tiny_backbone()
    apply_sd_lora(model, targets)
    start(model, SDLoRASettings(rank=3), 0, seed=0)
    start(model, SDLoRASettings(rank=3), 1, seed=1)
    with torch.inference_mode():
        expected = model(images()).last_hidden_state
        merge_sd_lora(model)
        merged = model(images()).last_hidden_state
    assert sd_lora_layers(model) == {}
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-5)


def test_wrapping_a_module_that_is_not_a_linear_layer_is_refused():
    model, _ = tiny_backbone()
    with pytest.raises(SDLoRAError, match="'model.layer.0.norm1' is a LayerNorm"):
        apply_sd_lora(model, ["model.layer.0.attention.q_proj", "model.layer.0.norm1"])
    assert sd_lora_layers(model) == {}


# ---------------------------------------------------------------------- task lifecycle


def test_an_open_task_pair_starts_exactly_at_the_previous_model():
    layer = layer_with_pairs([3])
    x = torch.randn(4, 12, generator=seeded(1))
    before = layer(x).detach()
    layer.add_pair(2, generator=seeded(2), open=True)
    torch.testing.assert_close(layer(x), before, rtol=0, atol=1e-6)


def test_closing_a_task_keeps_the_function_and_normalises_the_pair():
    layer = layer_with_pairs([3])
    layer.add_pair(2, generator=seeded(2), open=True)
    with torch.no_grad():
        layer.B[1].copy_(torch.randn(10, 2, generator=seeded(3)))
    x = torch.randn(4, 12, generator=seeded(1))
    trained = layer(x).detach()
    layer.close_pair()
    torch.testing.assert_close(layer(x), trained, rtol=1e-5, atol=1e-5)
    norms = [torch.linalg.matrix_norm(d).item() for d in layer.directions()]
    assert norms == pytest.approx([1, 1], abs=1e-5)


def test_open_pair_trains_like_lora_and_old_magnitudes_train_with_it():
    layer = layer_with_pairs([3])
    layer.add_pair(2, generator=seeded(2), open=True)
    layer(torch.randn(4, 12, generator=seeded(1))).square().sum().backward()
    assert layer.B[1].grad.abs().sum() > 0  # B = 0: only B moves on the first step, as in LoRA
    assert layer.A[1].grad is not None
    assert layer.alphas.grad[0] != 0  # the old direction's magnitude keeps training


def test_saving_while_a_task_is_open_is_refused():
    model, targets = tiny_backbone()
    apply_sd_lora(model, targets)
    method = start(model, SDLoRASettings(rank=2), 0)
    with pytest.raises(SDLoRAError, match="still open"):
        sd_lora_state_dict(model)
    method.finish_task()
    assert sd_lora_state_dict(model)
