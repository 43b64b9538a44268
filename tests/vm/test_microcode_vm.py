"""Microcode from extensions on both stock kernels: Debian's early archives (bookworm's
packages) in front of the agent's initramfs, trixie's packed as siderolabs extensions and
baked by `build`. The result boots to the root, and the kernel's microcode lines are the
ones its early loader prints under emulation, where the CPU takes no update: QEMU's CPU
reports a fixed revision whatever is written to the update MSR.

The models are a plain qemu64 with another vendor and signature and without the hypervisor
bit (with it the kernel disables its loader): Intel 0x90661 (pf 1), for which Intel ships an
update, and AMD family 17h 0x830f10 (Zen 2). Linux 6.12 checks an AMD patch's sha256 before
applying it and, for a revision it has no table for (QEMU's 0x1000065), prints that revision
and the CPU's signature: that line appears only when the loader found a patch for this CPU
in the early archive, which the same boot without the microcode extensions shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_boot import assert_booted as booted

from devtools.images import Machine
from devtools.qemu import BootResult
from tests.kernel.microcode_debs import debian_early, fetch_microcode, siderolabs_extensions

ROOT = Path(__file__).resolve().parents[2]
INTEL_CPU = "qemu64,+rdrand,-hypervisor,vendor=GenuineIntel,family=6,model=150,stepping=1"
AMD_CPU = "qemu64,+rdrand,-hypervisor,vendor=AuthenticAMD,family=23,model=49,stepping=0"
AMD_FOUND = "microcode: CPUID(1).EAX: 0x830f10, current revision: 0x1000065"


@pytest.fixture(scope="module")
def baked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Debian's early archives (bookworm) and the two extensions (trixie), made once."""
    base = tmp_path_factory.mktemp("microcode")
    (base / "early.cpio").write_bytes(debian_early(base, fetch_microcode("bookworm")))
    intel, amd = siderolabs_extensions(base / "exts", fetch_microcode("trixie"))
    return {"base": base, "intel": intel, "amd": amd}


def bake(machine: Machine, baked: dict[str, Path]) -> Path:
    """The agent's initramfs behind Debian's early archives, with both extensions baked."""
    initrd = baked["base"] / f"in-{machine.kernel.suite}.img"
    out = baked["base"] / f"out-{machine.kernel.suite}.img"
    if not out.exists():
        initrd.write_bytes((baked["base"] / "early.cpio").read_bytes()
                           + machine.initrd_with_root.read_bytes())
        subprocess.run([sys.executable, "-m", "agent", "build", "--os-version", "v1.7.0",
                        "--extension", f"dir:{baked['intel']}",
                        "--extension", f"dir:{baked['amd']}",
                        "--initramfs", str(initrd), "-o", str(out)], cwd=ROOT, check=True,
                       capture_output=True)
    return out


def microcode_lines(result: BootResult) -> list[str]:
    """The kernel's `microcode: ` lines (the first may share a line with the firmware's)."""
    return [line[line.index("microcode: "):] for line in result.output.splitlines()
            if "microcode: " in line]


def assert_booted(result: BootResult, token: str) -> None:
    """To the root through the agent, no extension reporting a problem."""
    booted(result, token, "root /rootfs.sqsh (squashfs) mounted read-only")
    assert "overlay-agent: extension" not in result.output, result.output[-3000:]


def test_intel_cpu(machine: Machine, baked: dict[str, Path], token: str) -> None:
    result = machine.boot("microcode-intel", "panic=-1", with_root=True, token=token,
                          initrd=bake(machine, baked), cpu=INTEL_CPU)
    assert_booted(result, token)
    expected = {"bookworm": ["microcode: sig=0x90661, pf=0x1, revision=0x1",
                             "microcode: Microcode Update Driver: v2.2."],
                "trixie": ["microcode: Current revision: 0x00000001"]}
    assert microcode_lines(result) == expected[machine.kernel.suite], result.output[-3000:]


def test_amd_cpu(machine: Machine, baked: dict[str, Path], token: str) -> None:
    result = machine.boot("microcode-amd", "panic=-1", with_root=True, token=token,
                          initrd=bake(machine, baked), cpu=AMD_CPU)
    assert_booted(result, token)
    lines = microcode_lines(result)
    if machine.kernel.suite == "bookworm":
        assert lines == ["microcode: CPU0: patch_level=0x01000065",
                         "microcode: Microcode Update Driver: v2.2."], result.output[-3000:]
        return
    assert lines[1:] == [AMD_FOUND, "microcode: Current revision: 0x01000065"], lines
    assert lines[0].startswith("microcode: You should not be seeing this."), lines
    plain = machine.boot("microcode-amd-none", "panic=-1", with_root=True, token=token,
                         cpu=AMD_CPU)
    assert_booted(plain, token)
    assert microcode_lines(plain) == ["microcode: Current revision: 0x01000065"]
