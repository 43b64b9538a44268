"""The build's work folder, `overlay-agent-build.*` in the temp folder, locked for as long as
its build lives: a build killed with SIGKILL cannot remove its own, so each build first
removes the folders of its kind that no live process holds.

The lock is flock(2) on a file inside the folder, so the kernel drops it when the holder dies,
in whichever PID namespace it ran. The lock file gets its name only once locked: a folder
being set up is never mistaken for an abandoned one.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent import syscalls

PREFIX = "overlay-agent-build."
LOCK = ".lock"
# A folder without a lock file is left by an older build or by one killed while taking it;
# it is removed once this old (no build of this version runs unlocked that long).
UNLOCKED_AGE = 3600.0


@contextmanager
def work_folder() -> Iterator[Path]:
    """A fresh locked work folder, removed on exit; stale ones are removed first."""
    remove_stale(Path(tempfile.gettempdir()))
    work = Path(tempfile.mkdtemp(prefix=PREFIX))
    fd = -1
    try:
        fd = hold(work)
        yield work
    finally:
        try:
            remove_locked(work)     # still locked: no one else judges it meanwhile
        except OSError:
            shutil.rmtree(work, ignore_errors=True)
        if fd >= 0:
            os.close(fd)


def hold(work: Path) -> int:
    """Lock `work` for this process; the returned descriptor keeps the lock."""
    pending = work / f"{LOCK}.new"
    fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        syscalls.flock(fd, syscalls.LOCK_EX, str(pending))
        os.rename(pending, work / LOCK)
    except OSError:
        os.close(fd)
        raise
    return fd


def remove_locked(work: Path) -> None:
    """Remove a folder we hold the lock of, the lock file last: a removal cut short by a kill
    leaves a folder that still shows it is free to remove."""
    for child in work.iterdir():
        if child.name == LOCK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    (work / LOCK).unlink(missing_ok=True)
    work.rmdir()


def remove_stale(folder: Path, now: float | None = None) -> list[Path]:
    """Remove this user's work folders in `folder` that no live build holds; never fails."""
    removed = []
    try:
        candidates = sorted(folder.glob(f"{PREFIX}*"))
    except OSError:
        return []
    for candidate in candidates:
        try:
            if remove_if_stale(candidate, time.time() if now is None else now):
                removed.append(candidate)
        except OSError:
            continue    # gone meanwhile, or not ours to judge
    return removed


def remove_if_stale(work: Path, now: float) -> bool:
    info = work.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        return False
    try:
        fd = os.open(work / LOCK, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        if now - info.st_mtime < UNLOCKED_AGE:
            return False
        shutil.rmtree(work)
        return True
    try:
        if not syscalls.flock(fd, syscalls.LOCK_EX | syscalls.LOCK_NB, str(work / LOCK)):
            return False                      # its build is alive
        remove_locked(work)
        return True
    finally:
        os.close(fd)
