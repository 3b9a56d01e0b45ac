"""How the backbone is named and reported to the shared model-source loader, and the Hub ids
refused before any download.

Reading ``HF_*`` variables, Hub snapshots and the mirroring instructions live in
`aads.model_sources`, shared with the scouting models; what is DINOv3-specific stays here: which
Hub ids are gated under which licence (the variant table) and which official-looking ids were
invented (a size word instead of the architecture name).
"""

from __future__ import annotations

from aads.model_sources import ModelKind

from .errors import BackboneError, BackboneNotAvailable
from .variants import find_variant, looks_like_fake_dinov3_id, unknown_id_message


def gated_licence(hf_id: str) -> str | None:
    """The licence a gated released checkpoint is under, else None."""
    variant = find_variant(hf_id)
    return variant.licence if variant is not None and variant.gated else None


BACKBONE = ModelKind(
    name="backbone",
    error=BackboneError,
    not_available=BackboneNotAvailable,
    gated_licence=gated_licence,
    type_hints={
        "dinov2_with_registers": "DINOv2 with registers is a different architecture; "
        "use plain DINOv2"
    },
)


def check_hub_id(hf_id: str) -> None:
    """Refuse invented official-looking ids (a size word instead of the architecture name)
    before any download."""
    if looks_like_fake_dinov3_id(hf_id):
        raise BackboneError(unknown_id_message(hf_id))
