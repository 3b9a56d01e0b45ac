"""Tokenizers built in code for ``random:<preset>`` models (nothing can be downloaded here).

Grounding DINO's text side is BERT: its modeling code hard-codes BERT's special ids
(``[CLS]`` 101, ``[SEP]`` 102, ``.`` 1012, ``?`` 1029) to split phrases, so the in-code
WordPiece vocabulary keeps BERT's layout, holds the usual part words whole and every letter as
a continuation piece, so any prompt tokenizes. BioCLIP's text side is CLIP's byte-level BPE:
the in-code vocabulary has the 512 base symbols (each byte, plain and word-final), merges for
a few common prompt words, and start/end-of-text as the last two ids, as in CLIP (the end
token is the largest id, which open_clip's argmax pooling relies on). The CLIP files are
written to a folder and read by `load_clip_tokenizer`, the same loader real checkpoints use.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import VLMError

if TYPE_CHECKING:
    from transformers import BertTokenizer, CLIPTokenizer

BERT_SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
BERT_PUNCT_IDS = {".": 1012, "?": 1029}
BERT_BASE_VOCAB = 30522
PART_WORDS = (
    "leaf", "leaves", "fruit", "stem", "lesion", "flower", "root", "plant", "spot", "ear",
    "pod", "tuber", "branch", "bud", "seed", "canopy", "weed", "soil",
)  # fmt: skip
PROMPT_WORDS = (
    "a", "photo", "of", "with", "healthy", "the", "leaf", "fruit", "stem", "plant",
    "tomato", "pepper", "corn", "potato", "early", "late", "blight", "rust", "spot", "mold",
    "virus", "mosaic", "mildew", "powdery", "bacterial", "common", "northern", "leaf",
)  # fmt: skip
CLIP_START, CLIP_END = "<|startoftext|>", "<|endoftext|>"
CLIP_FILES = ("vocab.json", "merges.txt")


def bert_vocab(size: int = 1100) -> dict[str, int]:
    """BERT-layout WordPiece vocabulary of exactly `size` entries (>= 1030)."""
    if size < max(BERT_PUNCT_IDS.values()) + 1:
        raise VLMError(f"a BERT-layout vocabulary needs at least 1030 entries, not {size}")
    fixed = {**BERT_SPECIAL_IDS, **BERT_PUNCT_IDS}
    words = [
        *dict.fromkeys(PART_WORDS),
        *string.ascii_lowercase,
        *string.digits,
        *(f"##{c}" for c in string.ascii_lowercase + string.digits),
        *"-,'",
    ]
    tokens: list[str] = [""] * size
    for tok, i in fixed.items():
        tokens[i] = tok
    free = (i for i in range(size) if not tokens[i])
    for word, i in zip(words, free, strict=False):
        tokens[i] = word
    for i in range(size):
        tokens[i] = tokens[i] or f"[unused{i}]"
    return {tok: i for i, tok in enumerate(tokens)}


def bert_tokenizer(size: int = 1100) -> BertTokenizer:
    from transformers import BertTokenizer

    return BertTokenizer(vocab=bert_vocab(size))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(0xA1, 0xAC + 1),
        *range(0xAE, 0xFF + 1),
    ]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def clip_bpe(
    words: Iterable[str] = PROMPT_WORDS, size: int | None = None
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP BPE vocabulary and merge list; `size` pads it (real shapes use 49408)."""
    base = list(_bytes_to_unicode().values())
    tokens = [*base, *(b + "</w>" for b in base)]
    merges: list[tuple[str, str]] = []
    known = set(tokens)
    for word in dict.fromkeys(words):
        pieces = [*word[:-1], word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            pair = (current, piece)
            current += piece
            if current not in known:
                merges.append(pair)
                tokens.append(current)
                known.add(current)
    if size is not None:
        if size < len(tokens) + 2:
            raise VLMError(f"a CLIP vocabulary of {size} cannot hold {len(tokens) + 2} tokens")
        tokens += [f"<|unused{i}|>" for i in range(size - len(tokens) - 2)]
    tokens += [CLIP_START, CLIP_END]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_clip_bpe(directory: Path, words: Iterable[str] = PROMPT_WORDS, size: int | None = None):
    """Write ``vocab.json`` and ``merges.txt`` as CLIP checkpoints ship them."""
    vocab, merges = clip_bpe(words, size)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def load_clip_tokenizer(directory: Path, what: str = "bioclip") -> CLIPTokenizer:
    """CLIP's tokenizer from ``vocab.json`` + ``merges.txt`` (or ``tokenizer.json``)."""
    from transformers import CLIPTokenizer

    has_files = (directory / "tokenizer.json").is_file() or all(
        (directory / f).is_file() for f in CLIP_FILES
    )
    if not has_files:
        raise VLMError(
            f"{what}: {directory} has no CLIP tokenizer files (vocab.json + merges.txt or "
            "tokenizer.json). open_clip checkpoints use open_clip's bundled BPE, which is "
            "OpenAI CLIP's: copy vocab.json and merges.txt of e.g. openai/clip-vit-large-patch14 "
            "into the mirror, or set bioclip.tokenizer to where they are"
        )
    try:
        return CLIPTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - malformed vocab or merges
        raise VLMError(f"{what}: cannot read the CLIP tokenizer in {directory} ({err})") from err
