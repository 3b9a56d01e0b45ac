"""BioCLIP 2 without open_clip: an open_clip-layout checkpoint, converted to transformers'
CLIPModel, embeds images and texts exactly as open_clip's own forward pass would.

The reference below is open_clip's computation written out in plain torch on the open_clip
tensors themselves (patch conv, class token, positions, ln_pre, pre-LN blocks with one fused
qkv projection, ln_post on the class token, ``@ proj``; text: token + position embeddings,
causal mask, ln_final, the end-of-text token found by argmax of the ids, ``@
text_projection``). It shares no code with the conversion.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from aads.vlm.bioclip import (
    OpenClipKeyError,
    clip_config_for,
    clip_model_from_open_clip,
    load_bioclip,
)
from aads.vlm.errors import VLMError
from aads.vlm.settings import BioCLIPSettings
from aads.vlm.vocab import load_clip_tokenizer, write_clip_bpe

EMBED, V_WIDTH, V_LAYERS, V_HEADS, PATCH, IMAGE = 24, 32, 2, 2, 8, 32
T_WIDTH, T_LAYERS, T_HEADS, CONTEXT = 32, 2, 4, 16
PROMPTS = ["a photo of a tomato leaf with early blight.", "a photo of a healthy corn leaf."]


def tokenizer_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "bpe"
    write_clip_bpe(folder)
    return folder


def open_clip_cfg(vocab: int, quick_gelu: bool = False) -> dict:
    """What an ``open_clip_config.json`` says about this architecture."""
    return {
        "model_cfg": {
            "embed_dim": EMBED,
            "quick_gelu": quick_gelu,
            "vision_cfg": {
                "image_size": IMAGE,
                "layers": V_LAYERS,
                "width": V_WIDTH,
                "patch_size": PATCH,
                "head_width": V_WIDTH // V_HEADS,
            },
            "text_cfg": {
                "context_length": CONTEXT,
                "vocab_size": vocab,
                "width": T_WIDTH,
                "heads": T_HEADS,
                "layers": T_LAYERS,
            },
        },
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }


def open_clip_state_dict(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in open_clip's layout, shapes written out here."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.05, offset: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale + offset

    def blocks(prefix: str, width: int, layers: int) -> dict[str, torch.Tensor]:
        sd = {}
        for i in range(layers):
            p = f"{prefix}.resblocks.{i}"
            sd |= {
                f"{p}.ln_1.weight": rnd(width, offset=1.0),
                f"{p}.ln_1.bias": rnd(width),
                f"{p}.attn.in_proj_weight": rnd(3 * width, width, scale=0.2),
                f"{p}.attn.in_proj_bias": rnd(3 * width),
                f"{p}.attn.out_proj.weight": rnd(width, width, scale=0.2),
                f"{p}.attn.out_proj.bias": rnd(width),
                f"{p}.ln_2.weight": rnd(width, offset=1.0),
                f"{p}.ln_2.bias": rnd(width),
                f"{p}.mlp.c_fc.weight": rnd(4 * width, width, scale=0.2),
                f"{p}.mlp.c_fc.bias": rnd(4 * width),
                f"{p}.mlp.c_proj.weight": rnd(width, 4 * width, scale=0.1),
                f"{p}.mlp.c_proj.bias": rnd(width),
            }
        return sd

    grid = IMAGE // PATCH
    return {
        "visual.class_embedding": rnd(V_WIDTH, scale=0.5),
        "visual.positional_embedding": rnd(grid * grid + 1, V_WIDTH, scale=0.5),
        "visual.conv1.weight": rnd(V_WIDTH, 3, PATCH, PATCH, scale=0.1),
        "visual.ln_pre.weight": rnd(V_WIDTH, offset=1.0),
        "visual.ln_pre.bias": rnd(V_WIDTH),
        **blocks("visual.transformer", V_WIDTH, V_LAYERS),
        "visual.ln_post.weight": rnd(V_WIDTH, offset=1.0),
        "visual.ln_post.bias": rnd(V_WIDTH),
        "visual.proj": rnd(V_WIDTH, EMBED, scale=0.2),
        "token_embedding.weight": rnd(vocab, T_WIDTH, scale=0.5),
        "positional_embedding": rnd(CONTEXT, T_WIDTH, scale=0.5),
        **blocks("transformer", T_WIDTH, T_LAYERS),
        "ln_final.weight": rnd(T_WIDTH, offset=1.0),
        "ln_final.bias": rnd(T_WIDTH),
        "text_projection": rnd(T_WIDTH, EMBED, scale=0.2),
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
    }


# --------------------------------------------------------------------------- open_clip, by hand


def layer_norm(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def residual_block(x, sd, p, heads, act, mask=None):
    batch, tokens, width = x.shape
    h = layer_norm(x, sd, f"{p}.ln_1")
    qkv = h @ sd[f"{p}.attn.in_proj_weight"].T + sd[f"{p}.attn.in_proj_bias"]
    q, k, v = (
        t.reshape(batch, tokens, heads, width // heads).transpose(1, 2)
        for t in qkv.split(width, dim=-1)
    )
    scores = q @ k.transpose(-2, -1) / math.sqrt(width // heads)
    if mask is not None:
        scores = scores + mask
    attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, width)
    x = x + attn @ sd[f"{p}.attn.out_proj.weight"].T + sd[f"{p}.attn.out_proj.bias"]
    h = layer_norm(x, sd, f"{p}.ln_2")
    h = act(h @ sd[f"{p}.mlp.c_fc.weight"].T + sd[f"{p}.mlp.c_fc.bias"])
    return x + h @ sd[f"{p}.mlp.c_proj.weight"].T + sd[f"{p}.mlp.c_proj.bias"]


def open_clip_image(sd, pixels, act):
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=PATCH)  # no bias in open_clip
    x = x.flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(len(x), 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = layer_norm(x, sd, "visual.ln_pre")
    for i in range(V_LAYERS):
        x = residual_block(x, sd, f"visual.transformer.resblocks.{i}", V_HEADS, act)
    return layer_norm(x, sd, "visual.ln_post")[:, 0] @ sd["visual.proj"]


def open_clip_text(sd, ids, act):
    n = ids.shape[1]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:n]
    causal = torch.full((n, n), float("-inf")).triu(1)
    for i in range(T_LAYERS):
        x = residual_block(x, sd, f"transformer.resblocks.{i}", T_HEADS, act, causal)
    x = layer_norm(x, sd, "ln_final")
    return x[torch.arange(len(ids)), ids.argmax(dim=-1)] @ sd["text_projection"]


ACTIVATIONS = {"gelu": F.gelu, "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x)}


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
def test_converted_open_clip_weights_embed_exactly_like_open_clip(tmp_path, activation):
    tokenizer = load_clip_tokenizer(tokenizer_dir(tmp_path))
    sd = open_clip_state_dict(len(tokenizer))
    cfg = open_clip_cfg(len(tokenizer), quick_gelu=activation == "quick_gelu")["model_cfg"]
    model = clip_model_from_open_clip(sd, clip_config_for(sd, cfg))
    assert model.config.vision_config.hidden_act == activation
    act = ACTIVATIONS[activation]

    pixels = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    ids = tokenizer(
        PROMPTS, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt"
    )["input_ids"]
    assert int(ids[0].max()) == len(tokenizer) - 1  # end-of-text is the largest id, as in CLIP
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text = model.text_projection(model.text_model(input_ids=ids).pooler_output)
        torch.testing.assert_close(image, open_clip_image(sd, pixels, act), rtol=0, atol=1e-5)
        torch.testing.assert_close(text, open_clip_text(sd, ids, act), rtol=0, atol=1e-5)
    assert float(model.logit_scale.detach()) == pytest.approx(math.log(1 / 0.07))


def test_a_checkpoint_that_does_not_fit_lists_missing_and_unexpected_keys(tmp_path):
    tokenizer = load_clip_tokenizer(tokenizer_dir(tmp_path))
    sd = open_clip_state_dict(len(tokenizer))
    cfg = open_clip_cfg(len(tokenizer))["model_cfg"]
    config = clip_config_for(sd, cfg)
    del sd["visual.ln_post.weight"], sd["transformer.resblocks.1.attn.in_proj_bias"]
    sd["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(V_WIDTH)
    sd["logit_bias"] = torch.zeros(())
    with pytest.raises(OpenClipKeyError) as err:
        clip_model_from_open_clip(sd, config)
    assert err.value.missing == [
        "transformer.resblocks.1.attn.in_proj_bias",
        "visual.ln_post.weight",
    ]
    assert err.value.unexpected == ["logit_bias", "visual.transformer.resblocks.0.ls_1.gamma"]
    assert "visual.ln_post.weight" in str(err.value) and "logit_bias" in str(err.value)


def test_an_open_clip_config_that_contradicts_the_weights_names_the_field(tmp_path):
    tokenizer = load_clip_tokenizer(tokenizer_dir(tmp_path))
    sd = open_clip_state_dict(len(tokenizer))
    cfg = open_clip_cfg(len(tokenizer))["model_cfg"]
    cfg["vision_cfg"]["layers"] = 24
    with pytest.raises(VLMError, match=r"vision_cfg\.layers: config 24, weights 2"):
        clip_config_for(sd, cfg)


def write_open_clip_dir(folder: Path, tmp_path: Path, *, tokenizer: bool = True) -> dict:
    """A mirror folder as the Hub has it: open_clip config + safetensors (+ BPE files)."""
    tok_dir = tokenizer_dir(tmp_path)
    vocab = len(load_clip_tokenizer(tok_dir))
    sd = open_clip_state_dict(vocab)
    folder.mkdir(parents=True)
    save_file(sd, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps(open_clip_cfg(vocab)))
    if tokenizer:
        for name in ("vocab.json", "merges.txt"):
            (folder / name).write_bytes((tok_dir / name).read_bytes())
    return sd


def test_a_mirrored_open_clip_folder_loads_and_scores_zero_shot(tmp_path):
    folder = tmp_path / "bioclip-2"
    sd = write_open_clip_dir(folder, tmp_path)
    bio = load_bioclip(
        BioCLIPSettings(source=str(folder)), None, device=torch.device("cpu"), dtype=torch.float32
    )
    assert bio.normalisation.mean == (0.5, 0.5, 0.5)  # from preprocess_cfg
    ids = bio.tokenizer(PROMPTS, padding="max_length", max_length=CONTEXT, return_tensors="pt")[
        "input_ids"
    ]
    expected = F.normalize(open_clip_text(sd, ids, F.gelu), dim=-1)
    torch.testing.assert_close(bio.embed_texts(PROMPTS), expected, rtol=0, atol=1e-5)

    from PIL import Image

    images = [Image.new("RGB", (48, 40), (30, 160, 40)), Image.new("RGB", (40, 40), (120, 80, 50))]
    image_embeds = bio.embed_images(images)
    expected = F.normalize(open_clip_image(sd, bio.pixels(images), F.gelu), dim=-1)
    torch.testing.assert_close(image_embeds, expected, rtol=0, atol=1e-5)
    probs = bio.probabilities(image_embeds, bio.embed_texts(PROMPTS))
    assert probs.shape == (2, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))


def test_a_folder_without_tokenizer_files_says_where_to_get_them(tmp_path):
    folder = tmp_path / "bioclip-2"
    write_open_clip_dir(folder, tmp_path, tokenizer=False)
    settings = BioCLIPSettings(source=str(folder))
    with pytest.raises(VLMError, match="vocab.json.*merges.txt.*bioclip.tokenizer"):
        load_bioclip(settings, None, device=torch.device("cpu"), dtype=torch.float32)
    # ... and naming a tokenizer folder separately fixes it
    settings = BioCLIPSettings(source=str(folder), tokenizer=str(tokenizer_dir(tmp_path / "t")))
    bio = load_bioclip(settings, None, device=torch.device("cpu"), dtype=torch.float32)
    assert bio.embed_texts(PROMPTS).shape == (2, EMBED)


def test_pickle_weights_are_refused_not_unpickled(tmp_path):
    folder = tmp_path / "bioclip-pickle"
    folder.mkdir()
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"not even read")
    settings = BioCLIPSettings(source=str(folder))
    with pytest.raises(VLMError, match="only pickle weights.*open_clip_pytorch_model.bin"):
        load_bioclip(settings, None, device=torch.device("cpu"), dtype=torch.float32)


def test_an_s3_mirror_loads_the_same_model(tmp_path, s3_settings):
    from aads.storage import open_store, put_dir

    folder = tmp_path / "bioclip-2"
    sd = write_open_clip_dir(folder, tmp_path)
    uri = f"s3://{s3_settings.bucket}/vlm/bioclip-2"
    store, prefix = open_store(uri, s3_settings)
    put_dir(store, folder, prefix)
    bio = load_bioclip(
        BioCLIPSettings(source=uri), s3_settings, device=torch.device("cpu"), dtype=torch.float32
    )
    ids = bio.tokenizer(PROMPTS, padding="max_length", max_length=CONTEXT, return_tensors="pt")[
        "input_ids"
    ]
    expected = F.normalize(open_clip_text(sd, ids, F.gelu), dim=-1)
    torch.testing.assert_close(bio.embed_texts(PROMPTS), expected, rtol=0, atol=1e-5)
