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
import stat
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from agent import cpio
from agent.bake.firmware import resolve_in_tree
from agent.errors import BuildError
from agent.files import FileBuffer
from agent.image.decompress import SliceReader, ZstdStream

Buffer = bytes | FileBuffer    # bytes in memory, or a file read slice by slice


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


def detect_format(blob: Buffer, pos: int) -> SegmentFormat | None:
    head = bytes(blob[pos:pos + 6])
    for magic, fmt in _MAGICS:
        if head.startswith(magic):
            return fmt
    return None


def measure_zstd_frame(blob: Buffer, pos: int, where: str) -> int:
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


MAX_UNPACKED = 1 << 30   # all segments together: the kernel must hold it all in RAM
_IN = 1 << 16            # compressed bytes per decoder call
_OUT = 1 << 20           # decompressed bytes per decoder call
_ZEROS = bytes(_OUT)


class Chunks:
    """`read(n)` over an iterator of chunks (exactly n bytes unless the chunks end), counting
    what passed; past `limit` bytes in all it raises BuildError naming `where`."""

    def __init__(self, chunks: Iterator[bytes], where: str, limit: int) -> None:
        self.chunks, self.where, self.limit = chunks, where, limit
        self.buf, self.pos, self.consumed = b"", 0, 0

    def fill(self, n: int) -> None:
        have = len(self.buf) - self.pos
        if have >= n:
            return
        parts = [self.buf[self.pos:]]   # joined once: a large read is not copied per chunk
        while have < n:
            more = next(self.chunks, None)
            if more is None:
                break
            self.limit -= len(more)
            if self.limit < 0:
                raise BuildError(f"{self.where}: unpacks to more than {MAX_UNPACKED} bytes")
            parts.append(more)
            have += len(more)
        self.buf, self.pos = b"".join(parts), 0

    def read(self, n: int) -> bytes:
        self.fill(n)
        out = self.buf[self.pos:self.pos + n]
        self.pos += len(out)
        self.consumed += len(out)
        return out

    def skip_zeros(self) -> bool:
        """Skip zero bytes (padding between archives); False when nothing else is left."""
        while True:
            self.fill(1)
            if self.pos >= len(self.buf):
                return False
            rest = self.buf[self.pos:]
            zeros = len(rest) - len(rest.lstrip(b"\0"))
            self.pos += zeros
            self.consumed += zeros
            if self.pos < len(self.buf):
                return True


def slices(blob: Buffer, pos: int) -> Iterator[bytes]:
    """`blob` from `pos` on, _OUT bytes at a time."""
    while chunk := blob[pos:pos + _OUT]:
        yield chunk
        pos += len(chunk)


def next_data(blob: Buffer, pos: int) -> int | None:
    """Offset of the first non-zero byte from `pos` (zeros pad between archives), or None."""
    while chunk := blob[pos:pos + _OUT]:
        if chunk != _ZEROS[:len(chunk)]:    # a compare, not a strip, for the common case
            return pos + len(chunk) - len(chunk.lstrip(b"\0"))
        pos += len(chunk)
    return None


class Length:
    """The compressed length a decoder reports once its stream has ended."""

    value = 0


Decoder = Any    # zlib's Decompress (no public type), LZMADecompressor, BZ2Decompressor


def inflate(decoder: Decoder, blob: Buffer, pos: int, fmt: SegmentFormat, where: str,
            length: Length) -> Iterator[bytes]:
    """Decompressed chunks of the stream at `pos`, never more than _OUT at once."""
    at = pos
    try:
        while not decoder.eof:
            tail = getattr(decoder, "unconsumed_tail", None)   # zlib's way of needs_input
            needs = not tail if tail is not None else decoder.needs_input
            if needs:
                if at >= len(blob):
                    raise BuildError(f"{where}: {fmt.value} stream at offset {pos} is truncated")
                data, at = bytes(blob[at:at + _IN]), min(at + _IN, len(blob))
            else:
                data = tail or b""
            out = decoder.decompress(data, _OUT)
            if out:
                yield out
    except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
        raise BuildError(f"{where}: {fmt.value} stream at offset {pos} is corrupt: {exc}") from None
    left = len(decoder.unused_data) + len(getattr(decoder, "unconsumed_tail", b""))
    length.value = at - pos - left


def through_tool(tool: str, data: SliceReader, label: str) -> Iterator[bytes]:
    """Chunks from `tool -d` (zstd, lz4), fed `data`; the tool is stopped whatever happens."""
    stream = ZstdStream(data, label, tool)
    try:
        while chunk := stream.read(_OUT):
            yield chunk
    finally:
        stream.close()


MAX_LINK = 4096   # PATH_MAX: a longer symlink target is no path


