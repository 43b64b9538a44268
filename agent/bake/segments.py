"""Split a concatenated initramfs into its segments, as the kernel walks it.

The kernel (init/initramfs.c, unpack_to_rootfs) reads plain newc archives, skips zero
bytes between them, and hands a compressed stream to its decompressor, which reports
how much input it consumed; the walk goes on after that. gzip, xz, lzma and bzip2
boundaries come from Python's decompressors (`unused_data`); zstd frames are walked by
their block headers (RFC 8878) and decompressed by the zstd tool; lz4's legacy format
has no end marker, so the kernel (and we) take the rest of the file.
"""

from __future__ import annotations

import bz2
import enum
import lzma
import re
import zlib
from dataclasses import dataclass

from agent import cpio
from agent.errors import BuildError
from agent.tools import run


class SegmentFormat(enum.Enum):
    CPIO = "cpio"
    GZIP = "gzip"
    XZ = "xz"
    LZMA = "lzma"
    BZIP2 = "bzip2"
    ZSTD = "zstd"
    LZ4 = "lz4"


@dataclass(frozen=True)
class Segment:
    index: int
    offset: int                       # first byte in the file
    length: int                       # bytes in the file
    format: SegmentFormat
    unpacked_size: int                # bytes of cpio after decompression
    entries: tuple[cpio.Entry, ...]   # members of every archive in it, trailers excluded


_MAGICS: tuple[tuple[bytes, SegmentFormat], ...] = (
    (b"070701", SegmentFormat.CPIO), (b"070702", SegmentFormat.CPIO),
    (b"\x1f\x8b", SegmentFormat.GZIP),
    (b"\xfd7zXZ\x00", SegmentFormat.XZ), (b"\x5d\x00\x00", SegmentFormat.LZMA),
    (b"BZh", SegmentFormat.BZIP2), (b"\x28\xb5\x2f\xfd", SegmentFormat.ZSTD),
    (b"\x02\x21\x4c\x18", SegmentFormat.LZ4),
)
_NONZERO = re.compile(rb"[^\0]")


def detect_format(blob: bytes, pos: int) -> SegmentFormat | None:
    for magic, fmt in _MAGICS:
        if blob.startswith(magic, pos):
            return fmt
    return None


def measure_zstd_frame(blob: bytes, pos: int, where: str) -> int:
    """Length of the zstd frame at `pos`, from its header and block headers."""
    def need(n: int, at: int) -> None:
        if at + n > len(blob):
            raise BuildError(f"{where}: zstd frame at offset {pos} is truncated")

    need(5, pos)
    fhd = blob[pos + 4]
    single = (fhd >> 5) & 1
    fcs_size = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    at = pos + 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs_size
    while True:
        need(3, at)
        head = int.from_bytes(blob[at:at + 3], "little")
        kind, size = (head >> 1) & 3, head >> 3
        if kind == 3:
            raise BuildError(f"{where}: zstd frame at offset {pos} has a reserved block type")
        at += 3 + (1 if kind == 1 else size)
        if head & 1:
            break
    at += 4 if (fhd >> 2) & 1 else 0
    need(0, at)
    return at - pos


def _stream(decoder: zlib._Decompress | lzma.LZMADecompressor | bz2.BZ2Decompressor,
            blob: bytes, pos: int, fmt: SegmentFormat, where: str) -> tuple[bytes, int]:
    try:
        data = decoder.decompress(blob[pos:])
    except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
        raise BuildError(f"{where}: {fmt.value} stream at offset {pos} is corrupt: {exc}") from None
    if not decoder.eof:
        raise BuildError(f"{where}: {fmt.value} stream at offset {pos} is truncated")
    return data, len(blob) - pos - len(decoder.unused_data)


def unpack_stream(blob: bytes, pos: int, fmt: SegmentFormat, where: str) -> tuple[bytes, int]:
    """Decompress the stream at `pos`; return its content and its length in the file."""
    if fmt is SegmentFormat.GZIP:
        return _stream(zlib.decompressobj(wbits=31), blob, pos, fmt, where)
    if fmt is SegmentFormat.XZ:
        return _stream(lzma.LZMADecompressor(lzma.FORMAT_XZ), blob, pos, fmt, where)
    if fmt is SegmentFormat.LZMA:
        return _stream(lzma.LZMADecompressor(lzma.FORMAT_ALONE), blob, pos, fmt, where)
    if fmt is SegmentFormat.BZIP2:
        return _stream(bz2.BZ2Decompressor(), blob, pos, fmt, where)
    if fmt is SegmentFormat.ZSTD:
        length = measure_zstd_frame(blob, pos, where)
        return run(["zstd", "-q", "-d", "-c"], input=blob[pos:pos + length],
                   capture=True).stdout, length
    length = len(blob) - pos
    return run(["lz4", "-q", "-d", "-c"], input=blob[pos:], capture=True).stdout, length


def read_archives(data: bytes, where: str) -> list[cpio.Entry]:
    """Members of the concatenated newc archives in `data`, which must end on a trailer."""
    entries: list[cpio.Entry] = []
    try:
        for archive in cpio.iter_archives(data):
            entries.extend(archive)
    except BuildError as exc:
        raise BuildError(f"{where}: {exc}") from None
    return entries


def split_segments(blob: bytes, where: str) -> list[Segment]:
    """Every segment of an initramfs; raise BuildError unless it ends on an archive boundary."""
    segments: list[Segment] = []
    pos = 0
    while (found := _NONZERO.search(blob, pos)) is not None:
        pos = found.start()
        fmt = detect_format(blob, pos)
        at = f"{where}: segment {len(segments)} at offset {pos}"
        if fmt is None:
            raise BuildError(f"{where}: unknown data at offset {pos} "
                             f"(not cpio, gzip, xz, lzma, bzip2, zstd or lz4)")
        if fmt is SegmentFormat.CPIO:
            try:
                members, end = cpio.read(blob, pos)
            except BuildError as exc:
                raise BuildError(f"{at}: {exc}") from None
            segments.append(Segment(len(segments), pos, end - pos, fmt, end - pos,
                                    tuple(members)))
            pos = end
            continue
        data, length = unpack_stream(blob, pos, fmt, where)
        segments.append(Segment(len(segments), pos, length, fmt, len(data),
                                tuple(read_archives(data, at))))
        pos += length
    return segments


def merged_members(segments: list[Segment]) -> dict[str, cpio.Entry]:
    """The tree the kernel would unpack: later members replace earlier ones of the same name."""
    tree: dict[str, cpio.Entry] = {}
    for segment in segments:
        for entry in segment.entries:
            tree[entry.name.strip("/").removeprefix("./")] = entry
    return tree
