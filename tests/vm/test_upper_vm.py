"""Writable roots under QEMU on both stock kernels, with the agent's own initramfs.

The demo root (in the initramfs) carries one extension; a blank ext4 disk (LABEL=oa-upper)
is attached read-write to every boot. Boot 1 writes /etc/oa-probe, boot 2 on the same disk
looks for it: kept with overlay_agent.upper=LABEL=oa-upper, gone with a tmpfs upper (and
the disk not written at all). A device that never appears falls back to tmpfs, printed.
Without the key, `/` is read-only (even with `rw`) and the kernel log says it is by design.
The checks run in the guest (extensions.py's PASS/FAIL lines).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from extensions import SCENARIO_KEY, Check, Verdicts, bake, checks_root, read_verdicts, suite_kernel
from test_activate_vm import HELLO, SUITES

from agent.kernels import Kernel
from agent.tools import run
from devtools.demo import DONE_MARKER
from devtools.images import BOOT_TIMEOUT, initramfs
from devtools.qemu import TOKEN_KEY, BootResult, _run_group, qemu_argv

LABEL = "oa-upper"
EXPECT_KEY = "oa_test.expect"      # what boot 2 must find in /etc/oa-probe

ROOT_RW = "awk '$2 == \"/\" {print $3, $4}' /proc/mounts | grep -Eq '^overlay rw(,|$)'"
EXPECT = f"$(sed -n 's/.*{EXPECT_KEY}=\\([^ ]*\\).*/\\1/p' /proc/cmdline)"
EXTENSION = Check("extension", '[ "$(cat /usr/local/share/oa-hello/greeting)" = '
                               '"hello from hello-tool" ]')
WRITE = Check("write", 'echo "$token" > /etc/oa-probe && sync && '
                       '[ "$(cat /etc/oa-probe)" = "$token" ]')


def mode_checks(mode: str, fs: str) -> list[Check]:
    """The root is a writable overlay in `mode`, its upper's filesystem `fs` at /run/oa/upper;
    the status file and `get extensions -o json` say so."""
    return [Check("root-rw", ROOT_RW),
            Check("upper-fs", f"grep -q ' /run/oa/upper {fs} ' /proc/mounts"),
            Check("status", f"grep -q '\"root_mode\":\"{mode}\"' "
                            "/run/overlay-agent/status.json"),
            Check("get-json", f"grep -q '\"mode\": \"{mode}\"' /tmp/json")]


SCENARIOS: Mapping[str, Sequence[Check]] = {
    "device-write": [*mode_checks("persistent", "ext4"), EXTENSION, WRITE,
                     Check("journal", "dmesg | grep -q 'overlay-agent: / is writable, changes "
                                      f"kept on LABEL={LABEL} (/dev/vda): '")],
    "device-again": [*mode_checks("persistent", "ext4"), EXTENSION,
                     Check("kept", f'[ "$(cat /etc/oa-probe)" = "{EXPECT}" ]')],
    "tmpfs-write": [*mode_checks("volatile", "tmpfs"), EXTENSION, WRITE,
                    Check("journal", "dmesg | grep -q 'overlay-agent: / is writable, changes "
                                     "kept in RAM (tmpfs) until shutdown'")],
    "tmpfs-again": [*mode_checks("volatile", "tmpfs"), EXTENSION,
                    Check("gone", "[ ! -e /etc/oa-probe ]")],
    "read-only": [Check("root-ro", ROOT_RW.replace("overlay rw", "overlay ro")), EXTENSION,
                  Check("no-write", "! touch /etc/oa-probe 2>/dev/null"),
                  Check("status", "grep -q '\"root_mode\":\"read-only\"' "
                                  "/run/overlay-agent/status.json"),
                  Check("get-json", "! grep -q RootStatuses /tmp/json"),
                  Check("journal", "dmesg | grep -q 'overlay-agent: / is read-only by design'")],
    "missing": [*mode_checks("volatile", "tmpfs"), EXTENSION, WRITE,
                Check("stderr", "grep -q 'LABEL=oa-nowhere: device did not appear within 2 s' "
                                "/tmp/table")],
}
FELL_BACK = ("overlay-agent: overlay_agent.upper=LABEL=oa-nowhere: device did not appear "
             "within 2 s; a tmpfs upper serves instead")


@dataclass(frozen=True)
class Setup:
    kernel: Kernel
    initrd: Path
    logs: Path


@pytest.fixture(scope="session", params=SUITES)
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    kernel = suite_kernel(request.param)
    upper_root = checks_root("upper", SCENARIOS)
    work = tmp_path_factory.mktemp(f"upper-{kernel.suite}")
    initrd = bake(kernel, initramfs(kernel, upper_root), upper_root, [HELLO], "upper", work)
    return Setup(kernel, initrd, work)


def blank_disk(folder: Path) -> Path:
    disk = folder / "upper.img"
    run(["truncate", "-s", "64M", disk])
    run(["mkfs.ext4", "-q", "-F", "-L", LABEL, disk], capture=True)
    return disk


def boot(setup: Setup, scenario: str, disk: Path, extra: str) -> tuple[BootResult, Verdicts]:
    """One boot with `disk` attached read-write as /dev/vda (qemu.boot attaches read-only)."""
    token = secrets.token_hex(8)
    append = (f"panic=-1 loglevel=3 {TOKEN_KEY}={token} {SCENARIO_KEY}={scenario} {extra}")
    log = setup.logs / f"{scenario}.log"
    log.write_bytes(b"")
    argv = qemu_argv(setup.kernel.vmlinuz, setup.initrd, append, None, log)
    argv += ["-drive", f"file={disk},format=raw,if=virtio"]
    code, seconds = _run_group(argv, BOOT_TIMEOUT, log.with_name(log.name + ".qemu"))
    output = log.read_bytes().decode(errors="replace").replace("\r\n", "\n")
    result = BootResult(output, code, code is None, seconds)
    assert not result.timed_out, output[-3000:]
    return result, read_verdicts(output, token)


def assert_passed(result: BootResult, verdicts: Verdicts, scenario: str) -> str:
    """Every check of `scenario` passed; return the boot's token."""
    tail = result.output[-4000:]
    assert verdicts.scenario == scenario, tail
    assert dict(verdicts.failed) == {}, tail
    assert sorted(verdicts.passed) == sorted(c.name for c in SCENARIOS[scenario]), tail
    assert DONE_MARKER in result.output and "Traceback" not in result.output, tail
    token = result.output.split(f"{DONE_MARKER} ", 1)[1].split()[0]
    return token


