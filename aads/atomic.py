"""Atomic writes: build in a temporary sibling, then rename, so readers never see half of it.

Every artifact AADS writes goes through here: single files (manifests, reports, weights,
benchmark JSON) through `atomic_write`, whole folders (adapter packages, cached mirrors,
pretrained backbones, step outputs) through `atomic_dir`. A crash or a full disk leaves the
previous version or nothing, never a truncated file or a folder with half its files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)`, then move the result onto `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp creates 0600; artifacts are read by other users (pods, servers): 0644.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline=""))


@contextmanager
def atomic_dir(dest: Path, *, keep_existing: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside `dest`; when the block ends, it becomes `dest`.

    Write everything into the yielded folder. If the block raises, the staging folder is
    removed and `dest` is left exactly as it was (an earlier version stays intact). If it ends
    normally, the folder is made world-readable (0755: pods and servers read what we write)
    and moved onto `dest` by `replace_dir`, replacing an earlier folder there.

    ``keep_existing=True`` is for writers that race to produce identical content (two
    processes pretraining the same cached backbone): a `dest` that exists when the block ends
    is kept, and the staged copy is dropped.

    Staging folders are hidden siblings named ``.<dest name>.<random>``, on the same
    filesystem, so the final move is one rename. A process killed outright (``kill -9``)
    cannot remove its staging folder; `dest` is still intact.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        yield staging
        staging.chmod(0o755)
        if keep_existing:
            try:
                staging.rename(dest)
            except OSError:
                if not dest.exists():
                    raise
        else:
            replace_dir(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_dir(src: Path, dest: Path) -> None:
    """Move the folder `src` onto `dest` (same filesystem), replacing any folder there.

    An existing `dest` is first renamed aside and deleted only once `src` is in place; if the
    move fails it is renamed back, so a failure never loses the earlier folder. A reader that
    holds the folder open (a directory handle) reads one version to the end or finds its files
    gone; only a reader that looks up each file by path again can straddle the swap (adapter
    packages carry ``SHA256SUMS`` for that). Between the two renames there is no `dest`.
    """
    src, dest = Path(src), Path(dest)
    if not dest.exists():
        src.rename(dest)
        return
    retired = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.old")
    dest.rename(retired)
    try:
        src.rename(dest)
    except BaseException:
        retired.rename(dest)
        raise
    shutil.rmtree(retired, ignore_errors=True)
