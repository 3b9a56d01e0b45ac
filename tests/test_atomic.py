"""Atomic folder writes: readers see the old folder or the new one, never half of one; a failed
or killed writer leaves the earlier folder intact."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from aads.atomic import atomic_dir, replace_dir

ROOT = Path(__file__).resolve().parents[1]


def write_version(folder: Path, version: str, files: int = 3) -> None:
    for i in range(files):
        (folder / f"part{i}.txt").write_text(version)


def versions_in(folder: Path) -> set[str]:
    return {p.read_text() for p in folder.iterdir()}


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


def test_the_folder_appears_complete_only_when_the_block_ends(tmp_path):
    dest = tmp_path / "pkg"
    with atomic_dir(dest) as staging:
        write_version(staging, "v1")
        assert not dest.exists()
    assert versions_in(dest) == {"v1"} and len(list(dest.iterdir())) == 3
    assert siblings(dest) == []


def test_an_earlier_folder_is_replaced_whole_with_none_of_its_files_left(tmp_path):
    dest = tmp_path / "pkg"
    with atomic_dir(dest) as staging:
        write_version(staging, "v1", files=5)
    with atomic_dir(dest) as staging:
        write_version(staging, "v2", files=2)
    assert sorted(p.name for p in dest.iterdir()) == ["part0.txt", "part1.txt"]
    assert versions_in(dest) == {"v2"}
    assert siblings(dest) == []


def test_a_failing_writer_leaves_the_earlier_folder_intact_and_no_staging_behind(tmp_path):
    dest = tmp_path / "pkg"
    with atomic_dir(dest) as staging:
        write_version(staging, "v1")
    with pytest.raises(RuntimeError, match="disk full"), atomic_dir(dest) as staging:
        write_version(staging, "v2")
        raise RuntimeError("disk full")
    assert versions_in(dest) == {"v1"}
    assert siblings(dest) == []


def test_a_failing_first_write_leaves_nothing_at_all(tmp_path):
    dest = tmp_path / "sub" / "pkg"
    with pytest.raises(KeyboardInterrupt), atomic_dir(dest) as staging:
        write_version(staging, "v1")
        raise KeyboardInterrupt
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_a_failed_final_rename_puts_the_earlier_folder_back(tmp_path):
    dest = tmp_path / "pkg"
    dest.mkdir()
    write_version(dest, "v1")
    with pytest.raises(FileNotFoundError):
        replace_dir(tmp_path / "never-written", dest)
    assert versions_in(dest) == {"v1"}
    assert siblings(dest) == []


def test_keep_existing_keeps_the_folder_another_writer_finished_first(tmp_path):
    dest = tmp_path / "cache"
    with atomic_dir(dest, keep_existing=True) as mine:
        write_version(mine, "mine")
        with atomic_dir(dest, keep_existing=True) as theirs:  # finishes first
            write_version(theirs, "theirs")
    assert versions_in(dest) == {"theirs"}
    assert siblings(dest) == []


def test_the_folder_is_readable_by_other_users(tmp_path):
    dest = tmp_path / "pkg"
    with atomic_dir(dest) as staging:
        write_version(staging, "v1")
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755


def test_concurrent_readers_never_see_a_mix_of_two_versions(tmp_path):
    dest = tmp_path / "pkg"
    with atomic_dir(dest) as staging:
        write_version(staging, "v0", files=8)
    mixed: list[set[str]] = []
    stop = threading.Event()

    def read() -> None:
        """Open the folder once, then read every file in it, as a loader does."""
        while not stop.is_set():
            try:
                fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:  # between the two renames there is no folder
                continue
            try:
                seen = set()
                for name in os.listdir(fd):
                    part = os.open(name, os.O_RDONLY, dir_fd=fd)
                    with os.fdopen(part) as f:
                        seen.add(f.read())
            except FileNotFoundError:  # the replaced folder was deleted under the reader
                continue
            finally:
                os.close(fd)
            if len(seen) > 1:
                mixed.append(seen)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for version in range(1, 60):
            with atomic_dir(dest) as staging:
                write_version(staging, f"v{version}", files=8)
    finally:
        stop.set()
        reader.join()
    assert mixed == []
    assert versions_in(dest) == {"v59"}


KILLED_WRITER = """
import sys, time
from pathlib import Path
from aads.atomic import atomic_dir
with atomic_dir(Path(sys.argv[1])) as staging:
    (staging / "part0.txt").write_text("v2")
    print("writing", flush=True)
    time.sleep(60)
"""


def test_a_writer_killed_with_sigkill_leaves_the_earlier_folder_intact(tmp_path):
    dest = tmp_path / "pkg"
    with atomic_dir(dest) as staging:
        write_version(staging, "v1")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(dest)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert writer.stdout.readline() == b"writing\n"
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        writer.kill()
        writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL
    assert versions_in(dest) == {"v1"} and len(list(dest.iterdir())) == 3
    # The killed writer could not clean up: its hidden staging folder is all that is left.
    assert [name.startswith(".pkg.") for name in siblings(dest)] == [True]
