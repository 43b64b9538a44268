"""Large input initramfs files for `build` and `inspect`: hundreds of MiB of zero padding, an
uncompressed archive holding a 300 MiB member, an early archive whose microcode member is
too big, a file one byte over the limit. The inputs are sparse files made here (no disk,
no stored binaries); each case runs the real command line in a child under the corpus
limits (tests/hostile_cli.py: 256 MiB of address space, 10 s of CPU), so an input read
whole, or mapped, fails the case.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import cpio, listfile
from agent.bake.early import MAX_EARLY_BYTES, RECORD
from agent.bake.segments import MAX_UNPACKED, SegmentFormat, merged_members, split_segments
from agent.files import open_buffer
from tests.hostile import sparse
from tests.hostile_cli import Case, check
from tests.unit.bake.ucode import intel_update
from tests.unit.test_hostile_inputs import BASE, archive, ext_dir, failed, initramfs, inspect

MiB = 1 << 20
ZEROS = 400 * MiB
BIG = 300 * MiB
INTEL_BIN = "kernel/x86/microcode/GenuineIntel.bin"


# ---------------------------------------------------------------- generators

def after_zeros(zeros: int, data: bytes) -> Callable[[Path], None]:
    """`zeros` zero bytes (a hole: no disk), then `data`."""
    def make(path: Path) -> None:
        with path.open("wb") as f:
            f.seek(zeros)
            f.write(data)
    return make


def big_member(name: str, size: int, *rest: cpio.Entry) -> Callable[[Path], None]:
    """One newc archive: `name` holding `size` zero bytes (a hole), then `rest`."""
    def make(path: Path) -> None:
        with path.open("wb") as f:
            f.write(cpio._header(1, cpio.regular(name, b""), size, 1))
            f.seek(size + (-size % 4), os.SEEK_CUR)
            f.write(archive(*rest))
    return make


def microcode_ext(tmp: Path) -> Path:
    """The valid fixture extension, shipping one Intel microcode update."""
    folder = ext_dir(tmp)
    ucode = folder / "rootfs/lib/firmware/intel-ucode/06-8e-0a"
    ucode.parent.mkdir(parents=True)
    ucode.write_bytes(intel_update(0x806EA, 0xF0))
    return folder


def build(image: Callable[[Path], Path],
          ext: Callable[[Path], Path] = ext_dir) -> Callable[[Path], list[str]]:
    return lambda tmp: ["build", "--initramfs", str(image(tmp)), "-o", str(tmp / "out.img"),
                        "--extension", f"dir:{ext(tmp)}"]


def built(input_size: int, early: bool = False) -> Callable[[Path], None]:
    """OUT holds the input byte for byte (after the early archive, when there is one) and
    the list file. OUT is removed once checked: the input was sparse, OUT is not."""
    def after(tmp: Path) -> None:
        src, out = tmp / "initrd.img", tmp / "out.img"
        with open_buffer(str(src), -1) as given, open_buffer(str(out), -1) as blob:
            segments = split_segments(blob, "out")
            start = segments[1].offset if early else 0
            assert len(blob) >= start + input_size
            for at in range(0, input_size, 64 * MiB):
                assert blob[start + at:start + at + MiB] == given[at:at + MiB]
            assert blob[start + input_size - 64:start + input_size] == given[-64:]
            tree = merged_members(segments)
        assert listfile.LIST_PATH.strip("/") in tree
        assert (RECORD in tree) is early
        assert segments[-1].format is SegmentFormat.ZSTD
        out.unlink()
    return after


# ---------------------------------------------------------------- cases

ZEROS_IMAGE = ZEROS + len(archive(*BASE))
BIG_IMAGE = len(cpio._header(1, cpio.regular("big", b""), BIG, 1)) + BIG + len(archive(*BASE))
OUT = ("{tmp}/out.img: * bytes (%d input + * extensions), 1 layer(s)\n"
       "  000-talos-valid.sqsh  talos-valid 1.0.0-v1.0.0  * bytes  sha256:*  verity:*\n")
NONE = "\nno /extensions.yaml: no extensions baked in\n"
EARLY_BIG = 100 * MiB
FILES: dict[str, Callable[[Path], None]] = {
    "400-MiB-zeros": after_zeros(ZEROS, archive(*BASE)),
    "300-MiB-member": big_member("big", BIG, *BASE),
    "1-GiB-plus-1": sparse(MAX_UNPACKED + 1),
}

CASES: dict[str, Case] = {
    # ------------------------------------------------ build
    "build-400-MiB-zeros": Case(build(initramfs(FILES["400-MiB-zeros"])), 0, "",
                                OUT % ZEROS_IMAGE, after=built(ZEROS_IMAGE)),
    "build-300-MiB-member": Case(build(initramfs(FILES["300-MiB-member"])), 0, "",
                                 OUT % BIG_IMAGE, after=built(BIG_IMAGE)),
    "build-1-GiB-zeros": Case(build(initramfs(sparse(MAX_UNPACKED))), 1,
                              failed("{tmp}/initrd.img: holds no archive")),
    "build-1-GiB-plus-1": Case(build(initramfs(FILES["1-GiB-plus-1"])), 1,
                               failed("{tmp}/initrd.img: cannot read: 1073741825 bytes, over "
                                      "the limit of 1073741824")),
    # the early archive is planned on the leading archives, read as they stream by
    "build-microcode-on-300-MiB-member": Case(
        build(initramfs(FILES["300-MiB-member"]), microcode_ext), 0, "", OUT % BIG_IMAGE,
        after=built(BIG_IMAGE, early=True)),
    "build-microcode-early-member-100-MiB": Case(
        build(initramfs(big_member(INTEL_BIN, EARLY_BIG)), microcode_ext), 1,
        failed(f"{{tmp}}/initrd.img: early archive at offset 0: cpio: member '{INTEL_BIN}' "
               f"({EARLY_BIG} bytes) takes the early members over {MAX_EARLY_BYTES} bytes")),
    # ------------------------------------------------ inspect
    "inspect-400-MiB-zeros": Case(inspect(initramfs(FILES["400-MiB-zeros"])), 0, "",
                                  f"{{tmp}}/initrd.img: {ZEROS_IMAGE} bytes, 1 segment(s)\n"
                                  "SEGMENT  OFFSET     LENGTH  FORMAT  UNPACKED  MEMBERS\n"
                                  f"0        {ZEROS}  368     cpio    368       2\n" + NONE),
    "inspect-300-MiB-member": Case(inspect(initramfs(FILES["300-MiB-member"])), 0, "",
                                   f"{{tmp}}/initrd.img: {BIG_IMAGE} bytes, 1 segment(s)\n"
                                   "SEGMENT  OFFSET  LENGTH     FORMAT  UNPACKED   MEMBERS\n"
                                   f"0        0       {BIG_IMAGE}  cpio    {BIG_IMAGE}  3\n"
                                   + NONE),
    # inspect has no size limit of its own: zeros are padding, read a slice at a time
    "inspect-1-GiB-plus-1": Case(inspect(initramfs(FILES["1-GiB-plus-1"])), 0, "",
                                 f"{{tmp}}/initrd.img: {MAX_UNPACKED + 1} bytes, 0 segment(s)\n"
                                 "SEGMENT  OFFSET  LENGTH  FORMAT  UNPACKED  MEMBERS\n" + NONE),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_large_input_within_limits(tmp_path: Path, name: str) -> None:
    check(CASES[name], tmp_path)
