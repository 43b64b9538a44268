"""The early microcode archive: which extension files count, problems named by extension and
file, the archive put first and merged with the input's own, the rest kept byte for byte."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path

import pytest

from agent import cpio
from agent.bake import microcode
from agent.bake.early import (
    RECORD,
    MicrocodeSource,
    add_microcode,
    leading_archives,
    load_microcode,
    plan_early,
    read_early_microcode,
    with_early,
)
from agent.bake.firmware import firmware_entries
from agent.bake.microcode import AMD, INTEL
from agent.errors import ValidationFailed
from tests.unit.bake.ucode import amd_container, amd_patch, intel_update

INTEL_OLD = intel_update(0x50654, 0x20) + intel_update(0x806EC, 0xF4, pf=0x94)
INTEL_NEW = intel_update(0x50654, 0x21) + intel_update(0x806EC, 0xF0, pf=0x94)
AMD_OLD = amd_container([(0x00830F10, 0x8310)], [amd_patch(0x8310, 0x0830107A)])
AMD_NEW = amd_container([(0x00830F10, 0x8310), (0x00A00F11, 0xA011)],
                        [amd_patch(0x8310, 0x0830107C), amd_patch(0xA011, 0x0A0011D5)])
INTEL_BIN = "kernel/x86/microcode/GenuineIntel.bin"
AMD_BIN = "kernel/x86/microcode/AuthenticAMD.bin"


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def archive(entries: list[cpio.Entry], sort: bool = True) -> bytes:
    buf = io.BytesIO()
    cpio.write(cpio.with_parents(entries) if sort else entries, buf)
    return buf.getvalue()


def debian_initrd(early: dict[str, bytes], main: dict[str, bytes] | None = None) -> bytes:
    """One early archive per vendor as Debian's hooks prepend them, then a gzip main."""
    parts = [archive([cpio.regular(name, data)]) for name, data in early.items()]
    main = main or {"init": b"#!/bin/sh\n"}
    return b"".join(parts) + cpio.compress(archive(
        [cpio.regular(n, d, 0o755) for n, d in main.items()]), "gzip")


def source(tmp_path: Path, name: str, files: dict[str, bytes]) -> MicrocodeSource:
    return MicrocodeSource(name, f"dir:/exts/{name}", write_files(tmp_path / name, files))


def test_which_files_are_microcode(tmp_path: Path) -> None:
    root = write_files(tmp_path / "ext", {
        "lib/firmware/intel-ucode/06-55-04": INTEL_OLD,
        "lib/firmware/intel-ucode/06-8e-09.initramfs": INTEL_NEW,
        "lib/firmware/intel-ucode/README": b"not microcode",
        "lib/firmware/intel-ucode/06-55-04.asc": b"signature",
        "usr/lib/firmware/amd-ucode/microcode_amd_fam17h.bin": AMD_OLD,
        "usr/lib/firmware/amd-ucode/microcode_amd_fam17h.bin.asc": b"signature",
        "usr/lib/firmware/amd-ucode/LICENSE.amd-ucode": b"text",
        "usr/lib/firmware/amd/amd_sev_fam17h_model0xh.sbin": b"not cpu microcode",
        "lib/firmware/vendor/06-55-04": b"another folder",
    })
    os.symlink("06-55-04", root / "lib/firmware/intel-ucode/06-55-05")
    linked = write_files(tmp_path / "linked", {"usr/lib/firmware/intel-ucode/06-55-04": INTEL_OLD})
    os.symlink("usr/lib", linked / "lib")       # merged /usr: read once, through the real folder
    files, problems = load_microcode([MicrocodeSource("ext", "dir:ext", root),
                                      MicrocodeSource("linked", "dir:linked", linked)])
    assert problems == []
    assert [(f.vendor, f.label, f.path) for f in files] == [
        (INTEL, "ext", "lib/firmware/intel-ucode/06-55-04"),
        (INTEL, "ext", "lib/firmware/intel-ucode/06-8e-09.initramfs"),
        (AMD, "ext", "usr/lib/firmware/amd-ucode/microcode_amd_fam17h.bin"),
        (INTEL, "linked", "usr/lib/firmware/intel-ucode/06-55-04")]


