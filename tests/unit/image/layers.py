"""Helpers that write layer tars member by member, hostile ones included."""

from __future__ import annotations

import gzip
import io
import tarfile
from dataclasses import dataclass


@dataclass(frozen=True)
class M:
    """One member: kind is file, dir, sym, link, chr, blk, fifo."""

    name: str
    kind: str = "file"
    data: bytes = b"x"
    link: str = ""
    mode: int = 0o644
    size: int | None = None     # a declared size that differs from the data (lies)


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
          "link": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


def layer(*members: M, gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = _TYPES[m.kind]
            info.mode = 0o755 if m.kind == "dir" and m.mode == 0o644 else m.mode
            info.linkname = m.link
            if m.kind == "file":
                info.size = len(m.data)
                tf.addfile(info, io.BytesIO(m.data))
            else:
                tf.addfile(info)
    data = buf.getvalue()
    if any(m.size is not None for m in members):
        data = lie_about_size(data, members)
    return gzip.compress(data, mtime=0) if gz else data


def lie_about_size(data: bytes, members: tuple[M, ...]) -> bytes:
    """Rewrite the size field of the first member whose declared size is given."""
    m = next(m for m in members if m.size is not None)
    assert m.size is not None
    raw = bytearray(data)
    off = 0
    while off < len(raw):
        name = raw[off:off + 100].rstrip(b"\0").decode()
        if name == m.name:
            raw[off + 124:off + 136] = b"%011o\0" % m.size
            chksum = sum(raw[off:off + 148]) + 8 * 32 + sum(raw[off + 156:off + 512])
            raw[off + 148:off + 156] = b"%06o\0 " % chksum
            return bytes(raw)
        off += 512
    raise AssertionError(f"{m.name} not found")
