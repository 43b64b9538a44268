"""`initramfs-hook`: the agent written into a distribution's initramfs tree being built."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent import cpio
from agent.cli import main
from agent.errors import BuildError
from agent.initramfs.tree import LAUNCHER_PATH, install_entries, module_load_entry

KVER = "6.1.0-99-amd64"
MODULES = ("kernel/drivers/block/loop.ko", "kernel/fs/squashfs/squashfs.ko",
           "kernel/fs/overlayfs/overlay.ko")


def distro_tree(root: Path) -> Path:
    """A merged-/usr tree as initramfs-tools starts one, with an absolute symlink too."""
    for d in ("usr/lib", "usr/bin", "usr/lib64"):
        (root / d).mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "bin").symlink_to("usr/bin")
    (root / "lib64").symlink_to("/usr/lib64")      # must mean the tree's, never the host's
    return root


def modules_dir(root: Path, deps: str = "") -> Path:
    folder = root / KVER
    for rel in MODULES:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"\x7fELF")
    (folder / "modules.dep").write_text(deps or "".join(f"{m}:\n" for m in MODULES))
    for name in ("modules.builtin", "modules.softdep", "modules.alias"):
        (folder / name).write_text("")
    return folder


def test_members_land_inside_the_tree_through_its_symlinks(tmp_path: Path) -> None:
    tree = distro_tree(tmp_path / "tree")
    (tree / "usr/lib/same.so").write_bytes(b"same")
    (tree / "usr/lib/old.so").write_bytes(b"old")
    (tree / "usr/lib/kept").symlink_to("same.so")
    added = install_entries([cpio.regular("lib/same.so", b"same"),
                             cpio.regular("lib/old.so", b"new!"),
                             cpio.symlink("lib/kept", "old.so"),
                             cpio.regular("lib64/ld.so", b"loader", 0o755),
                             cpio.regular("usr/lib/python3.11/os.pyc", b"pyc")], tree)
    assert (added.files, added.bytes) == (3, 4 + 6 + 3)
    assert (tree / "usr/lib/old.so").read_bytes() == b"new!"
    assert os.readlink(tree / "usr/lib/kept") == "same.so"          # existing link kept
    assert (tree / "usr/lib64/ld.so").read_bytes() == b"loader"
    assert (tree / "usr/lib64/ld.so").stat().st_mode & 0o777 == 0o755
    assert (tree / "lib").is_symlink() and (tree / "bin").is_symlink()
    assert sorted(p.name for p in (tree / "usr/lib").iterdir()) == [
        "kept", "old.so", "python3.11", "same.so"]


def test_module_list_finds_what_the_tool_copied_compressed_or_not(tmp_path: Path) -> None:
    tree = distro_tree(tmp_path / "tree")
    mods = modules_dir(tmp_path / "host", "kernel/fs/overlayfs/overlay.ko:\n"
                       "kernel/fs/squashfs/squashfs.ko: kernel/drivers/block/loop.ko\n"
                       "kernel/drivers/block/loop.ko:\n")
    base = tree / "usr/lib/modules" / KVER
    for rel, suffix in zip(MODULES, ("", ".xz", ".zst"), strict=True):
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / (rel + suffix)).write_bytes(b"\x7fELF")
    entry = module_load_entry(tree, mods, KVER)
    assert entry.name == "etc/overlay-agent/modules.load"
    assert entry.content().decode().splitlines() == [
        f"/usr/lib/modules/{KVER}/kernel/drivers/block/loop.ko",
        f"/usr/lib/modules/{KVER}/kernel/fs/squashfs/squashfs.ko.xz",
        f"/usr/lib/modules/{KVER}/kernel/fs/overlayfs/overlay.ko.zst"]


def test_a_module_the_tool_did_not_copy_is_one_error(tmp_path: Path) -> None:
    tree = distro_tree(tmp_path / "tree")
    mods = modules_dir(tmp_path / "host")
    with pytest.raises(BuildError) as exc:
        module_load_entry(tree, mods, KVER)
    assert str(exc.value) == (f"{tree}: kernel module(s) loop, squashfs, overlay not in the "
                              f"initramfs for {KVER} (the hook adds them before running the "
                              "agent)")


def hook_tree(work: Path, name: str = "tree") -> tuple[Path, Path]:
    """The tree as the hook finds it (the three modules copied in), and the host's modules."""
    tree = distro_tree(work / name)
    mods = modules_dir(work / f"{name}-host")
    for rel in MODULES:
        (tree / "lib/modules" / KVER / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / "lib/modules" / KVER / rel).write_bytes(b"\x7fELF")
    return tree, mods