def test_malformed_microcode_is_one_line_per_file(tmp_path: Path) -> None:
    good = source(tmp_path, "good", {"lib/firmware/intel-ucode/06-55-04": INTEL_OLD})
    bad = source(tmp_path, "bad", {
        "lib/firmware/intel-ucode/06-55-04": INTEL_OLD[:-4] + b"\1\0\0\0",
        "usr/lib/firmware/amd-ucode/microcode_amd.bin": b"\x7fELF" + AMD_OLD[4:],
        "usr/lib/firmware/amd-ucode/microcode_amd_fam19h.bin": b"",
    })
    files, problems = load_microcode([good, bad])
    assert [f.label for f in files] == ["good"]
    assert problems == [
        "dir:/exts/bad: lib/firmware/intel-ucode/06-55-04: malformed GenuineIntel microcode: "
        "update at offset 1024: checksum of header and data does not sum to 0",
        "dir:/exts/bad: usr/lib/firmware/amd-ucode/microcode_amd.bin: malformed AuthenticAMD "
        "microcode: container at offset 0: no AMD container magic and equivalence table "
        "(not AMD microcode)",
        "dir:/exts/bad: usr/lib/firmware/amd-ucode/microcode_amd_fam19h.bin: malformed "
        "AuthenticAMD microcode: empty file"]


def early_members(blob: bytes) -> dict[str, cpio.Entry]:
    (start, _end, entries), *_ = leading_archives(blob, "out")
    assert start == 0
    return {e.name: e for e in entries}


def test_merged_with_the_input_s_early_archives_rest_kept(tmp_path: Path) -> None:
    initrd = debian_initrd({INTEL_BIN: INTEL_OLD, AMD_BIN: AMD_OLD})
    main_at = leading_archives(initrd, "in")[-1][1]
    ext = source(tmp_path, "ucode", {"lib/firmware/intel-ucode/06-55-04": INTEL_NEW,
                                     "lib/firmware/amd-ucode/microcode_amd_fam17h.bin": AMD_NEW})
    files, _ = load_microcode([ext])
    plan, problems = plan_early(initrd, files, "in.img")
    assert problems == [] and plan is not None
    out = with_early(plan, initrd, 1700000000)
    assert with_early(plan, initrd, 1700000000) == out
    archives = leading_archives(out, "out")
    assert len(archives) == 1              # the input's two early archives are replaced
    end = archives[0][1]
    assert out[end:] == initrd[main_at:] and end % 4 == main_at % 4
    members = early_members(out)
    pad = list(members)[7]                 # a folder whose name puts the Intel data on 16 bytes
    assert list(members) == ["etc", "etc/overlay-agent", RECORD, "kernel", "kernel/x86",
                             "kernel/x86/microcode", AMD_BIN, pad, INTEL_BIN]
    assert pad.startswith("kernel/x86/microcode/.align") and stat.S_ISDIR(members[pad].mode)
    assert {(e.uid, e.gid, e.mtime) for e in members.values()} == {(0, 0, 1700000000)}
    intel = microcode.parse_intel(members[INTEL_BIN].content())
    assert sorted((b.signatures[0], b.revision) for b in intel) == [(0x50654, 0x21),
                                                                  (0x806EC, 0xF4)]
    assert out.index(INTEL_BIN.encode() + b"\0") + len(INTEL_BIN) + 1 + 3 & ~3 == \
        out.index(members[INTEL_BIN].content())
    assert out.index(members[INTEL_BIN].content()) % 16 == 0
    amd = microcode.parse_amd(members[AMD_BIN].content())
    assert sorted((b.signatures, b.revision) for b in amd) == [
        ((0x00830F10,), 0x0830107C), ((0x00A00F11,), 0x0A0011D5)]
    record = json.loads(members[RECORD].content())
    assert sorted(map(tuple, record["GenuineIntel.bin"].values())) == [("initramfs",),
                                                                       ("ucode",)]
    found = read_early_microcode([e for _, _, e in archives])
    assert [(m.vendor, len(m.blobs), m.sources) for m in found] == [
        (INTEL, 2, (("ucode",), ("initramfs",))), (AMD, 2, (("ucode",), ("ucode",)))]


