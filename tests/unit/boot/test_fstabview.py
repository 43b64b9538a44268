"""The fstab view: the base root's /etc/fstab with its `/` line saying what is mounted."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.boot.fstabview import root_view, write_view

DEBIAN = """\
# /etc/fstab: static file system information.
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
UUID=5e0c1f2a-9b7d-4e36-a1c8-0d2f4b6e8a13 /               ext4    errors=remount-ro 0       1
UUID=0a1b-2c3d  /boot/efi       vfat    umask=0077      0       1
/swapfile none swap sw 0 0
"""


@pytest.mark.parametrize(("writable", "mode"), [(False, "ro"), (True, "rw")])
def test_the_root_line_is_replaced_and_kept_as_a_comment(writable: bool, mode: str) -> None:
    lines = DEBIAN.splitlines()
    assert root_view(DEBIAN, writable) == "\n".join([
        *lines[:2],
        f"# overlay-agent: / is an overlay of system extensions, {mode} by design; the base "
        "root's line was:",
        f"# {lines[2]}",
        f"overlay / overlay {mode} 0 0",
        *lines[3:]]) + "\n"


@pytest.mark.parametrize("text", [
    "", "# / ext4\n", "UUID=1 /home ext4 defaults 0 2\n", "/dev/sda1\n",
    "  # UUID=1 / ext4 defaults 0 1\n",
])
def test_no_root_line_no_view(text: str) -> None:
    assert root_view(text, False) is None


def test_write_view_reads_the_base_and_skips_links(tmp_path: Path) -> None:
    base, layer = tmp_path / "base", tmp_path / "layer"
    (base / "etc").mkdir(parents=True)
    (layer / "etc").mkdir(parents=True)
    assert not write_view(str(base), str(layer), False)           # no fstab: nothing to view
    (base / "etc/fstab").symlink_to("/etc/fstab")                 # would leave the base root
    assert not write_view(str(base), str(layer), False)
    (base / "etc/fstab").unlink()
    (base / "etc/fstab").write_bytes(DEBIAN.encode() + b"# caf\xe9\n")   # not UTF-8: kept
    assert write_view(str(base), str(layer), True)
    view = (layer / "etc/fstab").read_bytes()
    assert view.endswith(b"# caf\xe9\n") and b"overlay / overlay rw 0 0\n" in view
    assert (layer / "etc/fstab").stat().st_mode & 0o777 == 0o644
