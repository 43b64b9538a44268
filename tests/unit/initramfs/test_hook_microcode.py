"""`initramfs-hook --early-cpio`: the extensions' CPU microcode merged into the early archives
initramfs-tools collects (what Debian's microcode hooks wrote there), newest revision per
processor; malformed microcode is one line naming extension and file, the archive untouched."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from agent import cpio
from agent.bake import microcode
from agent.bake.early import RECORD, leading_archives
from agent.cli import main
from tests.unit.bake.test_early import (
    AMD_BIN,
    AMD_NEW,
    AMD_OLD,
    INTEL_BIN,
    INTEL_NEW,
    INTEL_OLD,
    archive,
    write_files,
)
from tests.unit.bake.ucode import kernel_choice
from tests.unit.initramfs.test_initramfs_tree import KVER, hook_tree

MANIFEST = ("version: v1alpha1\nmetadata:\n  name: {name}\n  version: 1.0.0\n"
            "  author: tests\n  description: microcode\n")


def extension(base: Path, name: str, files: dict[str, bytes]) -> Path:
    root = write_files(base / name, {f"rootfs/{rel}": data for rel, data in files.items()})
    (root / "manifest.yaml").write_text(MANIFEST.format(name=name))
    return root


def run_hook(tmp_path: Path, exts: list[Path], early: Path | None) -> tuple[int, Path]:
    tree, mods = hook_tree(tmp_path)
    config = tmp_path / "machine.yaml"
    config.write_text("machine:\n  install:\n    extensions:\n" + "".join(
        f"      - image: dir:{e}\n" for e in exts))
    (tmp_path / "base").mkdir()
    argv = ["initramfs-hook", "--destdir", str(tree), "--kernel-release", KVER,
            "--modules-dir", str(mods), "--config", str(config), "--cache",
            str(tmp_path / "cache"), "--base-root", str(tmp_path / "base")]
    return main(argv + (["--early-cpio", str(early)] if early else [])), tree


def test_merged_into_debians_early_archives(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    early = tmp_path / "mkinitramfs-FW_x"
    early.write_bytes(archive([cpio.regular(INTEL_BIN, INTEL_OLD)])
                      + archive([cpio.regular(AMD_BIN, AMD_OLD)]))
    ucode = extension(tmp_path / "exts", "cpu-ucode", {
        "lib/firmware/intel-ucode/06-55-04": INTEL_NEW,
        "usr/lib/firmware/amd-ucode/microcode_amd_fam19h.bin": AMD_NEW})
    code, tree = run_hook(tmp_path, [ucode], early)
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.rstrip().endswith("1 extension(s): cpu-ucode 1.0.0; CPU microcode of cpu-ucode "
                                 "in the early archive")
    blob = early.read_bytes()
    ((start, end, members),) = leading_archives(blob, "early")
    assert (start, blob[end:]) == (0, b"")
    files = {e.name: e.content() for e in members if e.name in (INTEL_BIN, AMD_BIN, RECORD)}
    assert sorted(files) == [RECORD, AMD_BIN, INTEL_BIN]
    assert [(b.signatures[0], b.revision) for b in microcode.parse_intel(files[INTEL_BIN])] \
        == [(0x50654, 0x21), (0x806EC, 0xF4)]
    assert kernel_choice(files[AMD_BIN], 0x00830F10) == 0x0830107C
    assert kernel_choice(files[AMD_BIN], 0x00A00F11) == 0x0A0011D5
    # in the early archive only: the tree (the compressed main archive) has no copy
    assert not [p for p in (tree / "usr/lib").rglob("*") if p.name.endswith("-ucode")]
    assert [p.name for p in (tree / "extensions").iterdir()] == ["000-cpu-ucode.sqsh"]


def test_malformed_fails_naming_extension_and_file(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    early = tmp_path / "mkinitramfs-FW_x"
    before = archive([cpio.regular(INTEL_BIN, INTEL_OLD)])
    early.write_bytes(before)
    bad = extension(tmp_path / "exts", "intel-ucode",
                    {"lib/firmware/intel-ucode/06-55-04": INTEL_NEW[:-8]})
    code, tree = run_hook(tmp_path, [bad], early)
    lines = capsys.readouterr().err.splitlines()
    assert code == 1
    assert lines[0] == "overlay-agent: error: 1 problem(s) found:"
    assert re.fullmatch(rf"dir:{re.escape(str(bad))}: lib/firmware/intel-ucode/06-55-04: "
                        r"malformed GenuineIntel microcode: .*", lines[1]), lines
    assert len(lines) == 2
    assert early.read_bytes() == before
    assert not (tree / "extensions.yaml").exists()


def test_without_an_early_archive_the_microcode_is_left_out_with_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ucode = extension(tmp_path / "exts", "intel-ucode",
                      {"lib/firmware/intel-ucode/06-55-04": INTEL_NEW})
    code, _tree = run_hook(tmp_path, [ucode], None)
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.splitlines()[-1] == ("overlay-agent: warning: CPU microcode of intel-ucode left "
                                    "out: no early archive to merge it into (--early-cpio)")


@pytest.mark.parametrize(("make", "kind"), [
    (lambda p: os.mkfifo(p), "a fifo"),
    (lambda p: p.symlink_to("/dev/zero"), "a character device"),
])
def test_an_early_archive_that_is_no_file_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], make: object, kind: str) -> None:
    """Never a hang on a fifo nor an endless read: one problem, the archive untouched."""
    early = tmp_path / "mkinitramfs-FW_x"
    make(early)  # type: ignore[operator]
    ucode = extension(tmp_path / "exts", "intel-ucode",
                      {"lib/firmware/intel-ucode/06-55-04": INTEL_NEW})
    code, tree = run_hook(tmp_path, [ucode], early)
    lines = capsys.readouterr().err.splitlines()
    assert code == 1
    assert lines == ["overlay-agent: error: 1 problem(s) found:",
                     f"{early}: cannot read the early archive: {kind}, not a regular file"]
    assert not (tree / "extensions.yaml").exists()
