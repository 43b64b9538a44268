"""Decompressing layer and initramfs streams with bounded memory: gzip through Python,
zstd (and lz4) through the tool, and a reader that counts and hashes what passes and stops
past a limit. The one home of these readers; agent.image.unpack and agent.bake.segments
use them."""

from __future__ import annotations

import gzip
import hashlib
import threading
from typing import IO

from agent.errors import ToolError, UnpackError
from agent.files import FileBuffer
from agent.tools import start

_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class LayerTooBig(Exception):
    pass


class CountingReader:
    """A read-only stream that hashes what passes and stops past `limit` bytes."""

    def __init__(self, raw: IO[bytes] | ZstdStream, limit: int) -> None:
        self.raw, self.limit, self.count = raw, limit, 0
        self.sha256 = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n if n is not None and n >= 0 else _CHUNK)
        self.count += len(data)
        # tar pads to 10 KiB records past the content; allow a little over the limit for that
        if self.count > self.limit + 65536:
            raise LayerTooBig
        self.sha256.update(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


class SliceReader:
    """`read(n)` over `length` bytes of a buffer from `pos` (an initramfs file): the tool is
    fed slice by slice, never a copy of the whole stream."""

    def __init__(self, buffer: bytes | FileBuffer, pos: int, length: int) -> None:
        self.buffer, self.at, self.end = buffer, pos, pos + length

    def read(self, n: int = -1) -> bytes:
        stop = self.end if n is None or n < 0 else min(self.end, self.at + n)
        data = self.buffer[self.at:stop]
        self.at = max(self.at, stop)
        return data


class ZstdStream:
    """The decompressed bytes of a zstd (or, with `tool`, lz4) stream, through the tool; a
    thread feeds it `raw` (which may be a member of an archive, without a file descriptor
    of its own). Memory stays bounded: the reader takes what it needs, chunk by chunk."""

    def __init__(self, raw: IO[bytes] | SliceReader, label: str, tool: str = "zstd") -> None:
        self.label, self.tool = label, tool
        try:
            self.proc = start([tool, "-d", "-c", "-q"])
        except ToolError as exc:
            raise UnpackError(f"{label}: {tool}-compressed data: {exc}") from None
        self.feeder = threading.Thread(target=self.feed, args=(raw,), daemon=True)
        self.feeder.start()

    def feed(self, raw: IO[bytes] | SliceReader) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            while chunk := raw.read(_CHUNK):
                stdin.write(chunk)
        except (OSError, ValueError):
            pass    # zstd stopped (bad data, or the reader is done): its exit status tells
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def read(self, n: int = -1) -> bytes:
        assert self.proc.stdout is not None
        data = self.proc.stdout.read(n if n >= 0 else _CHUNK)
        if not data and self.proc.wait() != 0:
            assert self.proc.stderr is not None
            lines = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
            why = (lines[-1].removeprefix("zstd: ").removeprefix("/*stdin*\\ : ").strip()
                   if lines else f"exit status {self.proc.returncode}")
            raise UnpackError(f"{self.label}: not a valid {self.tool} stream: {why}")
        return data

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.feeder.join()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def open_decompressed(raw: IO[bytes], label: str) -> IO[bytes] | ZstdStream:
    """Undo gzip or zstd, or nothing for a plain tar."""
    head = raw.read(4)
    raw.seek(0)
    if head.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")     # type: ignore[return-value]
    if head == _ZSTD_MAGIC:
        return ZstdStream(raw, label)
    return raw
