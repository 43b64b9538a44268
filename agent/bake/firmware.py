"""Firmware that extensions ship, copied into the initramfs's own firmware folder.

The kernel loads firmware from the root it has at the time, so a driver probing before
the root switch only finds files in the initramfs (Talos moves them there too). The
folder is resolved through the input initramfs's own symlinks: on a merged-/usr
initramfs `lib` is a symlink, and a directory member named `lib` would replace it
(init/initramfs.c clean_path unlinks an entry of another type).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent import cpio
from agent.bake.microcode import UCODE_FOLDERS
from agent.errors import BuildError
from agent.paths import walk

FIRMWARE_DIRS = ("lib/firmware", "usr/lib/firmware")


def resolve_in_tree(tree: Mapping[str, cpio.Entry], path: str) -> str:
    """`path` with every symlink among the archive members followed (like the kernel would)."""
    def probe(cand: str) -> object:
        entry = tree.get(cand.lstrip("/"))
        if entry is None or not stat.S_ISLNK(entry.mode):
            return True   # a missing part is created by the archive we append
        return entry.content().decode(errors="surrogateescape")

    walked = walk(path, probe)
    if walked is None:
        raise BuildError(f"initramfs: too many symlinks resolving /{path}")
    return walked[0].lstrip("/")


def collect_firmware(roots: Sequence[Path]) -> dict[str, Path]:
    """Relative firmware path -> file, over every extension root (later roots win). CPU
    microcode is left out: it works only from the early archive (agent.bake.early)."""
    found: dict[str, Path] = {}
    for root in roots:
        for rel in FIRMWARE_DIRS:
            top = root / rel
            if top.is_symlink() or not top.is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames.sort()
                if dirpath == str(top):
                    dirnames[:] = [d for d in dirnames if d not in UCODE_FOLDERS.values()]
                # a symlink to a folder is listed with the folders, and never walked
                links = [d for d in dirnames if (Path(dirpath) / d).is_symlink()]
                for name in sorted(filenames + links):
                    path = Path(dirpath) / name
                    found[str(path.relative_to(top))] = path
    return found


def firmware_entries(roots: Sequence[Path], dest: str) -> list[cpio.Entry]:
    """cpio members placing every extension firmware file under `dest` (no leading /)."""
    entries = []
    for rel, path in sorted(collect_firmware(roots).items()):
        name = f"{dest}/{rel}"
        if path.is_symlink():
            entries.append(cpio.symlink(name, os.readlink(path)))
        else:
            entries.append(cpio.regular(name, path, 0o644))
    return entries
