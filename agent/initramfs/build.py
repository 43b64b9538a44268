"""Assemble, write and verify the initramfs: Python runtime + agent as /init, kernel modules
in load order, device nodes, mount points, optionally the root image as /rootfs.sqsh, and
CPU microcode from extensions in an early archive before it all (agent.bake.early)."""

from __future__ import annotations

import io
import os
import posixpath
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent import cpio
from agent.bake.early import MicrocodeFile, MicrocodeSource, load_microcode, plan_early, with_early
from agent.boot.layout import INITRAMFS_DIRS, MODULES_LOAD, ROOT_IMAGE
from agent.errors import BuildError
from agent.initramfs.elfdeps import Lookup, missing_in_tree
from agent.initramfs.kmods import (
    BOOT_MODULES,
    DISK_MODULES,
    OPTIONAL_BOOT_MODULES,
    OPTIONAL_DISK_MODULES,
    KernelModule,
    ModuleIndex,
    load_module_index,
    present,
    resolve_load_order,
)
from agent.initramfs.pyruntime import AGENT_LIB, ENTRY_MODULES, PYTHON_LINK, build_runtime
from agent.output import source_date_epoch, write_bytes_atomically

# One argument after the interpreter: a #! line passes the rest as a single word.
INIT_SCRIPT = f"""#!{PYTHON_LINK} -IS
import sys
sys.path.insert(0, "{AGENT_LIB}")
from agent.boot.main import main
main()
"""

DEVICE_NODES: tuple[tuple[str, int, int, int], ...] = (
    ("dev/console", 5, 1, 0o600),
    ("dev/null", 1, 3, 0o666),
    ("dev/urandom", 1, 9, 0o666),
)

COMPRESSIONS = ("zstd", "xz", "gzip")


@dataclass(frozen=True)
class InitramfsSpec:
    kernel_release: str
    modules_dir: Path
    root_image: Path | None = None
    disk_modules: bool = True
    compression: str = "zstd"
    level: int | None = None
    entry_modules: tuple[str, ...] = ENTRY_MODULES
    extra_modules: tuple[str, ...] = ()
    mtime: int = field(default_factory=source_date_epoch)
    microcode: tuple[MicrocodeSource, ...] = ()   # roots whose CPU microcode loads early


@dataclass(frozen=True)
class BuildReport:
    out: Path
    size: int                          # compressed bytes written
    uncompressed: int
    members: int
    modules: tuple[str, ...]           # image paths, load order
    elf_files: tuple[str, ...]
    runtime_bytes: int                 # uncompressed bytes of the Python runtime + agent


@dataclass(frozen=True)
class Assembly:
    """Everything to write, in archive order, and what the verification must find."""

    members: tuple[cpio.Entry, ...]
    modules_load: tuple[str, ...]
    elf_files: tuple[str, ...]
    runtime_bytes: int
    microcode: tuple[MicrocodeFile, ...] = ()


def validate_spec(spec: InitramfsSpec) -> list[str]:
    """Every problem with the inputs, before anything is read at length."""
    problems: list[str] = []
    if spec.compression not in COMPRESSIONS:
        problems.append(f"compression {spec.compression!r}: use one of {', '.join(COMPRESSIONS)}")
    if spec.root_image is not None and not os.access(spec.root_image, os.R_OK):
        problems.append(f"{spec.root_image}: root image missing or unreadable")
    elif spec.root_image is not None and not spec.root_image.is_file():
        problems.append(f"{spec.root_image}: root image is not a regular file")
    return problems


def wanted_modules(spec: InitramfsSpec, index: ModuleIndex) -> tuple[str, ...]:
    disk = DISK_MODULES + present(index, OPTIONAL_DISK_MODULES) if spec.disk_modules else ()
    return BOOT_MODULES + present(index, OPTIONAL_BOOT_MODULES) + disk + spec.extra_modules


def kernel_module_entries(spec: InitramfsSpec, order: Sequence[KernelModule],
                   root: Path) -> tuple[list[cpio.Entry], list[str]]:
    base = f"lib/modules/{spec.kernel_release}"
    entries = [cpio.regular(f"{base}/{m.relpath}", root / m.relpath, 0o644, spec.mtime)
               for m in order]
    paths = [f"/{base}/{m.relpath}" for m in order]
    load = "".join(f"{p}\n" for p in paths).encode()
    entries.append(cpio.regular(MODULES_LOAD[1:], load, 0o644, spec.mtime))
    return entries, paths


def skeleton_entries(mtime: int) -> list[cpio.Entry]:
    entries = [cpio.regular("init", INIT_SCRIPT.encode(), 0o755, mtime)]
    entries += [cpio.chardev(n, ma, mi, perm, mtime) for n, ma, mi, perm in DEVICE_NODES]
    entries += [cpio.directory(d.strip("/"), 0o755, mtime) for d in INITRAMFS_DIRS]
    return entries


