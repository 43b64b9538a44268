"""Build outputs: written so that readers see the old version or the complete new one, never
a part, and stamped with SOURCE_DATE_EPOCH so the same inputs give the same bytes.

The data goes to an unnamed file (O_TMPFILE) in the destination folder, so a build killed
mid-write leaves nothing behind; once fsynced it gets a temporary name and is renamed over
the destination. Filesystems without O_TMPFILE get a named temporary file instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from agent.errors import BuildError, UsageError


def open_unnamed(folder: Path, name: str) -> tuple[int, Path | None]:
    """An fd for a new file in `folder`; the Path is set when it had to be a named file."""
    try:
        return os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o644), None
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    for n in range(1000):
        path = folder / f".{name}.tmp-{os.getpid()}-{n}"
        try:
            return os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


def write_atomically(dest: Path, write: Callable[[BinaryIO], None], mode: int = 0o644) -> None:
    """Call `write` with a file that becomes `dest` only once complete and on disk."""
    folder = dest.parent if str(dest.parent) else Path(".")
    try:
        fd, named = open_unnamed(folder, dest.name)
    except OSError as exc:
        raise BuildError(f"{dest}: cannot create a file in {folder}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb", closefd=False) as out:
            write(out)
            out.flush()
            os.fchmod(fd, mode)
            os.fsync(fd)
        if named is None:
            named = folder / f".{dest.name}.tmp-{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                named.unlink()
            # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd names an O_TMPFILE file without
            # CAP_DAC_READ_SEARCH (open(2)); a dir fd makes Python call linkat, not link.
            dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.link(f"/proc/self/fd/{fd}", named.name, dst_dir_fd=dir_fd,
                        follow_symlinks=True)
            finally:
                os.close(dir_fd)
        os.replace(named, dest)
        named = None
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise BuildError(f"{dest}: cannot write: {exc.strerror}") from None
    finally:
        os.close(fd)
        if named is not None:
            with contextlib.suppress(OSError):
                named.unlink()


def write_bytes_atomically(dest: Path, data: bytes, mode: int = 0o644) -> None:
    def write(out: BinaryIO) -> None:
        out.write(data)

    write_atomically(dest, write, mode)


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH (https://reproducible-builds.org/specs/source-date-epoch/), else 0."""
    text = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not text.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={text!r}: not a number of seconds")
    return int(text)
