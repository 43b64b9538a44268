"""cpio "newc" archives, the format the kernel unpacks into the initramfs.

Written in sorted order with fixed owners and mtimes so the same inputs give the
same bytes (Documentation/driver-api/early-userspace/buffer-format.rst). Device
nodes are made in the archive itself, so the host needs no mknod.
"""

from __future__ import annotations

import hashlib
import io
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.errors import BuildError
from agent.tools import run

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_LEN = 110
_HEX = b"0123456789abcdefABCDEF"


@dataclass(frozen=True)
class Entry:
    """One archive member. `data` is the content (or a path read when written)."""

    name: str                      # relative, no leading "/" (e.g. "usr/bin/python3")
    mode: int                      # full st_mode, type bits included
    data: bytes | Path = b""
    rdev: tuple[int, int] = (0, 0)  # (major, minor) for device nodes
    mtime: int = 0
    uid: int = 0
    gid: int = 0
    size: int = -1                 # read back: the member's size, also when `data` was not kept
    sha256: str = ""               # read back: hex digest of content not kept

    def content(self) -> bytes:
        return self.data.read_bytes() if isinstance(self.data, Path) else self.data


def directory(name: str, perm: int = 0o755, mtime: int = 0) -> Entry:
    return Entry(name, stat.S_IFDIR | perm, mtime=mtime)


def regular(name: str, data: bytes | Path, perm: int = 0o644, mtime: int = 0) -> Entry:
    return Entry(name, stat.S_IFREG | perm, data, mtime=mtime)


def symlink(name: str, target: str, mtime: int = 0) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode(), mtime=mtime)


def chardev(name: str, major: int, minor: int, perm: int = 0o600, mtime: int = 0) -> Entry:
    return Entry(name, stat.S_IFCHR | perm, rdev=(major, minor), mtime=mtime)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def header_size(name: str) -> int:
    """Bytes of a member's header and name, padded: where its data starts."""
    return (_HEADER_LEN + len(name.encode()) + 1 + 3) & ~3


def _header(ino: int, e: Entry, size: int, nlink: int) -> bytes:
    name = e.name.encode() + b"\0"
    fields = (ino, e.mode, e.uid, e.gid, nlink, e.mtime, size, 0, 0,
              e.rdev[0], e.rdev[1], len(name), 0)
    head = MAGIC + b"".join(b"%08X" % f for f in fields)
    return head + name + _pad(len(head) + len(name))


def with_parents(entries: Iterable[Entry], mtime: int = 0) -> list[Entry]:
    """Add missing parent directories, drop duplicate names (last wins), sort by name."""
    by_name: dict[str, Entry] = {}
    for e in entries:
        name = e.name.strip("/")
        if not name or ".." in name.split("/"):
            raise BuildError(f"cpio: bad member name {e.name!r}")
        by_name[name] = e if name == e.name else Entry(name, e.mode, e.data, e.rdev, e.mtime,
                                                       e.uid, e.gid)
    for name in list(by_name):
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            by_name.setdefault(parent, directory(parent, mtime=mtime))
    return [by_name[n] for n in sorted(by_name)]


def write(entries: Iterable[Entry], out: BinaryIO) -> int:
    """Write a newc archive of `entries` (in the given order) and the trailer; return its size."""
    written = 0
    ino = 0
    for ino, e in enumerate(entries, start=1):
        data = e.content() if stat.S_ISREG(e.mode) or stat.S_ISLNK(e.mode) else b""
        nlink = 2 if stat.S_ISDIR(e.mode) else 1
        chunk = _header(ino, e, len(data), nlink)
        out.write(chunk)
        out.write(data)
        out.write(_pad(len(data)))
        written += len(chunk) + len(data) + len(_pad(len(data)))
    chunk = _header(ino + 1, Entry(TRAILER, 0), 0, 1)
    out.write(chunk)
    written += len(chunk)
    return written


Keep = Callable[[str, int, int], bool]   # (name, mode, size): keep the member's bytes?
_CHUNK = 1 << 20


