"""Root-device wait: which kernel uevents announce the device root= names."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.boot.cmdline import parse_root
from agent.boot.rootdev import match_uevent

ADD = {"ACTION": "add", "SUBSYSTEM": "block"}


@pytest.mark.parametrize(("root", "event", "found"), [
    ("/dev/vda2", {**ADD, "DEVNAME": "vda2"}, "/dev/vda2"),
    ("/dev/vda2", {**ADD, "DEVNAME": "vda1"}, None),
    ("/dev/vda2", {"ACTION": "remove", "SUBSYSTEM": "block", "DEVNAME": "vda2"}, None),
    ("/dev/vda2", {"ACTION": "add", "SUBSYSTEM": "net", "DEVNAME": "vda2"}, None),
    ("/dev/vda2", {**ADD}, None),
    ("PARTLABEL=root a", {**ADD, "DEVNAME": "vda3", "PARTN": "3", "PARTNAME": "root a"},
     "/dev/vda3"),
    ("PARTLABEL=root", {**ADD, "DEVNAME": "vda3", "PARTN": "3", "PARTNAME": "rootfs"}, None),
    ("PARTLABEL=root", {**ADD, "DEVNAME": "../../etc", "PARTNAME": "root"}, None),
    ("LABEL=x", {**ADD, "DEVNAME": "nothing-here"}, None),      # no superblock to read
])
def test_match_uevent(root: str, event: dict[str, str], found: str | None,
                      tmp_path: Path) -> None:
    assert match_uevent(parse_root(root), event, str(tmp_path), "/dev") == found
