"""Shared-library closure of ELF files from DT_NEEDED, searched like the dynamic loader does.

Search order (ld.so(8)): DT_RPATH when there is no DT_RUNPATH, DT_RUNPATH, the ld.so.conf
folders (what ldconfig puts in the cache), then the built-in default folders. Symlinks met on
the way (/lib -> usr/lib, /lib64/ld-linux-x86-64.so.2 -> ...) are recorded so an image can
recreate the same paths.
"""

from __future__ import annotations

import glob
import io
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from agent.errors import BuildError
from agent.paths import MISSING, walk

# glibc's trusted folders on Debian (multiarch first); also what the loader searches when
# an image carries no /etc/ld.so.cache.
DEFAULT_DIRS: tuple[str, ...] = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
                                 "/lib64", "/usr/lib64", "/lib", "/usr/lib")


@dataclass(frozen=True)
class ElfInfo:
    machine: str
    elfclass: int
    interpreter: str | None
    needed: tuple[str, ...]
    search: tuple[str, ...]          # DT_RUNPATH or DT_RPATH folders, $ORIGIN expanded


@dataclass(frozen=True)
class Closure:
    """Real files to copy, symlinks (name -> target) that lead to them, all absolute."""

    files: tuple[str, ...]
    links: tuple[tuple[str, str], ...]


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def parse_elf(stream: BinaryIO, origin: str) -> ElfInfo:
    """DT_NEEDED, DT_RUNPATH/DT_RPATH ($ORIGIN = `origin`) and PT_INTERP of one ELF image."""
    elf = ELFFile(stream)
    interp = next((s.get_interp_name()  # type: ignore[attr-defined]
                   for s in elf.iter_segments()
                   if s["p_type"] == "PT_INTERP"), None)
    needed: list[str] = []
    runpath: list[str] = []
    rpath: list[str] = []
    for sec in elf.iter_sections():
        if not isinstance(sec, DynamicSection):
            continue
        for tag in sec.iter_tags():
            if tag.entry.d_tag == "DT_NEEDED":
                needed.append(tag.needed)  # type: ignore[attr-defined]
            elif tag.entry.d_tag == "DT_RUNPATH":
                runpath += tag.runpath.split(":")  # type: ignore[attr-defined]
            elif tag.entry.d_tag == "DT_RPATH":
                rpath += tag.rpath.split(":")  # type: ignore[attr-defined]
    search = [d.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
              for d in (runpath or rpath) if d]
    return ElfInfo(elf["e_machine"], elf.elfclass, interp, tuple(needed), tuple(search))


def read_elf(path: Path, origin: str | None = None) -> ElfInfo:
    try:
        with open(path, "rb") as f:
            return parse_elf(f, origin if origin is not None else str(PurePosixPath(path).parent))
    except (ELFError, OSError) as exc:
        raise BuildError(f"{path}: not a readable ELF file ({exc})")


def read_ld_so_conf(path: Path = Path("/etc/ld.so.conf"), depth: int = 0) -> list[str]:
    """Folders listed in ld.so.conf, `include` globs followed (like ldconfig)."""
    dirs: list[str] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return dirs
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line.startswith("include") and depth < 8:
            for pattern in line.split()[1:]:
                pattern = pattern if pattern.startswith("/") else str(path.parent / pattern)
                for inc in sorted(glob.glob(pattern)):
                    dirs += read_ld_so_conf(Path(inc), depth + 1)
        elif line.startswith("/"):
            dirs.append(line)
    return dirs


def host_search_dirs() -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for d in [*read_ld_so_conf(), *DEFAULT_DIRS]:
        seen.setdefault(d, None)
    return tuple(seen)


def walk_links(path: str, root: str = "/") -> tuple[str, list[tuple[str, str]]]:
    """`walk` on the host below `root`; a missing last part is returned as is."""
    def probe(cand: str) -> object:
        host = os.path.join(root, cand.lstrip("/"))
        return os.readlink(host) if os.path.islink(host) else True

    walked = walk(path, probe)
    if walked is None:
        raise BuildError(f"{path}: too many levels of symbolic links")
    return walked


def find_library(name: str, dirs: Iterable[str], want: ElfInfo) -> str | None:
    """First `dir/name` that is an ELF of the same machine and class as the one that needs it."""
    for d in dirs:
        cand = os.path.join(d, name)
        if not os.path.exists(cand) or not is_elf(Path(cand)):
            continue
        try:
            info = read_elf(Path(cand))
        except BuildError:
            continue
        if info.machine == want.machine and info.elfclass == want.elfclass:
            return cand
    return None


def resolve_closure(roots: Sequence[Path], dirs: Sequence[str] | None = None) -> Closure:
    """Every file needed to run `roots`: themselves, their interpreter and DT_NEEDED libraries,
    recursively, plus the symlinks leading to each. Missing libraries are one error naming all."""
    search_dirs = tuple(dirs) if dirs is not None else host_search_dirs()
    files: dict[str, None] = {}
    links: dict[str, str] = {}
    missing: list[str] = []
    queue: list[str] = [str(r) for r in roots]
    seen: set[str] = set()
    while queue:
        path = queue.pop(0)
        real, met = walk_links(path)
        links.update(met)
        if real in seen:
            continue
        seen.add(real)
        files[real] = None
        info = read_elf(Path(real), origin=os.path.dirname(path))
        if info.interpreter:
            queue.append(info.interpreter)
        for name in info.needed:
            if "/" in name:
                queue.append(name)
                continue
            found = find_library(name, [*info.search, *search_dirs], info)
            if found is None:
                missing.append(f"{name} (needed by {path})")
            else:
                queue.append(found)
    if missing:
        raise BuildError(f"shared libraries not found: {', '.join(sorted(set(missing)))}")
    return Closure(tuple(files), tuple(sorted(links.items())))


def missing_in_tree(files: Iterable[str], exists: Lookup) -> list[str]:
    """DT_NEEDED names of ELF files in an image that the image cannot satisfy.

    `exists` answers for image paths (symlinks inside the image followed)."""
    problems: list[str] = []
    for path in files:
        info = exists.elf_info(path)
        if info is None:
            continue
        if info.interpreter and not exists.has(info.interpreter):
            problems.append(f"{path}: interpreter {info.interpreter} missing")
        for name in info.needed:
            dirs = [*info.search, *DEFAULT_DIRS]
            if not any(exists.has(os.path.join(d, name)) for d in dirs):
                problems.append(f"{path}: {name} missing")
    return problems


class Lookup:
    """Answers path questions about an unpacked image's member table."""

    def __init__(self, members: dict[str, tuple[int, bytes]]) -> None:
        # name (absolute) -> (mode, data); symlink data is the target
        self.members = members

    def resolve(self, path: str) -> str | None:
        def probe(cand: str) -> object:
            member = self.members.get(cand)
            if member is None:
                return MISSING
            mode, data = member
            return data.decode() if stat.S_ISLNK(mode) else True

        walked = walk(path, probe)
        return None if walked is None else walked[0]

    def has(self, path: str) -> bool:
        return self.resolve(path) is not None

    def elf_info(self, path: str) -> ElfInfo | None:
        real = self.resolve(path)
        if real is None:
            return None
        mode, data = self.members[real]
        if not stat.S_ISREG(mode) or data[:4] != b"\x7fELF":
            return None
        try:
            return parse_elf(io.BytesIO(data), os.path.dirname(path))
        except ELFError:
            return None