def test_hook_command_writes_runtime_modules_and_an_empty_list(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree, mods = hook_tree(tmp_path)
    config = tmp_path / "machine.yaml"
    config.write_text("machine:\n  install:\n    extensions: []\n")
    assert main(["initramfs-hook", "--destdir", str(tree), "--kernel-release", KVER,
                 "--modules-dir", str(mods), "--config", str(config),
                 "--cache", str(tmp_path / "cache")]) == 0
    assert json.loads((tree / "extensions.yaml").read_text()) == {"layers": [], "version": 1}
    assert not (tree / "extensions").exists()
    launcher = tree / LAUNCHER_PATH.lstrip("/")
    assert launcher.read_text().startswith("#!/usr/bin/python3 -IS\n")
    assert os.access(launcher, os.X_OK)
    assert list((tree / "usr/lib/overlay-agent/agent").glob("cli.pyc"))
    assert (tree / "etc/overlay-agent/modules.load").read_text().count("\n") == 3
    err = capsys.readouterr().err
    assert err.startswith(f"overlay-agent: initramfs for {KVER}: agent runtime ")
    assert err.endswith("; 0 extension(s)\n")


@pytest.mark.parametrize("args,message", [
    (["--kernel-release", "../x"], "--kernel-release '../x': not a kernel release"),
    (["--destdir", "/nonexistent/tree"], "/nonexistent/tree: not a folder (the initramfs tree "
                                         "being built)"),
])
def test_bad_arguments_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    args: list[str], message: str) -> None:
    base = {"--destdir": str(tmp_path), "--kernel-release": KVER}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = ["initramfs-hook", *[x for kv in base.items() for x in kv]]
    assert main(argv) != 0
    assert capsys.readouterr().err == f"overlay-agent: error: {message}\n"


DM = ("kernel/drivers/md/dm-mod.ko", "kernel/drivers/md/dm-bufio.ko",
      "kernel/drivers/md/dm-verity.ko")


@pytest.mark.parametrize(("copied", "listed"), [
    (DM, DM),                  # the tool copied dm-verity and its dependencies: loaded last
    (DM[2:], ()),              # its dependencies missing: left out, the boot checks sha256
    ((), ()),
])
def test_dm_verity_is_listed_when_the_tool_copied_it(tmp_path: Path, copied: tuple[str, ...],
                                                     listed: tuple[str, ...]) -> None:
    tree = distro_tree(tmp_path / "tree")
    mods = modules_dir(tmp_path / "host", "".join(f"{m}:\n" for m in MODULES) +
                       f"{DM[0]}:\n{DM[1]}: {DM[0]}\n{DM[2]}: {DM[1]} {DM[0]}\n")
    for rel in MODULES + DM:
        (mods / rel).parent.mkdir(parents=True, exist_ok=True)
        (mods / rel).write_bytes(b"\x7fELF")
    for rel in MODULES + copied:
        (tree / "usr/lib/modules" / KVER / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / "usr/lib/modules" / KVER / rel).write_bytes(b"\x7fELF")
    lines = module_load_entry(tree, mods, KVER).content().decode().splitlines()
    assert lines == [f"/usr/lib/modules/{KVER}/{m}" for m in MODULES + listed]
    without = module_load_entry(tree, mods, KVER, optional=()).content().decode()
    assert without.splitlines() == lines[:3]