def canonical_name(name: str, links: dict[str, str]) -> str:
    """`name` with every leading folder that is a symlink in the image replaced by its target,
    so members never sit under a symlink that the kernel would create later (sorted order)."""
    parts = name.split("/")
    for i in range(1, len(parts)):
        head = "/".join(parts[:i])
        if head in links:
            target = links[head]
            joined = target.lstrip("/") if target.startswith("/") else posixpath.normpath(
                posixpath.join(posixpath.dirname(head), target))
            return canonical_name("/".join([joined, *parts[i:]]), links)
    return name


def canonicalize(entries: Iterable[cpio.Entry]) -> list[cpio.Entry]:
    items = list(entries)
    links = {e.name.strip("/"): e.content().decode() for e in items if stat.S_ISLNK(e.mode)}
    out: list[cpio.Entry] = []
    for e in items:
        name = canonical_name(e.name.strip("/"), links)
        out.append(e if name == e.name else cpio.Entry(name, e.mode, e.data, e.rdev, e.mtime,
                                                       e.uid, e.gid))
    return out


def assemble(spec: InitramfsSpec) -> Assembly:
    """Load and check every input (BuildError naming every problem), then gather the members."""
    problems = validate_spec(spec)
    try:
        index = load_module_index(spec.modules_dir, spec.kernel_release)
        order = resolve_load_order(index, wanted_modules(spec, index))
    except BuildError as exc:
        problems.append(str(exc))
    microcode, found = load_microcode(spec.microcode)
    problems += found
    if problems:
        raise BuildError("; ".join(problems))
    runtime = build_runtime(spec.entry_modules, mtime=spec.mtime)
    mods, load = kernel_module_entries(spec, order, index.root)
    entries = [*runtime.entries, *mods, *skeleton_entries(spec.mtime)]
    if spec.root_image is not None:
        entries.append(cpio.regular(ROOT_IMAGE[1:], spec.root_image, 0o644, spec.mtime))
    size = sum(len(e.content()) for e in runtime.entries if stat.S_ISREG(e.mode))
    return Assembly(tuple(cpio.with_parents(canonicalize(entries), spec.mtime)), tuple(load),
                    runtime.elf_files, size, tuple(microcode))


def make_initramfs(spec: InitramfsSpec, out: Path) -> BuildReport:
    """Build the initramfs at `out` (atomically), re-read it and verify it."""
    parts = assemble(spec)
    buf = io.BytesIO()
    cpio.write(parts.members, buf)
    raw = buf.getvalue()
    data = cpio.compress(raw, spec.compression, spec.level)
    verify_initramfs(data, spec.compression, [*parts.elf_files, *parts.modules_load], where=out)
    early, _ = plan_early(data, parts.microcode, str(out))   # no early archive of its own
    if early is not None:
        data = with_early(early, data, spec.mtime)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(out, data)
    return BuildReport(out, len(data), len(raw), len(parts.members), parts.modules_load,
                       parts.elf_files, parts.runtime_bytes)


def read_members(data: bytes, compression: str) -> dict[str, tuple[int, bytes]]:
    """Absolute name -> (mode, data) of every member of a (compressed) initramfs; later
    archives of a concatenation win, as when the kernel unpacks them."""
    blob = cpio.decompress(data, compression)
    members: dict[str, tuple[int, bytes]] = {}
    for archive in cpio.iter_archives(blob):
        for e in archive:
            members["/" + e.name.strip("/")] = (e.mode, e.content())
    return members


def verify_initramfs(data: bytes, compression: str, required: Sequence[str],
                     where: Path) -> None:
    """/init, the device nodes, `required` paths and every DT_NEEDED of every ELF member,
    checked on the compressed bytes about to be written to `where`."""
    members = read_members(data, compression)
    look = Lookup(members)
    problems = [f"{p} missing" for p in ["/init", *required] if not look.has(p)]
    for name, *_dev in DEVICE_NODES:
        mode, _data = members.get("/" + name, (0, b""))
        if not stat.S_ISCHR(mode):
            problems.append(f"/{name}: not a character device")
    elves = [n for n, (mode, data) in members.items()
             if stat.S_ISREG(mode) and data[:4] == b"\x7fELF"]
    problems += missing_in_tree(elves, look)
    if problems:
        raise BuildError(f"{where}: verification failed: {'; '.join(problems)}")


def write_tree(entries: Iterable[cpio.Entry], dest: Path) -> None:
    """Materialize members in a folder (parents first, as sorted by cpio.with_parents).
    Device nodes need root (mknod); owners stay those of the caller."""
    for e in cpio.with_parents(entries):
        path = dest / e.name
        if stat.S_ISDIR(e.mode):
            path.mkdir(exist_ok=True)
            path.chmod(stat.S_IMODE(e.mode))
        elif stat.S_ISLNK(e.mode):
            os.symlink(e.content().decode(), path)
        elif stat.S_ISREG(e.mode):
            path.write_bytes(e.content())
            path.chmod(stat.S_IMODE(e.mode))
        elif stat.S_ISCHR(e.mode) or stat.S_ISBLK(e.mode):
            os.mknod(path, e.mode, os.makedev(*e.rdev))
        else:
            raise BuildError(f"{e.name}: unsupported member type {oct(e.mode)}")
