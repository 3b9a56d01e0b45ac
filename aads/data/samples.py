"""Where the real PlantVillage sample lives, for the tests and benchmarks that read it.

The sample (``shared/data/plantvillage``: 19 classes of tomato, pepper, corn and potato as
published, with the original dataset's warts) sits beside the checkout, never inside it: it
is CC BY-SA data, read in place. ``AADS_PLANTVILLAGE_DIR`` points elsewhere (a full
PlantVillage copy, another checkout's sample).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV_VAR = "AADS_PLANTVILLAGE_DIR"
RELATIVE = Path("shared") / "data" / "plantvillage"


def plantvillage_sample(
    environ: Mapping[str, str] | None = None, start: Path | None = None
) -> tuple[Path | None, str]:
    """(the sample folder or None, where it was looked for): ``$AADS_PLANTVILLAGE_DIR`` if set,
    else ``shared/data/plantvillage`` in the nearest folder above the checkout that has one."""
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        given = Path(env[ENV_VAR])
        return (given if given.is_dir() else None), f"${ENV_VAR}={given}"
    repo = (start or Path(__file__)).resolve().parents[2 if start is None else 0]
    for folder in repo.parents:
        if (folder / RELATIVE).is_dir():
            return folder / RELATIVE, str(folder / RELATIVE)
    return None, f"{RELATIVE} above {repo} (or set ${ENV_VAR})"