def test_a_vendor_no_extension_ships_is_kept_as_is(tmp_path: Path) -> None:
    odd = AMD_OLD + AMD_OLD                # merging would change it: it must not be touched
    initrd = debian_initrd({AMD_BIN: odd, "kernel/firmware/acpi/ssdt.aml": b"DSDT table"})
    files, _ = load_microcode([source(tmp_path, "intel", {
        "usr/lib/firmware/intel-ucode/06-55-04": INTEL_OLD})])
    plan, _ = plan_early(initrd, files, "in")
    assert plan is not None
    members = early_members(with_early(plan, initrd, 0))
    assert members[AMD_BIN].content() == odd
    assert members["kernel/firmware/acpi/ssdt.aml"].content() == b"DSDT table"
    patch = microcode.parse_amd(odd)[0].data
    assert json.loads(members[RECORD].content())["AuthenticAMD.bin"] == {
        hashlib.sha256(patch).hexdigest(): ["initramfs"]}


def test_an_input_starting_with_its_main_archive_is_kept_whole(tmp_path: Path) -> None:
    """An uncompressed archive holding more than early files (here /init and microcode) is not
    ours to rewrite: our archive goes in front, the loader takes ours first."""
    initrd = archive([cpio.regular("init", b"#!/bin/sh\n", 0o755),
                      cpio.regular(INTEL_BIN, INTEL_OLD)])
    files, _ = load_microcode([source(tmp_path, "e", {
        "lib/firmware/intel-ucode/06-55-04": intel_update(0x806EC, 0xF5, pf=0x94)})])
    plan, _ = plan_early(initrd, files, "in")
    assert plan is not None
    out = with_early(plan, initrd, 0)
    first_end = leading_archives(out, "out")[0][1]
    assert out[first_end:] == initrd
    merged = microcode.parse_intel(early_members(out)[INTEL_BIN].content())
    assert sorted((b.signatures[0], b.revision) for b in merged) == [(0x50654, 0x20),
                                                                   (0x806EC, 0xF5)]


def test_no_microcode_leaves_the_input_alone_and_bad_input_microcode_is_named(
        tmp_path: Path) -> None:
    initrd = debian_initrd({INTEL_BIN: INTEL_OLD[:100]})
    assert plan_early(initrd, [], "in.img") == (None, [])
    files, _ = load_microcode([source(tmp_path, "e", {
        "lib/firmware/intel-ucode/06-55-04": INTEL_NEW})])
    _plan, problems = plan_early(initrd, files, "in.img")
    assert problems == ["in.img: kernel/x86/microcode/GenuineIntel.bin: malformed "
                        "GenuineIntel microcode: update at offset 0: truncated (100 of 1024 "
                        "bytes)"]


def test_add_microcode_rewrites_in_place_keeping_earlier_labels(tmp_path: Path) -> None:
    """The hook's entry point, run twice: the second run keeps the first one's record."""
    image = tmp_path / "initrd.img"
    image.write_bytes(debian_initrd({AMD_BIN: AMD_OLD}))
    before = image.read_bytes()
    assert add_microcode(image, [source(tmp_path, "none", {"usr/local/x": b"x"})], 0) is False
    assert image.read_bytes() == before
    first = source(tmp_path, "amd-ucode", {"lib/firmware/amd-ucode/microcode_amd.bin": AMD_NEW})
    assert add_microcode(image, [first], 0) is True
    second = source(tmp_path, "intel-ucode", {"lib/firmware/intel-ucode/06-55-04": INTEL_OLD})
    assert add_microcode(image, [second], 0) is True
    archives = leading_archives(image.read_bytes(), "img")
    found = {m.vendor: m.sources for m in read_early_microcode([e for *_, e in archives])}
    assert found == {INTEL: (("intel-ucode",), ("intel-ucode",)),
                     AMD: (("amd-ucode",), ("amd-ucode",))}
    bad = source(tmp_path, "bad", {"lib/firmware/amd-ucode/microcode_amd.bin": b"junk"})
    after = image.read_bytes()
    with pytest.raises(ValidationFailed) as caught:
        add_microcode(image, [bad], 0)
    assert caught.value.problems == [
        "dir:/exts/bad: lib/firmware/amd-ucode/microcode_amd.bin: malformed AuthenticAMD "
        "microcode: container at offset 0: truncated header"]
    assert image.read_bytes() == after


