"""Continue from the champion: continual training as an operation on a registered model.

A registered version learns one task (new disease classes, or a new condition) from the
task's images only, is gated against that version on the same evaluation images, and is
registered as its child with its lineage. `continue_from` (`aads.continual.run`) is the
operation; ``aads train continue`` and ``pipelines/continuation.py`` call it.

- `aads.continual.base`: ``--from`` in any form -> a verified local package and its version;
- `aads.continual.data`: the task and its images checked against the parent, before training;
- `aads.continual.ood`: the OOD check carried forward or re-estimated, and its drift measured;
- `aads.continual.gate`: parent and child on the same images, and the gate on the difference;
- `aads.continual.report`: the side-by-side report and model card;
- `aads.continual.lineage`: registry tags and the chain of versions.
"""

from aads.continual.base import BaseNotFound, ContinuationError
from aads.continual.run import Continuation, continue_from, plan_continuation

__all__ = [
    "BaseNotFound",
    "Continuation",
    "ContinuationError",
    "continue_from",
    "plan_continuation",
]
