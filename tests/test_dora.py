"""Phase 1 maths: PEFT DoRA on DINOv3 module names, merge, save/load."""

from __future__ import annotations

import pytest
import torch

from aads.adapters.classifier import grow_head
from aads.adapters.dora.model import apply_dora, load_dora, merge_dora, save_dora
from aads.backbone import BackboneError, build_random_model
from aads.config import DoRASettings


def perturbed_dora(blocks=(1,), modules=("q_proj", "v_proj")):
    """A DoRA model whose B matrices and magnitudes are non-trivial (as after training)."""
    settings = DoRASettings(r=4, alpha=8, dropout=0.0, blocks=list(blocks), modules=list(modules))
    model = apply_dora(build_random_model("tiny", 0), settings, depth=2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            if "lora_magnitude_vector" in name:
                p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_dora_wraps_only_the_configured_blocks_and_modules():
    model = perturbed_dora(blocks=(1,), modules=("q_proj",))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("layer.1.attention.q_proj" in n for n in trainable)
    assert any("lora_magnitude_vector" in n for n in trainable)  # DoRA, not plain LoRA


def test_merge_then_forward_equals_unmerged_forward():
    """Tolerance 1e-5 absolute in float32: merging reorders the same sums."""
    model = perturbed_dora()
    x = pixels()
    with torch.no_grad():
        unmerged = model(pixel_values=x).last_hidden_state
        merged = merge_dora(model)(pixel_values=x).last_hidden_state
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)


def test_saved_dora_reloads_to_identical_outputs(tmp_path):
    model = perturbed_dora()
    save_dora(model, tmp_path)
    reloaded = load_dora(build_random_model("tiny", 0), tmp_path).eval()
    x = pixels()
    with torch.no_grad():
        assert torch.equal(
            model(pixel_values=x).last_hidden_state, reloaded(pixel_values=x).last_hidden_state
        )


def test_module_missing_from_the_backbone_is_a_clear_error():
    with pytest.raises(BackboneError, match="gate_proj"):
        apply_dora(build_random_model("tiny", 0), DoRASettings(modules=["gate_proj"]), depth=2)


def test_grown_head_keeps_old_logits_and_adds_neutral_new_ones():
    head = torch.nn.Linear(8, 3)
    grown = grow_head(head, 2)
    x = torch.randn(4, 8)
    # The old rows are the old parameters bit for bit; the logits agree to rounding (a GEMM of
    # another output width may pick another kernel, so bitwise equality of outputs is not
    # something the head can promise on every CPU).
    assert torch.equal(grown.weight[:3], head.weight) and torch.equal(grown.bias[:3], head.bias)
    torch.testing.assert_close(grown(x)[:, :3], head(x), rtol=0, atol=1e-6)
    assert torch.allclose(grown(x)[:, 3], grown(x)[:, 4])
