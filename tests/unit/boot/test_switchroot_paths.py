"""switch_root checks that run before anything destructive: init lookup inside the new root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.boot.switchroot import check_init, resolve_in_root
from agent.errors import BootError


@pytest.fixture
def newroot(tmp_path: Path) -> Path:
    for d in ("sbin", "usr/lib/systemd", "bin", "etc"):
        (tmp_path / d).mkdir(parents=True)
    systemd = tmp_path / "usr/lib/systemd/systemd"
    systemd.write_text("#!/bin/sh\n")
    systemd.chmod(0o755)
    (tmp_path / "sbin/init").symlink_to("/usr/lib/systemd/systemd")      # absolute: in root
    (tmp_path / "bin/rel").symlink_to("../usr/lib/systemd/systemd")
    (tmp_path / "bin/escape").symlink_to("../../../../../usr/lib/systemd/systemd")
    (tmp_path / "bin/loop").symlink_to("loop")
    (tmp_path / "bin/dangling").symlink_to("/nowhere")
    (tmp_path / "etc/plain").write_text("x")
    (tmp_path / "etc/plain").chmod(0o644)
    return tmp_path


@pytest.mark.parametrize(("path", "expected"), [
    ("/sbin/init", "usr/lib/systemd/systemd"),
    ("/bin/rel", "usr/lib/systemd/systemd"),
    ("/bin/escape", "usr/lib/systemd/systemd"),   # ".." stops at the new root, as chroot does
    ("/./sbin/../sbin/init", "usr/lib/systemd/systemd"),
    ("/bin/loop", None),
    ("/bin/dangling", None),
    ("/nonexistent", None),
])
def test_resolve_in_root(newroot: Path, path: str, expected: str | None) -> None:
    found = resolve_in_root(str(newroot), path)
    assert found == (None if expected is None else os.path.join(str(newroot), expected))


@pytest.mark.parametrize(("init", "message"), [
    ("/nonexistent", "init=/nonexistent: not found in the new root"),
    ("/bin/dangling", "init=/bin/dangling: not found in the new root"),
    ("/etc", "init=/etc: not a regular file"),
    ("/etc/plain", "init=/etc/plain: not executable"),
])
def test_check_init_rejects(newroot: Path, init: str, message: str) -> None:
    with pytest.raises(BootError) as info:
        check_init(str(newroot), init)
    assert str(info.value) == message


def test_check_init_follows_links(newroot: Path) -> None:
    assert check_init(str(newroot), "/sbin/init") == str(newroot / "usr/lib/systemd/systemd")
