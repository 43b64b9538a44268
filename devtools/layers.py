"""Layer tars written member by member, and the table of hostile ones with the one-line
refusal each must get (the unpack tests check it, the image benchmark times it)."""

from __future__ import annotations

import functools
import gzip
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

LIMIT = 1 << 20     # the unpack limit the hostile table's messages name


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


@functools.cache
def bombs() -> tuple[bytes, bytes]:
    """8 MiB of zeros gzipped to a few KiB; 3000 empty members (headers only)."""
    return (layer(M("zeros", data=bytes(8 * LIMIT)), gz=True),
            layer(*(M(f"e{i}", data=b"") for i in range(3000)), gz=True))


def hostile_cases(outside: Path) -> list[tuple[str, list[bytes], str]]:
    out = str(outside)
    return [
        ("dotdot", [layer(M("../escape"))],
         "member '../escape': '..' components are not allowed"),
        ("dotdot-deep", [layer(M("a/../../escape"))],
         "member 'a/../../escape': '..' components are not allowed"),
        ("absolute", [layer(M(f"{out}/abs"))],
         f"member '{out}/abs': absolute member names are not allowed"),
        ("symlink-absolute", [layer(M("link", "sym", link=out), M("link/pwned"))],
         f"member 'link/pwned': writes through symlink 'link' -> '{out}', which points "
         "outside the staging folder"),
        ("symlink-relative", [layer(M("d", "dir"), M("d/link", "sym", link="../../outside"),
                                    M("d/link/pwned"))],
         "member 'd/link/pwned': writes through symlink 'd/link' -> '../../outside', which "
         "points outside the staging folder"),
        ("symlink-chain", [layer(M("a", "sym", link="b"), M("b", "sym", link="../outside"),
                                 M("a/pwned"))],
         "member 'a/pwned': writes through symlink 'b' -> '../outside', which points outside "
         "the staging folder"),
        ("symlink-earlier-layer", [layer(M("link", "sym", link=out)),
                                   layer(M("link/pwned"))],
         f"member 'link/pwned': writes through symlink 'link' -> '{out}', which points "
         "outside the staging folder"),
        ("symlink-loop", [layer(M("a", "sym", link="b"), M("b", "sym", link="a"),
                                M("a/x"))],
         "member 'a/x': too many levels of symlinks"),
        ("hardlink-absolute", [layer(M("h", "link", link=f"{out}/secret"))],
         f"member 'h': hard link target '{out}/secret' is outside the staging folder"),
        ("hardlink-dotdot", [layer(M("h", "link", link="../outside/secret"))],
         "member 'h': hard link target '../outside/secret' is outside the staging folder"),
        ("hardlink-through-symlink", [layer(M("l", "sym", link=out),
                                            M("h", "link", link="l/secret"))],
         f"member 'h': writes through symlink 'l' -> '{out}', which points outside the "
         "staging folder"),
        ("hardlink-missing", [layer(M("h", "link", link="nothing"))],
         "member 'h': hard link target 'nothing' does not exist"),
        ("char-device", [layer(M("null", "chr"))], "member 'null': device files are not allowed"),
        ("block-device", [layer(M("sda", "blk"))], "member 'sda': device files are not allowed"),
        ("fifo", [layer(M("pipe", "fifo"))], "member 'pipe': fifos are not allowed"),
        ("whiteout-through-symlink", [layer(M("l", "sym", link=out)),
                                      layer(M("l/.wh.secret"))],
         f"member 'l/.wh.secret': writes through symlink 'l' -> '{out}', which points outside "
         "the staging folder"),
        ("opaque-through-symlink", [layer(M("l", "sym", link="../outside")),
                                    layer(M("l/.wh..wh..opq"))],
         "member 'l/.wh..wh..opq': writes through symlink 'l' -> '../outside', which points "
         "outside the staging folder"),
        ("gzip-bomb", [bombs()[0]],
         f"src: layer 0: unpacks to more than the limit of {LIMIT} bytes"),
        ("size-lie", [layer(M("huge", size=5 * 2**30))],
         f"src: layer 0: unpacks to more than the limit of {LIMIT} bytes"),
        ("header-bomb", [bombs()[1]],
         f"src: layer 0: unpacks to more than the limit of {LIMIT} bytes"),
    ]
