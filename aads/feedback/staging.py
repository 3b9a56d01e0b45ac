"""Write an output folder in a hidden sibling and rename it into place when it is complete.

The same contract as `aads.atomic.atomic_dir` on the issue-16 branch (which makes it the one
staging helper of the package); until that is merged this module holds it for the feedback
commands, and should then be replaced by it.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_dir(dest: Path) -> Iterator[Path]:
    """Yield an empty folder beside `dest`; it replaces `dest` when the block ends normally.
    On an exception nothing is left behind and an earlier `dest` is intact."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        yield staging
        staging.chmod(0o755)
        retired = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.old")
        if dest.exists():
            dest.rename(retired)
        try:
            staging.rename(dest)
        except BaseException:
            if retired.exists():
                retired.rename(dest)
            raise
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
