"""The synthetic `modules.dep` layer: module indexes over the base's and extensions' modules.

Each extension's modules only show up in the booted system's indexes if depmod has seen
them with the base's: we merge the trees (symlinks, nothing copied), run `depmod -b`
with our own config (`-C`, so the host's /etc/depmod.d does not leak in), and ship the
`modules.*` files it wrote as one layer placed on top of all others.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ToolError
from agent.listfile import MODULES_LAYER_NAME, Metadata
from agent.tools import run

MODULE_DIRS = ("lib/modules", "usr/lib/modules")
DEPMOD_CONFIG = "search extras updates built-in\n"
# Inputs depmod reads from the base folder; every other modules.* file it writes anew.
DEPMOD_INPUTS = ("modules.order", "modules.builtin", "modules.builtin.modinfo")


@dataclass(frozen=True)
class ModulesPlan:
    release: str
    base_modules: Path | None   # the base root's folder for `release`; None: it has none
    layer_dir: str          # where the layer puts its files: lib/modules or usr/lib/modules


def find_release_dirs_at(root: Path, rel: str) -> list[str]:
    """Kernel releases with a real modules folder at ROOT/REL (symlinked paths skipped)."""
    top = root / rel
    if top.is_symlink() or not top.is_dir() or (root / rel.split("/")[0]).is_symlink():
        return []
    return [k for k in sorted(os.listdir(top))
            if (top / k).is_dir() and not (top / k).is_symlink()]


def find_release_dirs(root: Path) -> dict[str, Path]:
    """Kernel release -> modules folder in `root` (split or merged /usr; lib/ first)."""
    found: dict[str, Path] = {}
    for rel in MODULE_DIRS:
        for kver in find_release_dirs_at(root, rel):
            found.setdefault(kver, root / rel / kver)
    return found


def ships_modules(folder: Path) -> bool:
    return any(name.endswith((".ko", ".ko.xz", ".ko.zst", ".ko.gz"))
               for _, _, files in os.walk(folder) for name in files)


def open_base_modules(base_root: Path, work: Path) -> tuple[Path, bool]:
    """A folder holding the base's module folders, and whether the base's `lib` is a
    symlink. A squashfs base root gets only its module folders extracted."""
    if base_root.is_dir():
        return base_root, (base_root / "lib").is_symlink()
    from agent.image.baseroot import Kind, load_base_root

    entry = load_base_root(base_root).lookup("/lib")
    dest = work / "base-modules"
    run(["unsquashfs", "-n", "-no-xattrs", "-d", dest, base_root, *MODULE_DIRS], capture=True)
    return dest, entry is not None and entry.kind is Kind.SYMLINK


def plan_modules(roots: Mapping[str, Path], base_root: Path | None, release: str | None,
                 work: Path) -> tuple[ModulesPlan | None, list[str]]:
    """Decide whether a modules layer is needed and for which release; return every problem."""
    shipping = {label: sorted({k for rel in MODULE_DIRS for k in find_release_dirs_at(root, rel)
                               if ships_modules(root / rel / k)})
                for label, root in roots.items()}
    shipping = {label: kvers for label, kvers in shipping.items() if kvers}
    if not shipping:
        return None, []
    if base_root is None:
        return None, [f"{label}: ships kernel modules ({', '.join(kvers)}): give --base-root "
                      f"so depmod sees the base's modules too" for label, kvers in shipping.items()]
    folder, lib_is_symlink = open_base_modules(base_root, work)
    base = find_release_dirs(folder)
    if release is None:
        # A base without any modules (they live in its initramfs) takes the extensions'.
        pool = set(base) or {k for kvers in shipping.values() for k in kvers}
        candidates = sorted(pool & {k for kvers in shipping.values() for k in kvers})
        if len(candidates) != 1:
            return None, [f"{base_root}: cannot tell the kernel release (base has "
                          f"{', '.join(sorted(base)) or 'none'}): give --kernel-release"]
        release = candidates[0]
    if base and release not in base:
        return None, [f"{base_root}: no modules folder for kernel release {release}"]
    problems = [f"{label}: ships modules for kernel release {kver}, the base runs {release}"
                for label, kvers in shipping.items() for kver in kvers if kver != release]
    # A real `lib` folder in the layer would hide a merged-/usr base's `lib -> usr/lib`.
    if lib_is_symlink:
        layer_dir = "usr/lib/modules"
    elif release in base:
        layer_dir = str(base[release].parent.relative_to(folder))
    else:
        layer_dir = "lib/modules"
    plan = ModulesPlan(release, base.get(release), layer_dir)
    return (None if problems else plan), problems


def link_tree(sources: Sequence[Path], dest: Path, top: bool = False) -> None:
    """Union of `sources` at `dest` as symlinks; later sources win, shared folders merge."""
    names: dict[str, list[Path]] = {}
    for src in sources:
        for name in sorted(os.listdir(src)):
            names.setdefault(name, []).append(src / name)
    dest.mkdir(parents=True, exist_ok=True)
    for name, paths in sorted(names.items()):
        if top and name.startswith("modules.") and name not in DEPMOD_INPUTS:
            continue
        dirs = [p for p in paths if p.is_dir()]
        if len(dirs) > 1 and len(dirs) == len(paths):
            link_tree(dirs, dest / name)
        else:
            (dest / name).symlink_to(paths[-1].resolve())


def build_modules_layer(plan: ModulesPlan, roots: Sequence[Path], work: Path) -> Path:
    """Run depmod over the merged trees; return a rootfs holding only the new modules.* files."""
    tree = work / "depmod-tree"
    merged = tree / "usr/lib/modules" / plan.release
    sources = [root / rel / plan.release for root in roots for rel in MODULE_DIRS
               if plan.release in find_release_dirs_at(root, rel)]
    if plan.base_modules is not None:
        sources.insert(0, plan.base_modules)
    link_tree(sources, merged, top=True)
    (tree / "lib").symlink_to("usr/lib")   # older kmod looks under lib/modules only
    conf = work / "depmod.d"
    conf.mkdir()
    (conf / "overlay-agent.conf").write_text(DEPMOD_CONFIG)
    run(["depmod", "-b", tree, "-C", conf, plan.release], capture=True)
    layer = work / "modules-layer"
    out = layer / plan.layer_dir / plan.release
    out.mkdir(parents=True)
    written = [p for p in sorted(merged.iterdir())
               if p.name.startswith("modules.") and not p.is_symlink() and p.is_file()]
    if not any(p.name == "modules.dep" for p in written):
        raise ToolError(f"depmod -b {tree} {plan.release}: wrote no modules.dep")
    for path in written:
        shutil.copyfile(path, out / path.name)
    return layer


def modules_metadata(plan: ModulesPlan) -> Metadata:
    return Metadata(
        name=MODULES_LAYER_NAME, version=plan.release, author="overlay-agent build",
        description=f"module indexes (depmod) for {plan.release} over the base and extensions")
