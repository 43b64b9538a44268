"""The modules.dep layer lets modprobe resolve a module that only an extension ships."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from bake_support import KERNELS, debian_style_initrd, make_extension, overlay_agent

from agent import listfile
from agent.bake.depmod import build_modules_layer, plan_modules
from agent.bake.segments import merged_members, split_segments
from agent.errors import AgentError
from agent.kernels import load_kernel

MODULE = "zram"


def stock_entry(modules: Path) -> tuple[str, list[str]]:
    """zram's path and its dependencies in the stock kernel's modules.dep."""
    for line in (modules / "modules.dep").read_text().splitlines():
        path, _, deps = line.partition(":")
        if Path(path).name.split(".")[0] == MODULE:
            return path, deps.split()
    raise AssertionError(f"{MODULE} not in {modules}/modules.dep")


def make_base(base: Path, moddir: str, stock: Path, release: str, deps: list[str]) -> None:
    """A base root holding only the stock module's dependencies (not the module itself)."""
    target = base / moddir / release
    for rel in [*deps, "modules.order", "modules.builtin", "modules.builtin.modinfo"]:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stock / rel, target / rel)
    # kmod looks under lib/modules (Debian 12) or usr/lib/modules (newer builds): both lead
    # to the modules folder, as on a merged-/usr system.
    if moddir.startswith("usr/"):
        (base / "lib").symlink_to("usr/lib")
    else:
        (base / "usr/lib").mkdir(parents=True)
        (base / "usr/lib/modules").symlink_to("../../lib/modules")


@pytest.fixture
def mounted() -> Iterator[list[str]]:
    """Mount points to unmount (in reverse) after the test."""
    points: list[str] = []
    yield points
    for point in reversed(points):
        subprocess.run(["umount", point], check=False)


def mount(points: list[str], *argv: str) -> None:
    subprocess.run(["mount", *argv], check=True)
    points.append(argv[-1])


@pytest.mark.parametrize("suite,moddir,squashed", [
    ("bookworm", "lib/modules", False), ("trixie", "usr/lib/modules", False),
    ("trixie", "usr/lib/modules", True)], ids=["split", "merged", "merged-squashfs-base"])
def test_modprobe_resolves_a_module_only_an_extension_ships(
        tmp_path: Path, suite: str, moddir: str, squashed: bool, private_mounts: None,
        mounted: list[str]) -> None:
    try:
        kernel = load_kernel(KERNELS, suite)
    except AgentError:
        pytest.skip(f"no fetched {suite} kernel (make kernels)")
    stock, release = kernel.modules_dir, kernel.release
    path, deps = stock_entry(stock)
    base = tmp_path / "base"
    make_base(base, moddir, stock, release, deps)
    ext = make_extension(tmp_path / "exts", "zram-ext", {
        f"{moddir}/{release}/extras/{Path(path).name}": (stock / path).read_bytes()})
    initrd = debian_style_initrd(tmp_path / "initrd.img")
    out = tmp_path / "out.img"
    base_arg = base
    if squashed:                                # a base root given as a squashfs image
        base_arg = tmp_path / "base.sqsh"
        subprocess.run(["mksquashfs", str(base), str(base_arg), "-quiet", "-no-progress"],
                       check=True, env={"PATH": os.environ["PATH"]})
    overlay_agent("build", "--extension", f"dir:{ext}", "--base-root", base_arg,
                  "--os-version", "v1.7.0", "--initramfs", initrd, "-o", out)
    tree = merged_members(split_segments(out.read_bytes(), "out"))
    layers = listfile.read_list(tree["extensions.yaml"].content().decode())
    assert [(x.image, x.kind, x.metadata.name, x.metadata.version) for x in layers] == [
        ("000-zram-ext.sqsh", listfile.KIND_EXTENSION, "zram-ext", "1.0.0"),
        ("001-modules.dep.sqsh", listfile.KIND_MODULES, "modules.dep", release)]
    lowers = []
    for layer in reversed(layers):          # topmost first, as the boot side stacks them
        image, mnt = tmp_path / layer.image, tmp_path / layer.id
        image.write_bytes(tree[f"extensions/{layer.image}"].content())
        mnt.mkdir()
        mount(mounted, "-t", "squashfs", "-o", "loop,ro", str(image), str(mnt))
        lowers.append(str(mnt))
    merged = tmp_path / "merged"
    merged.mkdir()
    mount(mounted, "-t", "overlay", "overlay", "-o", f"ro,lowerdir={':'.join([*lowers, str(base)])}",
          str(merged))
    modlayer = Path(lowers[0]) / moddir / release
    assert (modlayer / "modules.dep").is_file() and not (modlayer / "kernel").exists()
    proc = subprocess.run(["modprobe", "--dirname", str(merged), "-S", release,
                           "--show-depends", MODULE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    loaded = [os.path.realpath(line.split()[1]) for line in proc.stdout.splitlines()]
    mods = merged / moddir / release
    assert loaded[-1] == str(mods / "extras" / Path(path).name)
    assert sorted(loaded[:-1]) == sorted(str(mods / d) for d in deps)
    bare = subprocess.run(["modprobe", "--dirname", str(base), "-S", release, "--show-depends",
                           MODULE], capture_output=True, text=True)
    assert bare.returncode != 0                 # the base alone does not know it


def test_modules_without_base_root_is_a_problem(tmp_path: Path) -> None:
    ext = make_extension(tmp_path / "exts", "mods", {"lib/modules/6.1.0/extras/a.ko": b"x"})
    initrd = debian_style_initrd(tmp_path / "initrd.img")
    proc = overlay_agent("build", "--extension", f"dir:{ext}", "--os-version", "v1.7.0",
                         "--initramfs", initrd, "-o", tmp_path / "out.img", check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[1:] == [
        f"dir:{ext}: ships kernel modules (6.1.0): give --base-root so depmod sees the "
        f"base's modules too"]


def test_extras_override_built_in_and_both_layouts_merge(tmp_path: Path) -> None:
    """`search extras updates built-in`: an extension's extras/ copy of an in-tree module wins;
    modules under lib/modules and usr/lib/modules of one extension are both indexed."""
    try:
        kernel = load_kernel(KERNELS, "bookworm")
    except AgentError:
        pytest.skip("no fetched bookworm kernel (make kernels)")
    stock, release = kernel.modules_dir, kernel.release
    path, deps = stock_entry(stock)
    base = tmp_path / "base"
    make_base(base, "lib/modules", stock, release, deps)
    dep = Path(deps[0]).name
    ext = make_extension(tmp_path / "exts", "mods", {
        f"lib/modules/{release}/extras/{dep}": (stock / deps[0]).read_bytes(),
        f"usr/lib/modules/{release}/updates/{Path(path).name}": (stock / path).read_bytes()})
    plan, problems = plan_modules({"mods": ext / "rootfs"}, base, None, tmp_path)
    assert problems == [] and plan is not None and plan.release == release
    layer = build_modules_layer(plan, [ext / "rootfs"], tmp_path / "work")
    dep_lines = dict(line.split(":", 1) for line in
                     (layer / "lib/modules" / release / "modules.dep").read_text().splitlines())
    assert dep_lines[f"updates/{Path(path).name}"].split() == [
        f"extras/{dep}", *deps[1:]]
    assert deps[0] not in dep_lines            # the in-tree copy lost to extras/