def test_device_upper_keeps_a_write_across_a_reboot(setup: Setup, tmp_path: Path) -> None:
    disk = blank_disk(tmp_path)
    upper = f"overlay_agent.upper=LABEL={LABEL}"
    token = assert_passed(*boot(setup, "device-write", disk, upper), "device-write")
    result, verdicts = boot(setup, "device-again", disk, f"{upper} {EXPECT_KEY}={token}")
    assert_passed(result, verdicts, "device-again")
    assert "overlay-agent: overlay_agent.upper" not in result.output   # no fallback


def test_tmpfs_upper_forgets_a_write_and_leaves_the_disk(setup: Setup, tmp_path: Path) -> None:
    disk = blank_disk(tmp_path)
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    assert_passed(*boot(setup, "tmpfs-write", disk, "overlay_agent.upper=tmpfs:64m"),
                  "tmpfs-write")
    assert_passed(*boot(setup, "tmpfs-again", disk, "overlay_agent.upper=tmpfs"),
                  "tmpfs-again")
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before


def test_default_root_is_read_only_and_says_so(setup: Setup, tmp_path: Path) -> None:
    disk = blank_disk(tmp_path)
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    assert_passed(*boot(setup, "read-only", disk, "rw"), "read-only")
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before


def test_missing_device_falls_back_to_tmpfs(setup: Setup, tmp_path: Path) -> None:
    result, verdicts = boot(setup, "missing", blank_disk(tmp_path),
                            "rootdelay=2 overlay_agent.upper=LABEL=oa-nowhere")
    assert_passed(result, verdicts, "missing")
    assert FELL_BACK in result.output.splitlines(), result.output[-3000:]
