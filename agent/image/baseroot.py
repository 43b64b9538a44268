"""The root the extensions will sit on, read from a folder or a squashfs file without mounting.

Only what validation needs: the type of an entry at a path, a symlink's target, and the
os-release VERSION_ID.
"""

from __future__ import annotations

import enum
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from agent.errors import UsageError
from agent.tools import run

SQUASHFS_MAGIC = b"hsqs"
OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")
# unsquashfs -lln: "lrwxrwxrwx 0/0  7 2024-01-01 00:00 squashfs-root/bin -> usr/bin";
# device nodes show "major, minor" where the size is.
_LISTING = re.compile(r"(?P<type>\S)\S{9} +\S+ +(?:\d+, *\d+|\d+) +\S+ +\S+ "
                      r"squashfs-root(?P<path>/.*)?")


class Kind(enum.Enum):
    DIR = "directory"
    FILE = "regular file"
    SYMLINK = "symlink"
    SPECIAL = "special file"


@dataclass(frozen=True)
class BaseEntry:
    kind: Kind
    target: str = ""     # symlink target


def kind_of(mode: int) -> Kind:
    if stat.S_ISDIR(mode):
        return Kind.DIR
    if stat.S_ISREG(mode):
        return Kind.FILE
    if stat.S_ISLNK(mode):
        return Kind.SYMLINK
    return Kind.SPECIAL


@dataclass(frozen=True)
class BaseRoot:
    """A base root: `entries` maps "/usr/sbin" to its entry (a squashfs), or `folder` is read live."""

    where: Path
    folder: Path | None = None
    entries: dict[str, BaseEntry] | None = None

    def lookup(self, path: str) -> BaseEntry | None:
        if self.entries is not None:
            return self.entries.get(path)
        assert self.folder is not None
        full = self.folder / path.lstrip("/")
        try:
            st = full.lstat()
        except OSError:
            return None
        kind = kind_of(st.st_mode)
        return BaseEntry(kind, os.readlink(full) if kind is Kind.SYMLINK else "")

    def read_text(self, path: str) -> str | None:
        """Content of a regular file, following at most a few in-root symlinks; None if absent."""
        for _ in range(8):
            entry = self.lookup(path)
            if entry is None or entry.kind not in (Kind.FILE, Kind.SYMLINK):
                return None
            if entry.kind is Kind.SYMLINK:
                path = os.path.normpath(os.path.join(os.path.dirname(path), entry.target))
                continue
            if self.folder is not None:
                return (self.folder / path.lstrip("/")).read_text(errors="replace")
            proc = run(["unsquashfs", "-cat", self.where, path], capture=True, check=False)
            return proc.stdout.decode(errors="replace") if proc.returncode == 0 else None
        return None

    def os_version(self) -> str | None:
        for path in OS_RELEASE_PATHS:
            text = self.read_text(path)
            if text is not None:
                return parse_os_release(text).get("VERSION_ID")
        return None


def parse_os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            out[key.strip()] = value.strip().strip("'\"")
    return out


def parse_listing(text: str) -> dict[str, BaseEntry]:
    """Parse `unsquashfs -lln` output into path -> entry."""
    entries: dict[str, BaseEntry] = {}
    for line in text.splitlines():
        m = _LISTING.fullmatch(line)
        if m is None:
            continue
        kind = {"d": Kind.DIR, "-": Kind.FILE, "l": Kind.SYMLINK}.get(m.group("type"),
                                                                        Kind.SPECIAL)
        path = m.group("path") or "/"
        target = ""
        if kind is Kind.SYMLINK:
            path, _, target = path.partition(" -> ")
        entries[path] = BaseEntry(kind, target)
    return entries


def load_base_root(path: Path) -> BaseRoot:
    """A folder or a squashfs file; raise UsageError naming `path` otherwise."""
    if path.is_dir():
        return BaseRoot(path, folder=path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read base root: {exc.strerror}") from None
    if magic != SQUASHFS_MAGIC:
        raise UsageError(f"{path}: base root is neither a folder nor a squashfs file")
    proc = run(["unsquashfs", "-lln", path], capture=True)
    return BaseRoot(path, entries=parse_listing(proc.stdout.decode(errors="surrogateescape")))
