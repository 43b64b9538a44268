"""Add the agent to a distribution's initramfs while it is being built: a folder (initramfs-tools
`${DESTDIR}`, dracut `${initdir}`) that already holds the distribution's files and symlinks.

Members are written at the path they resolve to through the tree's own symlinks (`lib` ->
`usr/lib` on a merged-/usr image; an absolute link means the tree's root, never the host's);
a file the tree already has with the same bytes (the C library, the dynamic loader) is left
as it is, so only what the agent adds is counted.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import cpio
from agent.boot.layout import MODULES_LOAD
from agent.errors import BuildError
from agent.initramfs.elfdeps import walk_links
from agent.initramfs.kmods import (
    BOOT_MODULES,
    OPTIONAL_BOOT_MODULES,
    load_module_index,
    present,
    resolve_load_order,
)
from agent.initramfs.pyruntime import AGENT_LIB, ENTRY_MODULES, PID1_ONLY_MODULES, PYTHON_LINK

# /usr/bin/overlay-agent inside the initramfs (the local-bottom script and dracut's units run it)
LAUNCHER_PATH = "/usr/bin/overlay-agent"
LAUNCHER = f"""#!{PYTHON_LINK} -IS
import sys
sys.path.insert(0, "{AGENT_LIB}")
from agent.cli import main
sys.exit(main())
"""
# What hook mode imports: the CLI with its `boot` subcommand, and PID 1's entry modules but
# those it has no use for (the lazily imported activation modules come with them).
HOOK_ENTRY_MODULES: tuple[str, ...] = (
    "agent.commands.boot",
    *(m for m in ENTRY_MODULES if m not in PID1_ONLY_MODULES),
)
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


@dataclass(frozen=True)
class Added:
    files: int
    bytes: int        # bytes of the regular files written (those the tree did not have)


def resolve_dir(destdir: Path, path: str) -> str:
    """`path` inside the tree with the tree's symlinks followed (relative, no leading /)."""
    real, _links = walk_links("/" + path.strip("/"), str(destdir))
    return real.lstrip("/")


def same_file(path: str, entry: cpio.Entry) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    if isinstance(entry.data, Path):
        if st.st_size != entry.data.stat().st_size:
            return False
    elif st.st_size != len(entry.data):
        return False
    with open(path, "rb") as f:
        return f.read() == entry.content()


def write_member(path: str, entry: cpio.Entry) -> None:
    """A regular file through a temporary name, so an existing symlink is replaced, not
    written through."""
    tmp = f"{path}.oa-tmp"
    if isinstance(entry.data, Path):
        shutil.copyfile(entry.data, tmp)
    else:
        with open(tmp, "wb") as f:
            f.write(entry.data)
    os.chmod(tmp, stat.S_IMODE(entry.mode))
    os.replace(tmp, path)


def install_entries(entries: Iterable[cpio.Entry], destdir: Path) -> Added:
    """Write members into the tree; existing symlinks and identical files are kept."""
    files = size = 0
    for e in cpio.with_parents(entries):
        parent, base = os.path.split(e.name.strip("/"))
        path = os.path.join(destdir, resolve_dir(destdir, parent), base)
        try:
            if stat.S_ISDIR(e.mode):
                if not os.path.isdir(path):
                    os.makedirs(path, stat.S_IMODE(e.mode))
            elif stat.S_ISLNK(e.mode):
                if not os.path.lexists(path):
                    os.symlink(e.content().decode(), path)
            elif stat.S_ISREG(e.mode):
                if not same_file(path, e):
                    write_member(path, e)
                    files += 1
                    size += os.path.getsize(path)
            else:
                raise BuildError(f"{e.name}: unsupported member type {oct(e.mode)}")
        except OSError as exc:
            raise BuildError(f"{destdir}/{e.name}: cannot write: {exc.strerror}") from None
    return Added(files, size)


def find_module_file(destdir: Path, release: str, relpath: str) -> str | None:
    """The image path of a module the distribution's tool copied, compressed or not."""
    stem = relpath
    for suffix in MODULE_SUFFIXES[::-1]:
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
            break
    for folder in (f"lib/modules/{release}", f"usr/lib/modules/{release}"):
        for suffix in MODULE_SUFFIXES:
            image = f"{resolve_dir(destdir, folder)}/{stem}{suffix}"
            if os.path.isfile(destdir / image):
                return "/" + image
    return None


def module_load_entry(destdir: Path, modules_dir: Path, release: str,
                      wanted: Sequence[str] = BOOT_MODULES,
                      optional: Sequence[str] = OPTIONAL_BOOT_MODULES) -> cpio.Entry:
    """MODULES_LOAD for hook mode: the files of `wanted` and their dependencies that the
    distribution's tool put in the tree (initramfs-tools manual_add_modules, dracut
    instmods), in load order. A module the tree lacks is one error naming every one."""
    index = load_module_index(modules_dir, release)
    order = resolve_load_order(index, wanted)
    found = [(m.name, find_module_file(destdir, release, m.relpath)) for m in order]
    missing = [name for name, image in found if image is None]
    if missing:
        raise BuildError(f"{destdir}: kernel module(s) {', '.join(missing)} not in the "
                         f"initramfs for {release} (the hook adds them before running the agent)")
    # dm-verity when the kernel has it and the tool copied it (with what it needs): else the
    # boot checks each image's sha256
    for name in present(index, optional):
        more = [(m.name, find_module_file(destdir, release, m.relpath))
                for m in resolve_load_order(index, [name]) if m.name not in dict(found)]
        if all(image is not None for _, image in more):
            found += more
    text = "".join(f"{image}\n" for _, image in found)
    return cpio.regular(MODULES_LOAD.lstrip("/"), text.encode(), 0o644)


def launcher_entry() -> cpio.Entry:
    return cpio.regular(LAUNCHER_PATH.lstrip("/"), LAUNCHER.encode(), 0o755)


def runtime_tree_entries(destdir: Path, modules_dir: Path, release: str,
                         verity: bool = True) -> list[cpio.Entry]:
    """Everything hook mode needs in the initramfs, bar the extensions: the Python runtime of
    HOOK_ENTRY_MODULES, the launcher, and the module list (dm-verity's only with `verity`:
    the layers have hash trees)."""
    from agent.initramfs.pyruntime import build_runtime

    runtime = build_runtime(HOOK_ENTRY_MODULES)
    optional = OPTIONAL_BOOT_MODULES if verity else ()
    return [*runtime.entries, launcher_entry(),
            module_load_entry(destdir, modules_dir, release, optional=optional)]


def check_tree(destdir: Path) -> None:
    if not destdir.is_dir():
        raise BuildError(f"{destdir}: not a folder (the initramfs tree being built)")
    if destdir.resolve() == Path("/"):   # a careless --destdir would overwrite this system
        raise BuildError(f"{destdir}: the running system's root, not an initramfs tree")

