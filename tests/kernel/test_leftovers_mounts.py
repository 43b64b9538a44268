"""The end-of-run check sees a mount and a loop device left behind (real ones)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent import syscalls
from devtools.leftovers import find_loops, find_mounts, left_behind, snapshot


def test_a_mount_and_a_loop_device_left_are_reported(private_mounts: None,
                                                     tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    target = tmp_path / "mnt"
    target.mkdir()
    before = snapshot()
    dev = subprocess.run(["losetup", "--find", "--show", "--read-only", str(image)],
                         check=True, capture_output=True, text=True).stdout.strip()
    syscalls.mount("tmpfs", str(target), "tmpfs", 0, "size=1m")
    try:
        found = left_behind(before, snapshot())
        assert f"loop device: {dev} on {image}" in found
        assert f"mount: {target} (tmpfs from tmpfs)" in found
    finally:
        syscalls.umount2(str(target))
        subprocess.run(["losetup", "--detach", dev], check=True)
    assert f"{dev} on {image}" not in find_loops()
    assert not [m for m in find_mounts() if m.startswith(f"{target} ")]
