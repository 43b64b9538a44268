"""Opening an input file without surprises, on the boot path and the build side alike.

A path named by an input may be a fifo (open() blocks forever), a symlink to /dev/zero
(a read never ends), a device or a socket. open_regular() opens without blocking (and on
the boot path without following a final symlink), checks with fstat that it holds a
regular file of a bounded or an expected size, and only then hands the descriptor back,
blocking again; read_regular() reads such a file with that bound, and FileBuffer reads a
large one by offset, a slice at a time. Errors are OSError
(errno, reason, path), as agent.syscalls raises them. Light enough for PID 1 (os, stat,
errno only).
"""

from __future__ import annotations

import errno
import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:   # typing imports re and collections: too heavy for PID 1
    from typing import overload

_CHUNK = 1 << 16


def open_regular(path: str, *, max_size: int = -1, size: int = -1,
                 follow: bool = False) -> tuple[int, int]:
    """(fd, size) of the regular file at `path`: at most `max_size` bytes (when >= 0),
    exactly `size` bytes (when >= 0); a final symlink is refused unless `follow`."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        # lstat first: opening a device node (a tape, a terminal) can itself do something
        st = os.stat(path, follow_symlinks=follow)
        if stat.S_ISREG(st.st_mode):
            fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise OSError(errno.ELOOP, "a symbolic link, not a regular file", path) from None
        raise
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, f"{file_kind(st.st_mode)}, not a regular file", path)
    try:
        st = os.fstat(fd)      # the file opened, whatever happened to the path meanwhile
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{file_kind(st.st_mode)}, not a regular file", path)
        if max_size >= 0 and st.st_size > max_size:
            raise OSError(errno.EFBIG, f"{st.st_size} bytes, over the limit of {max_size}",
                          path)
        if size >= 0 and st.st_size != size:
            raise OSError(errno.EINVAL, f"size {st.st_size} bytes, the list says {size}",
                          path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a fifo"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def read_fd(fd: int, path: str, limit: int) -> bytes:
    """At most `limit` bytes from `fd`; EFBIG when there are more (the file grew)."""
    chunks: list[bytes] = []
    total = 0
    while chunk := os.read(fd, min(_CHUNK, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise OSError(errno.EFBIG, f"over the limit of {limit} bytes", path)
    return b"".join(chunks)


def read_regular(path: str, max_size: int, *, follow: bool = False) -> bytes:
    """The bytes of the regular file at `path`, of at most `max_size` bytes."""
    fd, _ = open_regular(path, max_size=max_size, follow=follow)
    try:
        return read_fd(fd, path, max_size)
    finally:
        os.close(fd)


class FileBuffer:
    """An open regular file sliced like bytes (`buf[i]`, `buf[a:b]`, `len(buf)`), each slice
    read with pread: nothing mapped (an address-space limit counts mappings), nothing held
    but the slice asked for. A slice past a shrunken end is short, as on shorter bytes.
    FileBuffer(-1, 0) stands for no file: empty."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    def __len__(self) -> int:
        return self.size

    if TYPE_CHECKING:
        @overload
        def __getitem__(self, key: int) -> int: ...
        @overload
        def __getitem__(self, key: slice) -> bytes: ...

    def __getitem__(self, key: int | slice) -> int | bytes:
        if isinstance(key, int):
            key += self.size if key < 0 else 0
            data = self[key:key + 1] if 0 <= key < self.size else b""
            if not data:
                raise IndexError("file offset out of range")
            return data[0]
        start, stop, step = key.indices(self.size)
        if step != 1:
            raise ValueError("FileBuffer slices have no step")
        return os.pread(self.fd, max(0, stop - start), start) if stop > start else b""

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FileBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_buffer(path: str, max_size: int) -> FileBuffer:
    """The regular file at `path` (a final symlink followed), of at most `max_size` bytes,
    as a FileBuffer the caller closes."""
    return FileBuffer(*open_regular(path, max_size=max_size, follow=True))
