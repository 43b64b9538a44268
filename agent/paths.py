"""Symlink resolution inside a tree that is not the running system's `/`: a folder that
will become a root, an archive's members. Light enough for the boot path (os only)."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

MISSING = object()   # what a probe returns for a path that does not exist
MAX_SYMLINKS = 40    # as the kernel's path walk (include/linux/namei.h MAXSYMLINKS)


def walk(path: str, probe: Callable[[str], object]) -> tuple[str, list[tuple[str, str]]] | None:
    """Resolve `path` component by component like realpath. `probe(p)` returns a symlink's
    target text, MISSING, or anything else for an existing non-link. Returns the real path and
    every symlink met (absolute link path, target), or None when a component is missing or
    the links loop."""
    links: list[tuple[str, str]] = []
    parts = [p for p in path.split("/") if p]
    done = "/"
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            done = os.path.dirname(done.rstrip("/")) or "/"
            continue
        cand = os.path.join(done, part)
        found = probe(cand)
        if found is MISSING or len(links) > MAX_SYMLINKS:
            return None
        if isinstance(found, str):
            links.append((cand, found))
            parts = [p for p in found.split("/") if p] + parts
            if found.startswith("/"):
                done = "/"
            continue
        done = cand
    return done, links