def test_inspect_reads_unrecorded_and_unreadable_early_microcode() -> None:
    good = archive([cpio.regular(INTEL_BIN, INTEL_OLD)])
    bad = archive([cpio.regular(AMD_BIN, b"garbage!" * 3)])
    found = read_early_microcode([cpio.read(good)[0], cpio.read(bad)[0]])
    assert [(m.vendor, m.archive, len(m.blobs), m.sources, m.problem) for m in found] == [
        (INTEL, 0, 2, ((), ()), ""),
        (AMD, 1, 0, (), "container at offset 0: no AMD container magic and equivalence table "
                        "(not AMD microcode)")]


def test_firmware_copy_leaves_cpu_microcode_to_the_early_archive(tmp_path: Path) -> None:
    root = write_files(tmp_path / "r", {"lib/firmware/intel-ucode/06-55-04": INTEL_OLD,
                                        "lib/firmware/amd-ucode/microcode_amd.bin": AMD_OLD,
                                        "lib/firmware/vendor/intel-ucode/x": b"kept",
                                        "usr/lib/firmware/i915/skl_dmc.bin": b"kept"})
    entries = firmware_entries([root], "usr/lib/firmware")
    assert [(e.name, stat.S_ISREG(e.mode)) for e in entries] == [
        ("usr/lib/firmware/i915/skl_dmc.bin", True),
        ("usr/lib/firmware/vendor/intel-ucode/x", True)]


@pytest.mark.parametrize("name_length", range(1, 17))
def test_intel_data_starts_on_16_bytes_whatever_comes_before(tmp_path: Path,
                                                               name_length: int) -> None:
    initrd = debian_initrd({f"kernel/firmware/acpi/{'x' * name_length}.aml": b"table"})
    files, _ = load_microcode([source(tmp_path, "e", {
        "lib/firmware/intel-ucode/06-55-04": INTEL_OLD})])
    plan, _ = plan_early(initrd, files, "in")
    assert plan is not None
    out = with_early(plan, initrd, 0)
    assert out.index(INTEL_OLD) % 16 == 0
    assert early_members(out)[INTEL_BIN].content() == INTEL_OLD


@pytest.mark.parametrize("record,expected", [
    (b'{"GenuineIntel.bin": {"SHA": ["ext\\u001b[31m", 7]}}', (("ext\\x1b[31m", "7"),)),
    (b'{"GenuineIntel.bin": ["not", "a", "table"]}', ((),)),
    (b'{"GenuineIntel.bin": {"SHA": "not a list"}}', ((),)),
    (b"[" * 100000 + b"]" * 100000, ((),)),
    (b"\xff\xfe not json", ((),)),
], ids=["escaped", "list", "labels-not-list", "deep", "not-utf8"])
def test_a_hostile_record_is_escaped_or_ignored(record: bytes,
                                                expected: tuple[tuple[str, ...]]) -> None:
    update = intel_update(0x50654, 0x20)
    sha = hashlib.sha256(update).hexdigest()
    entries = [cpio.regular(RECORD, record.replace(b"SHA", sha.encode())),
               cpio.regular(INTEL_BIN, update)]
    (found,) = read_early_microcode([entries])
    assert found.sources == expected
