"""End-to-end boots of PID 1 under QEMU on both stock kernels: root sources and failures."""

from __future__ import annotations

import re

from agent.bake.segments import merged_members, split_segments
from devtools.images import EXT4_UUID, GPT_ROOT_LABEL, Machine, gpt_disk
from devtools.qemu import BootResult

HANDED_OVER = re.compile(r"ROOT-INIT pid=1 root=ro api= /dev /proc /sys /run args=(.*) "
                         r"token=(\w+)")
SUMMARY = re.compile(r"overlay-agent: exec /sbin/init \(uptime \d+\.\d\d s; agent loaded "
                     r"\d+\.\d\d s; early \d+ ms, .*modules \d+ ms, root \d+ ms")


def assert_booted(result: BootResult, token: str, root_line: str) -> re.Match[str]:
    assert not result.timed_out, result.output[-2000:]
    assert f"overlay-agent: {root_line}" in result.output, result.output[-2000:]
    assert SUMMARY.search(result.output), result.output[-2000:]
    match = HANDED_OVER.search(result.output)
    assert match and match.group(2) == token, result.output[-2000:]
    assert "Traceback" not in result.output
    return match


def assert_fatal(result: BootResult, reason: str | re.Pattern[str], panic: int = 1) -> None:
    """One clear line, then panic=: reboot, which -no-reboot turns into QEMU exiting."""
    assert not result.timed_out, result.output[-2000:]
    assert result.exit_code == 0
    lines = [ln for ln in result.output.splitlines() if "overlay-agent: fatal:" in ln]
    assert lines, result.output[-2000:]
    if isinstance(reason, str):
        assert lines[0] == f"overlay-agent: fatal: {reason}", result.output[-2000:]
    else:
        assert reason.fullmatch(lines[0].removeprefix("overlay-agent: fatal: ")), lines[0]
    assert ("overlay-agent: rebooting in 1 s" in result.output) == (panic > 0)
    assert "reboot: Restarting system" in result.output
    assert "Traceback" not in result.output
    assert "Attempted to kill init" not in result.output
    assert "ROOT-INIT" not in result.output


def test_a_root_image_in_initramfs(machine: Machine, token: str) -> None:
    result = machine.boot("a", "panic=-1 -- first second", with_root=True, token=token)
    match = assert_booted(result, token, "root /rootfs.sqsh (squashfs) mounted read-only")
    assert match.group(1) == "first second"   # what follows " -- " goes to init


def test_b_squashfs_disk(machine: Machine, token: str) -> None:
    result = machine.boot("b", "root=/dev/vda panic=-1", with_root=False,
                          disk=machine.root_sqsh, token=token)
    assert_booted(result, token, "root /dev/vda (squashfs) mounted read-only")


def test_c_ext4_disk_by_uuid(machine: Machine, token: str) -> None:
    result = machine.boot("c", f"root=UUID={EXT4_UUID} rw panic=-1", with_root=False,
                          disk=machine.root_ext4, token=token)
    assert_booted(result, token, f"root UUID={EXT4_UUID} (ext4) mounted read-only")
    assert "overlay-agent: rw ignored: the root is always mounted read-only" in result.output


def test_c2_gpt_partition_by_partlabel(machine: Machine, token: str) -> None:
    """root=PARTLABEL= (the GPT partition name, read by the agent) with rootwait=N."""
    result = machine.boot("c2", f"root=PARTLABEL={GPT_ROOT_LABEL} rootwait=20 panic=-1",
                          with_root=False, disk=gpt_disk(machine.root_ext4), token=token)
    assert_booted(result, token, f"root PARTLABEL={GPT_ROOT_LABEL} (ext4) mounted read-only")


def test_d_root_never_appears(machine: Machine) -> None:
    result = machine.boot("d", "root=/dev/doesnotexist rootdelay=3 panic=1", with_root=False)
    assert_fatal(result, "root=/dev/doesnotexist: device did not appear within 3 s")


def test_e_init_missing(machine: Machine) -> None:
    result = machine.boot("e", "init=/nonexistent panic=1", with_root=True)
    assert_fatal(result, "init=/nonexistent: not found in the new root")


def test_f_missing_and_failing_modules_still_boot(machine: Machine, token: str) -> None:
    """A module missing, or refused by the kernel, is one line each: the root needs neither."""
    members = merged_members(split_segments(machine.initrd_with_root.read_bytes(), "initrd"))
    listing = members["etc/overlay-agent/modules.load"].content()
    initrd = machine.initrd_overriding("f", {
        "/etc/overlay-agent/modules.load":
            listing + b"/lib/modules/none/gone.ko\n/etc/overlay-agent/bad.ko\n",
        "/etc/overlay-agent/bad.ko": b"not an ELF module\n"}, with_root=True)
    result = machine.boot("f", "panic=-1", with_root=True, initrd=initrd, token=token)
    assert_booted(result, token, "root /rootfs.sqsh (squashfs) mounted read-only")
    assert ("overlay-agent: kernel module /lib/modules/none/gone.ko: No such file or "
            "directory") in result.output
    assert "overlay-agent: kernel module /etc/overlay-agent/bad.ko: Exec format error" in result.output


def test_g_garbage_root_image(machine: Machine) -> None:
    initrd = machine.initrd_overriding("g", {"/rootfs.sqsh": b"hsqs" + bytes(65532)},
                                       with_root=True)
    result = machine.boot("g", "panic=-1", with_root=True, initrd=initrd)
    assert_fatal(result, re.compile(r"mount root /rootfs.sqsh \(/dev/loop\d+\) as squashfs on "
                                    r"/base: Invalid argument"), panic=-1)
