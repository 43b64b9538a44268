"""Kernel modules for the initramfs: modules.dep / modules.softdep / modules.alias /
modules.builtin of one release, and the load order of a wanted set (dependencies first)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import BuildError

BOOT_MODULES: tuple[str, ...] = ("loop", "squashfs", "overlay")
DISK_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_blk", "ext4")
# Taken when the kernel has them: dm-verity checks layers block by block (else the boot
# hashes whole images); vfat and its default code pages mount an image store on an EFI or
# boot partition. dm-verity's dependencies (dm-mod, dm-bufio) follow from modules.dep, and
# devtmpfs makes /dev/mapper/control when dm-mod loads.
OPTIONAL_BOOT_MODULES: tuple[str, ...] = ("dm_verity",)
OPTIONAL_DISK_MODULES: tuple[str, ...] = ("vfat", "nls_cp437", "nls_ascii")

_SUFFIX = re.compile(r"\.ko(\.xz|\.zst|\.gz)?$")


@dataclass(frozen=True)
class ModuleIndex:
    release: str
    root: Path                                  # the lib/modules/KVER folder
    deps: Mapping[str, tuple[str, ...]]         # relative path -> dependency paths
    by_name: Mapping[str, str]                  # module name -> relative path
    softdeps: Mapping[str, tuple[str, ...]]     # module name -> `pre:` names (or aliases)
    aliases: Mapping[str, tuple[str, ...]]      # alias -> module names (exact aliases only)
    builtin: frozenset[str]


@dataclass(frozen=True)
class KernelModule:
    name: str
    relpath: str                                 # relative to the modules folder


def module_name(path: str) -> str:
    """`kernel/fs/overlayfs/overlay.ko.xz` -> `overlay`; dashes count as underscores."""
    return _SUFFIX.sub("", path.rsplit("/", 1)[-1]).replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, ...]]:
    deps: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        if ":" in line:
            mod, _, rest = line.partition(":")
            deps[mod.strip()] = tuple(rest.split())
    return deps


def parse_softdeps(text: str) -> dict[str, tuple[str, ...]]:
    """`softdep ext4 pre: crypto-crc32c post: x` -> {"ext4": ("crypto-crc32c",)}."""
    pre: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 3 or words[0] != "softdep":
            continue
        names: list[str] = []
        section = ""
        for w in words[2:]:
            if w.endswith(":"):
                section = w
            elif section == "pre:":
                names.append(w)
        if names:
            key = words[1].replace("-", "_")
            pre[key] = pre.get(key, ()) + tuple(names)
    return pre


def parse_aliases(text: str) -> dict[str, tuple[str, ...]]:
    """Exact (wildcard-free) aliases only: softdeps name things like `crypto-crc32c`."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "alias" and not any(c in words[1] for c in "*?["):
            found.setdefault(words[1], []).append(words[2].replace("-", "_"))
    return {k: tuple(v) for k, v in found.items()}


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise BuildError(f"{path}: unreadable ({exc.strerror})")


def load_module_index(modules_dir: Path, release: str) -> ModuleIndex:
    """Read the index files of `modules_dir`, which must be the folder of `release`."""
    real = modules_dir.resolve()
    if not real.is_dir():
        raise BuildError(f"{modules_dir}: no such modules folder")
    if real.name != release:
        raise BuildError(f"{modules_dir}: modules folder is for kernel release {real.name}, "
                         f"not {release}")
    dep_file = real / "modules.dep"
    if not dep_file.is_file():
        raise BuildError(f"{dep_file}: missing (run depmod)")
    deps = parse_modules_dep(read_text(dep_file))
    builtin = frozenset(module_name(p) for p in read_text(real / "modules.builtin").split())
    return ModuleIndex(release, real, deps, {module_name(p): p for p in deps},
                       parse_softdeps(read_text(real / "modules.softdep")),
                       parse_aliases(read_text(real / "modules.alias")), builtin)


def present(index: ModuleIndex, names: Sequence[str]) -> tuple[str, ...]:
    """The modules of `names` this kernel has (as a file or built in)."""
    return tuple(n for n in names if n.replace("-", "_") in index.by_name
                 or n.replace("-", "_") in index.builtin)


def pick_alias(index: ModuleIndex, alias: str) -> str | None:
    """A module that provides `alias`, preferring a generic one: CPU-specific variants
    (crc32c_intel) fail with ENODEV on CPUs without the feature, e.g. QEMU's default model."""
    names = [n for n in index.aliases.get(alias, ()) if n in index.by_name or n in index.builtin]
    generic = [n for n in names if n.endswith("_generic")]
    chosen = generic or names
    return chosen[0] if chosen else None


def resolve_load_order(index: ModuleIndex, wanted: Sequence[str]) -> list[KernelModule]:
    """Modules to load for `wanted`, dependencies and `pre:` softdeps first, built-in ones
    skipped. Every unknown module or missing file is reported in one error."""
    order: list[KernelModule] = []
    done: set[str] = set()
    problems: list[str] = []

    def visit_name(name: str, softdep: bool) -> None:
        key = name.replace("-", "_")
        if key in index.builtin:
            return
        if key not in index.by_name:
            via = pick_alias(index, name)
            if via is not None:
                visit_name(via, softdep)
            elif not softdep:
                problems.append(f"module {name}: not in {index.root / 'modules.dep'}")
            return
        visit_path(index.by_name[key])

    def visit_path(rel: str) -> None:
        if rel in done:
            return
        done.add(rel)
        name = module_name(rel)
        for pre in index.softdeps.get(name, ()):
            visit_name(pre, softdep=True)
        # modules.dep lists the modules a module needs with the most basic last.
        for dep in reversed(index.deps.get(rel, ())):
            visit_path(dep)
        if not (index.root / rel).is_file():
            problems.append(f"module {name}: file {index.root / rel} missing")
        order.append(KernelModule(name, rel))

    for name in wanted:
        visit_name(name, softdep=False)
    if problems:
        raise BuildError("; ".join(problems))
    return order
