"""The initramfs-tools local-bottom script and dracut's pre-pivot hook, run by busybox sh in
a chroot that holds no grep (nor any other tool): they decide from the exit status of
`overlay-agent boot` alone. /usr/bin/overlay-agent there only reports its arguments and
exits with the status under test (the fault injected); the distribution's `panic`/`die`
print a marker."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL_BOTTOM = ROOT / "systemd/initramfs-tools/scripts/local-bottom/overlay-agent"
PRE_PIVOT = ROOT / "systemd/dracut/90overlay-agent/overlay-agent-pre-pivot.sh"
BUSYBOX = Path("/bin/busybox")

AGENT = """#!/bin/sh
echo "AGENT $*"
read -r code < /status
exit "$code"
"""
# initramfs-tools' /scripts/functions and dracut's dracut-lib.sh, reduced to what is called
FUNCTIONS = """panic() { echo "PANIC $*"; exit 1; }
log_warning_msg() { echo "WARN $*"; }
die() { echo "DIE $*"; exit 1; }
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot)")
    t = tmp_path / "initrd"
    for d in ("bin", "usr/bin", "scripts", "lib"):
        (t / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, t / "bin/busybox")
    (t / "bin/sh").symlink_to("busybox")
    (t / "usr/bin/overlay-agent").write_text(AGENT)
    (t / "usr/bin/overlay-agent").chmod(0o755)
    (t / "scripts/functions").write_text(FUNCTIONS)
    (t / "lib/dracut-lib.sh").write_text(FUNCTIONS)
    (t / "extensions.yaml").write_text("schema: 1\n")
    shutil.copy2(LOCAL_BOTTOM, t / "local-bottom")
    shutil.copy2(PRE_PIVOT, t / "pre-pivot.sh")
    return t


def run_in(tree: Path, script: str, status: int) -> subprocess.CompletedProcess[str]:
    (tree / "status").write_text(str(status))
    return subprocess.run(["/usr/sbin/chroot", str(tree), "/bin/sh", "-c", script], capture_output=True,
                          text=True, timeout=30, env={"PATH": "/bin:/usr/bin",
                                                      "rootmnt": "/root", "NEWROOT": "/sysroot"})


def test_the_chroot_has_no_grep(tree: Path) -> None:
    proc = run_in(tree, "grep -q x /status", 0)
    assert proc.returncode == 127


@pytest.mark.parametrize("status,panics", [(0, False), (1, True), (2, True)])
def test_local_bottom_follows_the_exit_status(tree: Path, status: int, panics: bool) -> None:
    proc = run_in(tree, "/bin/sh /local-bottom", status)
    assert proc.stdout.splitlines()[0] == "AGENT boot --root /root"
    assert ("PANIC overlay-agent: extension activation failed (overlay_agent.strict)"
            in proc.stdout) == panics
    assert proc.returncode == (1 if panics else 0)
    assert proc.stderr == ""


def test_local_bottom_without_baked_extensions_does_nothing(tree: Path) -> None:
    (tree / "extensions.yaml").unlink()
    proc = run_in(tree, "/bin/sh /local-bottom", 1)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_local_bottom_prereqs(tree: Path) -> None:
    proc = run_in(tree, "/bin/sh /local-bottom prereqs", 1)
    assert (proc.returncode, proc.stdout.strip()) == (0, "")


@pytest.mark.parametrize("status,dies", [(0, False), (1, True)])
def test_dracut_pre_pivot_follows_the_exit_status(tree: Path, status: int, dies: bool) -> None:
    # dracut sources its hooks after dracut-lib.sh
    proc = run_in(tree, ". /lib/dracut-lib.sh; . /pre-pivot.sh; echo AFTER", status)
    assert proc.stdout.splitlines()[0] == "AGENT boot --root /sysroot"
    assert ("DIE overlay-agent: extension activation failed (overlay_agent.strict)"
            in proc.stdout) == dies
    assert ("AFTER" in proc.stdout) != dies
