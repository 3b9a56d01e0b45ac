"""The crop router on disk: a folder that `save_router` writes and `load_router` reads back.

``router.safetensors`` holds the heads and the feature standardisation, ``router.json`` the
class lists, the backbone's source, signature and preprocessing, and the metrics; ``ood/`` the
crop-level OOD check; ``SHA256SUMS`` (written last) what the registry and serving verify.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from aads.atomic import atomic_write, atomic_write_text
from aads.backbone import Backbone, load_backbone
from aads.config import BackboneSettings, StorageSettings
from aads.features import backbone_signature
from aads.ood.detector import load_detector
from aads.router.model import CropRouter, RouterError, RouterHeads
from aads.storage import CHECKSUM_FILE, StorageError, verify_checksums

FORMAT = "aads-router/1"
WEIGHTS_FILE = "router.safetensors"
META_FILE = "router.json"
OOD_DIR = "ood"


def save_router(
    heads: RouterHeads,
    backbone: Backbone,
    settings: BackboneSettings,
    crops: list[str],
    parts: list[str],
    out_dir: Path,
    *,
    metrics: dict | None = None,
) -> Path:
    out_dir = Path(out_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    atomic_write(out_dir / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp))
    meta = {
        "format": FORMAT,
        "crops": crops,
        "parts": parts,
        "backbone": backbone_signature(backbone),
        # Device and dtype belong to where the router runs, not to the router.
        "backbone_settings": settings.model_dump(mode="json", exclude={"device", "dtype"}),
        "metrics": metrics or {},
    }
    atomic_write_text(out_dir / META_FILE, json.dumps(meta, indent=2) + "\n")
    return out_dir


def load_router(
    router_dir: Path,
    storage: StorageSettings | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
) -> CropRouter:
    router_dir = Path(router_dir)
    if (router_dir / CHECKSUM_FILE).is_file():
        try:
            verify_checksums(router_dir)
        except StorageError as err:
            raise RouterError(str(err)) from None
    try:
        meta = json.loads((router_dir / META_FILE).read_text())
        tensors = load_file(str(router_dir / WEIGHTS_FILE))
    except (OSError, ValueError) as err:
        raise RouterError(f"{router_dir}: not a router folder ({err})") from None
    if meta.get("format") != FORMAT:
        raise RouterError(f"{router_dir}: unknown router format {meta.get('format')!r}")
    settings = BackboneSettings(**meta["backbone_settings"], device=device, dtype=dtype)
    backbone = load_backbone(settings, storage)
    if backbone_signature(backbone) != meta["backbone"]:
        raise RouterError(
            f"{router_dir}: backbone {settings.source} no longer matches the one the heads were "
            f"trained on (recorded {meta['backbone']}, loaded {backbone_signature(backbone)})"
        )
    dim = tensors["crop.weight"].shape[1]
    if dim != backbone.feature_dim:
        raise RouterError(
            f"{router_dir}: heads expect {dim}-d features, backbone gives {backbone.feature_dim}"
        )
    heads = RouterHeads(dim, len(meta["crops"]), len(meta["parts"]))
    heads.load_state_dict(tensors)
    heads.eval()
    ood = load_detector(router_dir / OOD_DIR)
    if ood is not None and ood.classes != meta["crops"]:
        raise RouterError(f"{router_dir}: OOD calibration is for crops {ood.classes}")
    return CropRouter(backbone, heads, meta["crops"], meta["parts"], meta, ood)
