"""The initramfs hooks' bake: the extensions of `build`, written into the tree of an
initramfs that initramfs-tools or dracut is building rather than appended to an image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent import listfile
from agent.bake.build import (
    BuildRequest,
    EarlyStep,
    Progress,
    archive_entries,
    bake_layers,
    check_store,
    gather_sources,
    stored,
)
from agent.bake.early import MAX_EARLY_BYTES, with_early
from agent.bake.firmware import firmware_entries
from agent.bake.workdir import work_folder
from agent.files import read_regular
from agent.output import write_bytes_atomically


@dataclass(frozen=True)
class TreeBake:
    layers: tuple[listfile.Layer, ...]
    microcode: tuple[str, ...]    # the extensions shipping CPU microcode
    early: bool                   # it went into the early archive (none given: left out)


def read_early(path: Path) -> tuple[bytes, list[str]]:
    try:   # what Debian's microcode hooks wrote: a regular file of early members
        return read_regular(str(path), MAX_EARLY_BYTES, follow=True), []
    except OSError as exc:
        return b"", [f"{path}: cannot read the early archive: {exc.strerror}"]


def bake_into_tree(request: BuildRequest, destdir: Path, progress: Progress | None = None,
                   early: Path | None = None) -> TreeBake:
    """The initramfs hooks' bake: the same images, list file and firmware as bake_initramfs,
    written into the tree of an initramfs being built (initramfs-tools ${DESTDIR}, dracut
    ${initdir}). An empty list is written too: the boot then records no extensions. With a
    store, the images go there and only the list into the tree.
    `early`: the early archives initramfs-tools collects to put first in the image (what
    Debian's microcode hooks wrote, or nothing); the extensions' CPU microcode is merged
    into it as build merges it into an image's. `request.initramfs` and `request.output`
    are not used."""
    from agent.initramfs.tree import install_entries, resolve_dir

    sources, problems = gather_sources(request, allow_empty=True)
    problems += check_store(request) if sources else []
    head, found = read_early(early) if early is not None else (b"", [])
    step = EarlyStep(head, str(early))
    with work_folder() as work:
        layers, exts = bake_layers(sources, problems + found, request, work, progress, step) \
            if sources or problems or found else ([], [])
        rootfs = [e.root / "rootfs" for e in exts]
        dest = resolve_dir(destdir, "lib/firmware")
        with stored(request, layers) as layers:
            install_entries(archive_entries(layers, firmware_entries(rootfs, dest),
                                            request.epoch), destdir)
        if early is not None and step.plan is not None:
            write_bytes_atomically(early, with_early(step.plan, head, request.epoch))
    return TreeBake(tuple(b.layer for b in layers), step.shipped,
                    early is not None and step.plan is not None)