def keep_links(name: str, mode: int, size: int) -> bool:
    """A cpio.Keep holding symlink targets only: enough to walk the tree as the kernel does."""
    return stat.S_ISLNK(mode) and size <= MAX_LINK


def unpack_stream(blob: Buffer, pos: int, fmt: SegmentFormat, where: str,
                  at: str) -> tuple[Iterator[bytes], Length]:
    """The decompressed chunks of the stream at `pos`; its length in the file is set on the
    returned Length once the chunks are exhausted."""
    length = Length()
    decoders: dict[SegmentFormat, Callable[[], Decoder]] = {
        SegmentFormat.GZIP: lambda: zlib.decompressobj(wbits=31),
        SegmentFormat.XZ: lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ),
        SegmentFormat.LZMA: lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE),
        SegmentFormat.BZIP2: bz2.BZ2Decompressor}
    if fmt in decoders:
        return inflate(decoders[fmt](), blob, pos, fmt, where, length), length
    if fmt is SegmentFormat.ZSTD:
        length.value = measure_zstd_frame(blob, pos, where)
    else:   # lz4 legacy: no end marker, the rest of the file
        length.value = len(blob) - pos
    return through_tool(fmt.value, SliceReader(blob, pos, length.value), at), length


def read_archives(chunks: Chunks, at: str, keep: cpio.Keep | None) -> list[cpio.Entry]:
    """Members of the concatenated newc archives in a stream, which must end on a trailer."""
    entries: list[cpio.Entry] = []
    try:
        while chunks.skip_zeros():
            archive, _ = cpio.read_archive(chunks.read, chunks.consumed, keep)
            entries.extend(archive)
    except BuildError as exc:   # the archive's own problems get the place; the stream's have it
        text = str(exc)
        raise BuildError(f"{at}: {text}" if text.startswith("cpio:") else text) from None
    return entries


def split_segments(blob: Buffer, where: str, keep: cpio.Keep | None = None) -> list[Segment]:
    """Every segment of an initramfs; raise BuildError unless it ends on an archive boundary.
    Member content `keep` declines is only hashed (inspect keeps the list file alone), so
    memory does not grow with what a segment unpacks to."""
    segments: list[Segment] = []
    pos = 0
    budget = MAX_UNPACKED
    while (found := next_data(blob, pos)) is not None:
        pos = found
        fmt = detect_format(blob, pos)
        at = f"{where}: segment {len(segments)} at offset {pos}"
        if fmt is None:
            raise BuildError(f"{where}: unknown data at offset {pos} "
                             f"(not cpio, gzip, xz, lzma, bzip2, zstd or lz4)")
        if fmt is SegmentFormat.CPIO:
            chunks = Chunks(slices(blob, pos), at, budget)
            try:
                members, end = cpio.read_archive(chunks.read, pos, keep)
            except BuildError as exc:
                raise BuildError(f"{at}: {exc}") from None
            segments.append(Segment(len(segments), pos, end, fmt, end, tuple(members)))
            pos += end
            budget -= end
            continue
        stream, length = unpack_stream(blob, pos, fmt, where, at)
        chunks = Chunks(stream, at, budget)
        members = read_archives(chunks, at, keep)
        segments.append(Segment(len(segments), pos, length.value, fmt, chunks.consumed,
                                tuple(members)))
        pos += length.value
        budget -= chunks.consumed
    return segments


def merged_members(segments: list[Segment]) -> dict[str, cpio.Entry]:
    """The tree the kernel would unpack: later members replace earlier ones of the same name,
    each name as the kernel's path walk sees it (so `extensions/../extensions.yaml`, `./x`,
    `a//x` and `link/x` through an earlier symlink land where the kernel puts them)."""
    tree: dict[str, cpio.Entry] = {}
    for segment in segments:
        for entry in segment.entries:
            tree[kernel_name(entry.name, tree)] = entry
    return tree


def kernel_name(name: str, tree: dict[str, cpio.Entry]) -> str:
    """Where the kernel creates member `name` (relative to /): `.`, `..` and empty parts
    resolved, symlinks among the members so far followed in every folder part (the last
    part is replaced, not followed: init/initramfs.c unlinks an entry of another type)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        return ""
    last = parts.pop()
    try:
        folder = resolve_in_tree(tree, "/".join(parts)) if parts else ""
    except BuildError:      # a symlink loop: the kernel would not create the member at all
        return lexical([*parts, last])
    if last == "..":
        return folder.rpartition("/")[0]
    return f"{folder}/{last}" if folder else last


def lexical(parts: list[str]) -> str:
    """`parts` with `..` taken as written (never above the root)."""
    kept: list[str] = []
    for part in parts:
        if part == "..":
            if kept:
                kept.pop()
        else:
            kept.append(part)
    return "/".join(kept)
