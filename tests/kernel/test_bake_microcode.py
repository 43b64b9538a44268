"""Debian's real intel-microcode and amd64-microcode, packed as extensions in the siderolabs
layout, baked onto a Debian-style initrd whose early archives Debian's own hooks would have
made from the previous release's packages: one merged early archive comes first."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from bake_support import archive, overlay_agent
from microcode_debs import (
    bumped_intel_blob,
    debian_early,
    fetch_microcode,
    firmware,
    iucode_list,
    newest_amd_matches,
    newest_intel,
    siderolabs_extensions,
)

from agent import cpio
from agent.bake import microcode
from agent.bake.early import RECORD, leading_archives
from agent.bake.segments import merged_members, split_segments

INTEL_BIN = "kernel/x86/microcode/GenuineIntel.bin"
AMD_BIN = "kernel/x86/microcode/AuthenticAMD.bin"


@pytest.fixture(scope="module")
def debs() -> dict[str, dict[str, Path]]:
    return {suite: fetch_microcode(suite) for suite in ("bookworm", "trixie")}


def debian_initrd(base: Path, tree: dict[str, Path]) -> tuple[Path, int]:
    """Debian's early archives (with one host update made newer), then a zstd main archive;
    and where main starts."""
    extra = base / "host-newer.bin"
    extra.write_bytes(bumped_intel_blob(firmware(tree["intel-microcode"], "intel-ucode")))
    early = debian_early(base, tree, [extra])
    main = cpio.compress(archive([cpio.regular("init", b"#!/bin/sh\n", 0o755),
                                  cpio.symlink("lib", "usr/lib"),
                                  cpio.directory("usr/lib/firmware")]), "zstd")
    path = base / "initrd.img"
    path.write_bytes(early + main)
    return path, len(early)


def build(out: Path, initrd: Path, *exts: Path, check: bool = True
          ) -> subprocess.CompletedProcess[str]:
    args = [a for e in exts for a in ("--extension", f"dir:{e}")]
    return overlay_agent("build", *args, "--os-version", "v1.7.0", "--initramfs", initrd,
                         "-o", out, check=check)


def test_debian_microcode_baked_early_and_merged(tmp_path: Path,
                                                 debs: dict[str, dict[str, Path]]) -> None:
    initrd, main_at = debian_initrd(tmp_path, debs["bookworm"])
    intel_ext, amd_ext = siderolabs_extensions(tmp_path / "exts", debs["trixie"])
    out = tmp_path / "out.img"
    build(out, initrd, intel_ext, amd_ext)
    blob, given = out.read_bytes(), initrd.read_bytes()

    ((start, end, members),) = leading_archives(blob, "out")[:1]
    assert start == 0 and len(leading_archives(blob, "out")) == 1
    names = {e.name: e for e in members}
    assert sorted(n for n in names if not n.startswith("kernel/x86/microcode/.align")) == [
        "etc", "etc/overlay-agent", RECORD, "kernel", "kernel/x86", "kernel/x86/microcode",
        AMD_BIN, INTEL_BIN]
    # everything after Debian's early archives (their block padding too), byte for byte
    rest = leading_archives(given, "in")[-1][1]
    assert rest < main_at and given[rest:main_at] == bytes(main_at - rest)
    assert blob[end:end + len(given) - rest] == given[rest:]
    assert [s.format.value for s in split_segments(blob, "out")] == ["cpio", "zstd", "zstd"]
    assert blob.index(names[INTEL_BIN].content()) % 16 == 0

    merged_intel = tmp_path / "GenuineIntel.bin"
    merged_intel.write_bytes(names[INTEL_BIN].content())
    ours = microcode.parse_intel(merged_intel.read_bytes())
    listed = iucode_list(merged_intel)                    # every blob, as we read it
    assert sorted(listed) == list(range(1, len(ours) + 1))
    assert all(b.describe().split(" (+")[0] in listed[i] for i, b in enumerate(ours, start=1))
    host_early = cpio.read(given)[0]
    inputs = [next(e for e in host_early if e.name.endswith("GenuineIntel.bin")).content()]
    inputs += [p.read_bytes() for p in sorted((intel_ext / "rootfs/lib/firmware/intel-ucode")
                                              .iterdir())]
    assert newest_intel([merged_intel.read_bytes()]) == newest_intel(inputs)
    bumped = microcode.parse_intel(bumped_intel_blob(
        firmware(debs["bookworm"]["intel-microcode"], "intel-ucode")))[0]
    assert bumped.data in [b.data for b in ours]

    amd_inputs = [cpio.read(given, leading_archives(given, "in")[1][0])[0][-1].content()]
    amd_inputs += [p.read_bytes() for p in sorted(
        (amd_ext / "rootfs/usr/lib/firmware/amd-ucode").glob("microcode_amd*.bin"))]
    merged_amd = names[AMD_BIN].content()
    assert newest_amd_matches(merged_amd, amd_inputs) > 30

    tree = merged_members(split_segments(blob, "out"))
    assert not any("intel-ucode" in n or "amd-ucode" in n for n in tree
                   if n.startswith("usr/lib/firmware"))

    report = json.loads(overlay_agent("inspect", out, "-o", "json").stdout)
    intel, amd = report["early_microcode"]
    assert (intel["vendor"], intel["segment"], intel["blobs"], amd["vendor"], amd["blobs"]) == (
        "GenuineIntel", 0, len(ours), "AuthenticAMD", len(microcode.parse_amd(merged_amd)))
    sources = {(u["signatures"][0], u["pf_mask"], u["revision"]): u["from"]
               for u in intel["updates"]}
    assert sources[(bumped.signatures[0], bumped.platforms, bumped.revision)] == ["initramfs"]
    assert {label for u in intel["updates"] for label in u["from"]} == {"initramfs",
                                                                        "intel-ucode"}
    assert all(u["from"] for u in intel["updates"] + amd["updates"])
    table = overlay_agent("inspect", out).stdout.splitlines()
    assert f"early microcode, segment 0: {INTEL_BIN}: {len(ours)} blob(s)" in table
    assert f"  001: {ours[0].describe()}  from {', '.join(intel['updates'][0]['from'])}" \
        in table

    again = tmp_path / "again.img"
    build(again, initrd, intel_ext, amd_ext)
    assert again.read_bytes() == blob


def test_malformed_microcode_names_extension_and_file(tmp_path: Path,
                                                      debs: dict[str, dict[str, Path]]) -> None:
    initrd, _ = debian_initrd(tmp_path, debs["bookworm"])
    _intel, amd = siderolabs_extensions(tmp_path / "exts", debs["trixie"])
    bad = amd / "rootfs/usr/lib/firmware/amd-ucode/microcode_amd_fam17h.bin"
    bad.write_bytes(bad.read_bytes()[:-100])
    out = tmp_path / "out.img"
    proc = build(out, initrd, amd, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == "overlay-agent: error: 1 problem(s) found:"
    assert re.fullmatch(rf"dir:{re.escape(str(amd))}: usr/lib/firmware/amd-ucode/"
                        r"microcode_amd_fam17h\.bin: malformed AuthenticAMD microcode: section "
                        r"at offset \d+: type 1 of \d+ bytes is not a patch that fits \(type 1, "
                        r"at least 64 bytes\)", lines[1]), lines
    assert len(lines) == 2 and not out.exists()
