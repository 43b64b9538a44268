"""`overlay-agent build` end to end: real mksquashfs, real loop + squashfs mounts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from bake_support import debian_style_initrd, make_extension, overlay_agent

from agent import listfile
from agent.bake.segments import merged_members, split_segments


@pytest.fixture
def exts(tmp_path: Path) -> dict[str, Path]:
    base = tmp_path / "exts"
    return {
        "tool": make_extension(base, "tool", {"usr/local/bin/tool": b"#!/bin/sh\necho tool\n",
                                              "usr/local/share/tool/data": bytes(range(256)) * 64}),
        "fw": make_extension(base, "fw", {"usr/lib/firmware/vendor/blob.bin": b"\xaa" * 1000}),
        "bad": make_extension(base, "bad", {"boot/vmlinuz": b"kernel"}),
        "nomanifest": make_extension(base, "nomanifest", {"usr/local/x": b"x"}, manifest=""),
    }


def build(out: Path, initrd: Path, *sources: Path, extra: tuple[str, ...] = (),
          check: bool = True) -> subprocess.CompletedProcess[str]:
    args = [a for s in sources for a in ("--extension", f"dir:{s}")]
    return overlay_agent("build", *args, "--initramfs", initrd, "-o", out,
                         "--os-version", "v1.7.0", *extra, check=check)


def test_same_inputs_give_identical_bytes(tmp_path: Path, exts: dict[str, Path]) -> None:
    initrd = debian_style_initrd(tmp_path / "initrd.img")
    first, second = tmp_path / "a.img", tmp_path / "b.img"
    build(first, initrd, exts["tool"], exts["fw"])
    for path in (exts["tool"] / "rootfs").rglob("*"):   # new mtimes must not matter
        os.utime(path, (1, 1), follow_symlinks=False)
    build(second, initrd, exts["tool"], exts["fw"], extra=("--jobs", "1"))
    assert first.read_bytes() == second.read_bytes()


def test_layers_list_and_firmware(tmp_path: Path, exts: dict[str, Path],
                                  private_mounts: None) -> None:
    initrd = debian_style_initrd(tmp_path / "initrd.img")
    out = tmp_path / "out.img"
    proc = build(out, initrd, exts["tool"], exts["fw"])
    assert proc.stdout.splitlines()[1].startswith("  000-tool.sqsh  tool 1.0.0  ")
    blob = out.read_bytes()
    assert blob.startswith(initrd.read_bytes())
    segments = split_segments(blob, "out")
    assert [s.format.value for s in segments] == ["cpio", "zstd", "zstd"]
    assert {e.uid for e in segments[2].entries} == {0} == {e.gid for e in segments[2].entries}
    names = [e.name for e in segments[2].entries]
    assert names == sorted(names)
    tree = merged_members(segments)
    # lib stays the initramfs's symlink; firmware goes where it points
    assert stat.S_ISLNK(tree["lib"].mode)
    assert tree["usr/lib/firmware/vendor/blob.bin"].data == b"\xaa" * 1000
    layers = listfile.read_list(tree["extensions.yaml"].content().decode())
    assert [(x.image, x.metadata.name, x.kind) for x in layers] == [
        ("000-tool.sqsh", "tool", listfile.KIND_EXTENSION),
        ("001-fw.sqsh", "fw", listfile.KIND_EXTENSION)]
    image = tmp_path / "000-tool.sqsh"
    image.write_bytes(tree["extensions/000-tool.sqsh"].content())
    assert layers[0].size == image.stat().st_size
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "squashfs", "-o", "loop,ro", str(image), str(mnt)], check=True)
    try:
        tool = mnt / "usr/local/bin/tool"
        assert tool.read_bytes() == b"#!/bin/sh\necho tool\n"
        st = tool.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o755)
        assert st.st_mtime == 1700000000
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    report = json.loads(overlay_agent("inspect", out, "-o", "json").stdout)
    assert [(e["name"], e["image_matches"]) for e in report["extensions"]] == [
        ("tool", "ok"), ("fw", "ok")]


@pytest.mark.parametrize("existing", [False, True], ids=["no-old-out", "old-out"])
def test_a_bad_extension_writes_nothing(tmp_path: Path, exts: dict[str, Path],
                                        existing: bool) -> None:
    initrd = debian_style_initrd(tmp_path / "initrd.img")
    out = tmp_path / "out.img"
    if existing:
        out.write_bytes(b"previous build")
    proc = build(out, initrd, exts["tool"], exts["bad"], exts["fw"], exts["nomanifest"],
                 check=False)
    assert proc.returncode == 1
    # exactly the problems `validate` finds (its tests own their wording), every one of them
    checked = overlay_agent("validate", "--os-version", "v1.7.0", *(
        f"dir:{exts[k]}" for k in ("tool", "bad", "fw", "nomanifest")), check=False)
    expected = checked.stdout.splitlines()
    assert [line.split(": ")[0] for line in expected] == [
        f"dir:{exts['bad']}"] * (len(expected) - 1) + [f"dir:{exts['nomanifest']}"]
    assert proc.stderr.splitlines() == [
        f"overlay-agent: error: {len(expected)} problem(s) found:", *expected]
    assert (out.read_bytes() == b"previous build") if existing else not out.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["exts", "initrd.img"]
                                                  + (["out.img"] if existing else []))


def test_duplicates_and_config_problems_are_all_reported(tmp_path: Path,
                                                         exts: dict[str, Path]) -> None:
    config = tmp_path / "machine.yaml"
    config.write_text(f"machine:\n  install:\n    extensions:\n      - image: dir:{exts['tool']}\n"
                      f"      - {{}}\n")
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(debian_style_initrd(tmp_path / "x.img").read_bytes()[:-7])
    proc = overlay_agent("build", "--config", config, "--extension", f"dir:{exts['tool']}",
                         "--initramfs", initrd, "-o", tmp_path / "out.img", check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "overlay-agent: error: 3 problem(s) found:",
        f"{config}: machine.install.extensions[1]: needs an image (a non-empty string)",
        f"dir:{exts['tool']}: listed twice (positions 1 and 2)",
        f"{initrd}: zstd frame at offset 712 is truncated "
        f"(the input must end on a complete archive)"]
    assert not (tmp_path / "out.img").exists()


def test_max_size_is_refused_with_the_sizes(tmp_path: Path, exts: dict[str, Path]) -> None:
    initrd = debian_style_initrd(tmp_path / "initrd.img")
    out = tmp_path / "out.img"
    build(out, initrd, exts["fw"])
    size = out.stat().st_size
    out.unlink()
    proc = build(out, initrd, exts["fw"], extra=("--max-size", str(size - 1)), check=False)
    assert proc.returncode == 1
    insize = initrd.stat().st_size
    assert proc.stderr == (f"overlay-agent: error: {out}: would be {size} bytes, over --max-size "
                           f"{size - 1} (input {insize} + extensions "
                           f"{size - insize - (-insize % 4)}); nothing written\n")
    assert not out.exists()
    build(out, initrd, exts["fw"], extra=("--max-size", str(size)))
    assert out.stat().st_size == size
