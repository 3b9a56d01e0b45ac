"""The crop router: a frozen DINOv3 backbone and two linear heads, crop and plant part.

Split like the adapters: `model` (the heads, `CropRouter`, `RouteDecision`), `training`
(`train_router` on a feature cache) and `package` (the folder on disk: `save_router`,
`load_router`). Everything is importable from ``aads.router`` as before.
"""

from aads.router.model import CropRouter, RouteDecision, RouterError, RouterHeads
from aads.router.package import (
    FORMAT,
    META_FILE,
    OOD_DIR,
    WEIGHTS_FILE,
    load_router,
    save_router,
)
from aads.router.training import RouterTrainingResult, train_router

__all__ = [
    "FORMAT",
    "META_FILE",
    "OOD_DIR",
    "WEIGHTS_FILE",
    "CropRouter",
    "RouteDecision",
    "RouterError",
    "RouterHeads",
    "RouterTrainingResult",
    "load_router",
    "save_router",
    "train_router",
]
