from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os

import pytest

from agent import cpio
from agent.bake.segments import SegmentFormat, measure_zstd_frame, merged_members, split_segments
from agent.errors import BuildError


def archive(*entries: cpio.Entry) -> bytes:
    buf = io.BytesIO()
    cpio.write(cpio.with_parents(entries), buf)
    return buf.getvalue()


def packed(fmt: str, data: bytes) -> bytes:
    if fmt == "gzip":
        return gzip.compress(data, mtime=0)
    if fmt == "xz":
        return lzma.compress(data, check=lzma.CHECK_CRC32)
    if fmt == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_ALONE)
    if fmt == "bzip2":
        return bz2.compress(data)
    return cpio.compress(data, fmt)


@pytest.mark.parametrize("fmt", ["gzip", "xz", "lzma", "bzip2", "zstd"])
def test_plain_then_compressed_then_appended(fmt: str) -> None:
    early = archive(cpio.regular("kernel/x86/microcode/GenuineIntel.bin", b"ucode"))
    main = archive(cpio.regular("init", b"#!/bin/sh\n", 0o755), cpio.regular("etc/a", b"1"))
    extra = archive(cpio.regular("etc/a", b"2"))
    first, second = packed(fmt, main), packed(fmt, extra)
    blob = early + first + b"\0" * 3 + second
    segments = split_segments(blob, "img")
    assert [(s.offset, s.length, s.format.value) for s in segments] == [
        (0, len(early), "cpio"), (len(early), len(first), fmt),
        (len(early) + len(first) + 3, len(second), fmt)]
    assert segments[1].unpacked_size == len(main)
    tree = merged_members(segments)
    assert tree["etc/a"].data == b"2"      # the later archive wins, as in the kernel
    assert tree["kernel/x86/microcode/GenuineIntel.bin"].data == b"ucode"


def test_zstd_frame_of_many_blocks_is_measured_exactly() -> None:
    data = os.urandom(300_000) + b"\0" * 400_000     # raw, RLE and compressed blocks
    frame = cpio.compress(data, "zstd", 3)
    assert measure_zstd_frame(frame + b"tail", 0, "img") == len(frame)


def test_zstd_stream_of_several_archives() -> None:
    data = archive(cpio.regular("a", b"1")) + archive(cpio.regular("b", b"2"))
    segments = split_segments(cpio.compress(data, "zstd"), "img")
    assert sorted(merged_members(segments)) == ["a", "b"]


ERRORS = [
    ("truncated gzip", lambda m: packed("gzip", m)[:-9],
     "img: gzip stream at offset 0 is truncated"),
    ("truncated zstd", lambda m: packed("zstd", m)[:-9],
     "img: zstd frame at offset 0 is truncated"),
    ("truncated plain cpio", lambda m: m[:-40],
     "img: segment 0 at offset 0: cpio: no newc header at offset 116"),
    ("compressed cpio without trailer", lambda m: packed("xz", m[:-124]),
     "img: segment 0 at offset 0: cpio: no newc header at offset 116"),
    ("junk after the archive", lambda m: m + b"junk",
     "img: unknown data at offset 240 (not cpio, gzip, xz, lzma, bzip2, zstd or lz4)"),
]


@pytest.mark.parametrize("make,message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_broken_input_is_refused_with_the_place(make: object, message: str) -> None:
    blob = make(archive(cpio.regular("a", b"x" * 4)))  # type: ignore[operator]
    with pytest.raises(BuildError) as err:
        split_segments(blob, "img")
    assert str(err.value) == message


def test_only_zero_padding_is_no_segment() -> None:
    assert split_segments(b"\0" * 16, "img") == []
    assert split_segments(b"", "img") == []


def test_lz4_legacy_takes_the_rest() -> None:
    from agent.tools import run

    data = archive(cpio.regular("a", b"1"))
    blob = run(["lz4", "-l", "-q", "-c"], input=data, capture=True).stdout
    segments = split_segments(blob, "img")
    assert [s.format for s in segments] == [SegmentFormat.LZ4]
    assert merged_members(segments)["a"].data == b"1"
