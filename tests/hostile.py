"""Makers of hostile files shared by the corpus tests: each `make(path)` puts at `path`
something a careless or hostile user might name instead of a regular file."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path


def mkfifo(path: Path) -> None:
    os.mkfifo(path)


def mkdir(path: Path) -> None:
    path.mkdir()


def chardev(path: Path) -> None:
    """/dev/null's numbers (needs root)."""
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))


def symlink_to(target: str) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(target)


def unix_socket(path: Path) -> None:
    """Bound where the name is short (AF_UNIX paths are at most 107 bytes), then moved."""
    short = Path(tempfile.mkdtemp(prefix="oa", dir="/tmp"))
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(short / "s"))
        os.rename(short / "s", path)
    finally:
        sock.close()
        short.rmdir()


def sparse(size: int) -> Callable[[Path], None]:
    """A file of `size` bytes that takes no space (a size lie costs the reader, not us)."""
    def make(path: Path) -> None:
        with path.open("wb") as f:
            f.truncate(size)
    return make


def alias_bomb_lines(levels: int = 8) -> list[str]:
    """YAML anchors a0..aN, each ten aliases of the one before: 10**N leaves when walked."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return lines


def put(path: Path, data: bytes | Callable[[Path], None]) -> Path:
    """`data` written at `path`, or `data(path)` called to make something there."""
    if callable(data):
        data(path)
    else:
        path.write_bytes(data)
    return path
