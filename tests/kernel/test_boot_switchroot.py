"""switch_root pieces and root mounting on real filesystems, in a private mount namespace."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import syscalls
from agent.boot import loop
from agent.boot.cmdline import RootKind, RootSpec, parse_cmdline
from agent.boot.early import mount_api_filesystems
from agent.boot.rootdev import wait_for_device
from agent.boot.rootfs import mount_root
from agent.boot.switchroot import delete_contents, is_ramfs, move_api_mounts
from agent.errors import BootError
from agent.kernels import PrivateApt, derive_mirrors
from agent.tools import run
from agent.values import Undo

pytestmark = pytest.mark.usefixtures("private_mounts")
EXT_UUID = "0b9d4c1e-7a52-4c3e-9f4e-5d8a1c2b3e4f"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    syscalls.mount("tmpfs", str(tmp_path), "tmpfs", 0, "size=16m")
    yield tmp_path
    syscalls.umount2(str(tmp_path), syscalls.MNT_DETACH)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("roots")
    tree = base / "tree"
    (tree / "sbin").mkdir(parents=True)
    (tree / "sbin" / "init").write_text("#!/bin/sh\n")
    (tree / "sbin" / "init").chmod(0o755)
    run(["mksquashfs", str(tree), str(base / "root.sqsh"), "-quiet", "-noappend", "-all-root"])
    run(["mkfs.ext4", "-q", "-F", "-U", EXT_UUID, "-L", "kroot", "-d", str(tree),
         str(base / "root.ext4"), "8M"])
    (base / "garbage.sqsh").write_bytes(b"hsqs" + os.urandom(8192))
    return base


def test_delete_contents_stays_on_its_filesystem(tmpfs: Path) -> None:
    (tmpfs / "a" / "b").mkdir(parents=True)
    (tmpfs / "a" / "b" / "f").write_text("x")
    (tmpfs / "link").symlink_to("/etc")
    (tmpfs / "other").mkdir()
    syscalls.mount("tmpfs", str(tmpfs / "other"), "tmpfs", 0, "size=1m")
    try:
        (tmpfs / "other" / "kept").write_text("keep")
        removed = delete_contents(str(tmpfs), os.lstat(tmpfs).st_dev)
        assert removed == 4   # a, a/b, a/b/f, link; "other" is a mount point
        assert sorted(os.listdir(tmpfs)) == ["other"]
        assert (tmpfs / "other" / "kept").read_text() == "keep"
        assert os.path.exists("/etc/hostname") or os.path.isdir("/etc")  # link target untouched
    finally:
        syscalls.umount2(str(tmpfs / "other"), syscalls.MNT_DETACH)


def test_is_ramfs(tmpfs: Path, images: Path) -> None:
    assert is_ramfs(str(tmpfs))
    (tmpfs / "sq").mkdir()
    with Undo() as undo:
        mount_root(parse_cmdline(""), str(tmpfs / "sq"), undo, image=str(images / "root.sqsh"))
        assert not is_ramfs(str(tmpfs / "sq"))


def test_move_api_mounts_detaches_without_mount_point(tmpfs: Path) -> None:
    (tmpfs / "src").mkdir()
    (tmpfs / "dst").mkdir()
    syscalls.mount("tmpfs", str(tmpfs / "src"), "tmpfs", 0, "size=1m")
    (tmpfs / "src" / "marker").write_text("x")
    assert move_api_mounts(str(tmpfs / "dst"), (str(tmpfs / "src"),)) == [str(tmpfs / "src")]
    assert not (tmpfs / "src" / "marker").exists()


def test_move_api_mounts_moves(tmpfs: Path) -> None:
    src = tmpfs / "src"
    src.mkdir()
    (tmpfs / "new" / str(src).lstrip("/")).mkdir(parents=True)
    syscalls.mount("tmpfs", str(src), "tmpfs", 0, "size=1m")
    (src / "marker").write_text("moved")
    assert move_api_mounts(str(tmpfs / "new"), (str(src),)) == []
    assert not (src / "marker").exists()
    assert (tmpfs / "new" / str(src).lstrip("/") / "marker").read_text() == "moved"
    syscalls.umount2(str(tmpfs / "new" / str(src).lstrip("/")), syscalls.MNT_DETACH)


def test_early_mounts(tmpfs: Path) -> None:
    with Undo() as undo:
        mounted = mount_api_filesystems(undo, prefix=str(tmpfs))
        assert mounted == [f"{tmpfs}/proc", f"{tmpfs}/sys", f"{tmpfs}/dev", f"{tmpfs}/run"]
        assert (tmpfs / "proc" / "cmdline").exists()
        assert (tmpfs / "dev" / "null").exists()
        assert is_ramfs(str(tmpfs / "run"))
    assert not (tmpfs / "proc" / "cmdline").exists()   # undone in reverse


def test_mount_root_image_read_only(tmpfs: Path, images: Path) -> None:
    with Undo() as undo:
        root = mount_root(parse_cmdline("panic=1"), str(tmpfs), undo,
                          image=str(images / "root.sqsh"))
        assert (root.fstype, root.source) == ("squashfs", str(images / "root.sqsh"))
        assert root.device.startswith("/dev/loop")
        assert os.access(tmpfs / "sbin" / "init", os.X_OK)
        with pytest.raises(OSError):
            (tmpfs / "new").write_text("x")
    backing = Path(f"/sys/block/{os.path.basename(root.device)}/loop/backing_file")
    deadline = time.monotonic() + 5  # autoclear runs from a kernel work queue after the umount
    while backing.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not backing.exists() or backing.read_text().strip() != str(images / "root.sqsh")


def test_mount_root_garbage_image(tmpfs: Path, images: Path) -> None:
    with Undo() as undo, pytest.raises(BootError) as info:
        mount_root(parse_cmdline(""), str(tmpfs), undo, image=str(images / "garbage.sqsh"))
    message = str(info.value)
    assert message.startswith(f"mount root {images}/garbage.sqsh (/dev/loop")
    assert message.endswith(f"as squashfs on {tmpfs}: Invalid argument")


def test_mount_root_no_root(tmpfs: Path) -> None:
    with Undo() as undo, pytest.raises(BootError) as info:
        mount_root(parse_cmdline(""), str(tmpfs), undo, image=str(tmpfs / "none.sqsh"))
    assert str(info.value) == (f"no root: give root= on the kernel command line or ship "
                               f"{tmpfs}/none.sqsh")


@pytest.mark.parametrize("root", [f"UUID={EXT_UUID}", "LABEL=kroot", "DEVICE"])
def test_mount_root_block_device(tmpfs: Path, images: Path, root: str) -> None:
    fd = os.open(images / "root.ext4", os.O_RDONLY)
    dev = loop.attach_readonly(fd, str(images / "root.ext4"))
    os.close(fd)
    try:
        params = parse_cmdline(f"root={root.replace('DEVICE', dev.path)} rootdelay=1")
        with Undo() as undo:
            mounted = mount_root(params, str(tmpfs), undo)
            assert (mounted.device, mounted.fstype) == (dev.path, "ext4")
            assert os.access(tmpfs / "sbin" / "init", os.X_OK)
    finally:
        loop.detach(dev)


def test_wait_sees_a_device_that_appears_later(images: Path) -> None:
    """The waiter listens to uevents: a loop device attached 0.3 s later is found by label."""
    attached: list[loop.LoopDevice] = []

    def attach_later() -> None:
        time.sleep(0.3)
        fd = os.open(images / "root.ext4", os.O_RDONLY)
        attached.append(loop.attach_readonly(fd, str(images / "root.ext4")))
        os.close(fd)

    worker = threading.Thread(target=attach_later)
    start = time.monotonic()
    worker.start()
    try:
        found = wait_for_device(RootSpec(RootKind.LABEL, "kroot"), timeout=10)
        worker.join()
        assert found == attached[0].path
        assert 0.25 < time.monotonic() - start < 5
    finally:
        worker.join()
        for dev in attached:
            loop.detach(dev)


def test_mount_root_device_never_appears(tmpfs: Path) -> None:
    params = parse_cmdline("root=/dev/doesnotexist rootdelay=0.3")
    with Undo() as undo, pytest.raises(BootError) as info:
        mount_root(params, str(tmpfs), undo)
    assert str(info.value) == "root=/dev/doesnotexist: device did not appear within 0.3 s"


@pytest.fixture(scope="module")
def debian12_pyroute2() -> Path:
    """Debian 12's python3-pyroute2 (0.7), unpacked under .cache through the kernels' private
    apt lists: the Debian package runs the agent with it, not with the PyPI release."""
    root = Path(__file__).resolve().parents[2] / ".cache"
    unpacked = root / "debs" / "bookworm-pyroute2"
    if not (unpacked / "usr/lib/python3/dist-packages/pyroute2").is_dir():
        apt = PrivateApt(root / "kernels" / "apt" / "bookworm", "bookworm", derive_mirrors())
        debs = root / "debs" / "bookworm"
        debs.mkdir(parents=True, exist_ok=True)
        apt.download(["python3-pyroute2"], debs)
        (deb,) = debs.glob("python3-pyroute2_0.7*.deb")
        run(["dpkg-deb", "-x", str(deb), str(unpacked)])
    return unpacked / "usr/lib/python3/dist-packages"


def test_wait_works_with_debian12_pyroute2(images: Path, debian12_pyroute2: Path) -> None:
    """The same uevent wait, in an interpreter whose pyroute2 is Debian 12's 0.7."""
    root = Path(__file__).resolve().parents[2]
    code = (f"import sys; sys.path[:0] = [{str(debian12_pyroute2)!r}, {str(root)!r}]; "
            "from agent.boot.rootdev import wait_for_device; "
            "from agent.boot.cmdline import parse_root; "
            "found = wait_for_device(parse_root('LABEL=kroot'), 10); "
            "print(found, sys.modules['pyroute2'].__path__[0])")
    child = subprocess.Popen([sys.executable, "-I", "-S", "-c", code], stdout=subprocess.PIPE,
                             text=True)
    time.sleep(0.5)     # the child is listening by then (it binds first, then looks)
    fd = os.open(images / "root.ext4", os.O_RDONLY)
    dev = loop.attach_readonly(fd, str(images / "root.ext4"))
    os.close(fd)
    try:
        out, _ = child.communicate(timeout=30)
        assert out.split() == [dev.path, str(debian12_pyroute2 / "pyroute2")]
    finally:
        loop.detach(dev)
