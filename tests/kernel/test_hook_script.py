"""The initramfs-tools local-bottom script decides from `overlay-agent boot`'s exit status
alone, under a busybox shell with no grep (a chroot holding sh and nothing else)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "systemd" / "initramfs-tools" / "scripts" / "local-bottom" / "overlay-agent"
FUNCTIONS = 'panic() { echo "PANIC: $*"; exit 9; }\n'


def make_root(tmp: Path, agent_exit: int, listed: bool, cmdline: str = "") -> Path:
    root = tmp / "root"
    (root / "bin").mkdir(parents=True)
    (root / "scripts").mkdir()
    busybox = shutil.which("busybox")
    assert busybox is not None
    shutil.copy(busybox, root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")   # sh only: no grep, no other applet
    (root / "scripts" / "functions").write_text(FUNCTIONS)
    (root / "usr" / "bin").mkdir(parents=True)
    agent = root / "usr" / "bin" / "overlay-agent"
    agent.write_text(f'#!/bin/sh\necho "agent $*"\nexit {agent_exit}\n')
    agent.chmod(0o755)
    shutil.copy(SCRIPT, root / "hook")
    if listed:
        (root / "extensions.yaml").write_text("{}")
    if cmdline:
        (root / "proc").mkdir()
        (root / "proc" / "cmdline").write_text(cmdline + "\n")
    return root


@pytest.mark.parametrize(("agent_exit", "listed", "cmdline", "code", "out"), [
    (0, True, "", 0, "agent boot --root /root\n"),
    (1, True, "", 9, "agent boot --root /root\nPANIC: overlay-agent: extension activation "
                     "failed (overlay_agent.strict)\n"),
    (1, False, "", 0, ""),          # nothing baked: the agent is not even started
    (1, False, "ro quiet", 0, ""),
    (0, False, "root=/dev/vda overlay_agent.upper=tmpfs quiet", 0,   # a writable root asked for
     "agent boot --root /root\n"),
])
def test_script_follows_the_exit_status_alone(private_mounts: None, tmp_path: Path,
                                              agent_exit: int, listed: bool, cmdline: str,
                                              code: int, out: str) -> None:
    root = make_root(tmp_path, agent_exit, listed, cmdline)
    assert not (root / "bin" / "grep").exists()
    chroot = shutil.which("chroot", path="/usr/sbin:/sbin:/usr/bin:/bin")
    assert chroot is not None
    result = subprocess.run([chroot, str(root), "/bin/sh", "/hook"], capture_output=True,
                            text=True, env={"PATH": "/bin", "rootmnt": "/root"}, timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (code, out, "")