def read_archive(read: Callable[[int], bytes], start: int,
                 keep: Keep | None = None) -> tuple[list[Entry], int]:
    """One archive from a stream at its first header, `start` bytes into that stream
    (`read(n)` returns n bytes, fewer only at the end). Returns the members and the
    archive's length. Content `keep` declines is hashed as it streams by, never held:
    memory stays bounded whatever the sizes."""
    entries: list[Entry] = []
    length = 0
    while True:
        pos = start + length
        head = read(_HEADER_LEN)
        if len(head) < _HEADER_LEN or head[:6] not in (MAGIC, b"070702"):
            raise BuildError(f"cpio: no newc header at offset {pos}")
        if head[6:].translate(None, _HEX):   # int() would take " 1", "+1", "1_0"
            raise BuildError(f"cpio: header at offset {pos} has a field that is not "
                             "8 hex digits")
        f = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, uid, gid, mtime, size, rmaj, rmin, namesize = (f[1], f[2], f[3], f[5], f[6],
                                                             f[9], f[10], f[11])
        raw_name = read(namesize)
        name = raw_name[:namesize - 1].decode(errors="surrogateescape")
        if len(raw_name) < namesize:
            raise BuildError(f"cpio: member name at offset {pos} is truncated")
        length += _HEADER_LEN + namesize
        length += len(read(-length % 4))
        data, digest = read_data(read, size, keep is None or keep(name, mode, size))
        if data is None:
            raise BuildError(f"cpio: member {name!r} is truncated")
        length += size
        pad = -length % 4
        if len(read(pad)) == pad or name == TRAILER:
            length += pad
        if name == TRAILER:
            return entries, length
        entries.append(Entry(name, mode, data, (rmaj, rmin), mtime, uid, gid, size, digest))


def read_data(read: Callable[[int], bytes], size: int, keep: bool) -> tuple[bytes | None, str]:
    """(content or b"", sha256 of content not kept); None when the stream ends early."""
    if keep:
        data = read(size)
        return (data if len(data) == size else None), ""
    digest = hashlib.sha256()
    left = size
    while left:
        chunk = read(min(left, _CHUNK))
        if not chunk:
            return None, ""
        digest.update(chunk)
        left -= len(chunk)
    return b"", digest.hexdigest()


def read(blob: bytes, offset: int = 0) -> tuple[list[Entry], int]:
    """Read one archive starting at `offset`; return its members and the offset after it."""
    stream = io.BytesIO(blob)
    stream.seek(offset)
    entries, length = read_archive(stream.read, offset)
    return entries, offset + length


def iter_archives(blob: bytes) -> Iterator[list[Entry]]:
    """Read consecutive uncompressed archives, skipping the zero padding between them."""
    pos = 0
    while pos < len(blob):
        if blob[pos:pos + 1] == b"\0":
            pos += 1
            continue
        entries, pos = read(blob, pos)
        yield entries


def compress(data: bytes, method: str = "zstd", level: int | None = None) -> bytes:
    """Compress with the external tool, single-threaded so the output is reproducible."""
    if method == "zstd":
        argv = ["zstd", "-q", "-c", "-T1", f"-{level or 19}"]
    elif method == "xz":
        # The kernel's xz decoder wants the crc32 check (Documentation/staging/xz.rst).
        argv = ["xz", "-q", "-c", "-T1", "--check=crc32", f"-{level or 6}"]
    elif method == "gzip":
        argv = ["gzip", "-n", "-c", f"-{level or 9}"]
    elif method == "none":
        return data
    else:
        raise BuildError(f"compression {method!r}: use zstd, xz, gzip or none")
    return run(argv, input=data, capture=True).stdout


def decompress(data: bytes, method: str) -> bytes:
    tool = {"zstd": ["zstd", "-q", "-d", "-c"], "xz": ["xz", "-q", "-d", "-c"],
            "gzip": ["gzip", "-q", "-d", "-c"]}.get(method)
    if tool is None:
        return data
    return run(tool, input=data, capture=True).stdout
