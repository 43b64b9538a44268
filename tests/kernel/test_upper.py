"""Writable roots on this machine's kernel: a tmpfs upper, a persistent upper on a real
ext4 loop device, and every way a device upper falls back, is repaired, or reports."""
# ruff: noqa: F811 - test_activate's fixtures (env, image_cache) are imported by name

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_activate import SHARE, Env, env, force_api, image_cache, mounts_under  # noqa: F401

from agent import shadows, syscalls
from agent.boot import upper
from agent.boot.activate import ActivationSettings, activate_mounted_root, settings_from_params
from agent.boot.cmdline import scan_cmdline
from agent.cli import main
from agent.errors import BootError
from agent.statusfile import (
    API_FSCONFIG,
    API_MOUNT,
    ROOT_PERSISTENT,
    ROOT_READ_ONLY,
    ROOT_VOLATILE,
    SHADOWS_UNCOUNTED,
    BootStatus,
    read_status,
)
from agent.tools import run

INSTALLER_FSTAB = ("# /etc/fstab: static file system information.\n"
                   "UUID=5e0c1f2a-9b7d-4e36-a1c8-0d2f4b6e8a13 / ext4 errors=remount-ro 0 1\n"
                   "UUID=0a1b-2c3d /boot/efi vfat umask=0077 0 1\n")
FALLBACK = "; a tmpfs upper serves instead"


class Disk:
    """An ext4 image on a real loop device (read-write), detached at the end."""

    def __init__(self, work: Path, label: str, size: str = "32M", reserved: bool = False) -> None:
        self.image = work / f"{label}.img"
        self.label = label
        run(["truncate", "-s", size, self.image])
        run(["mkfs.ext4", "-q", "-F", "-L", label, "-m", "5" if reserved else "0",
             self.image], capture=True)
        self.dev = run(["losetup", "--find", "--show", self.image], capture=True).stdout.decode().strip()

    def mounted(self, mountpoint: Path) -> Path:
        mountpoint.mkdir(exist_ok=True)
        syscalls.mount(self.dev, str(mountpoint), "ext4")
        return mountpoint

    def detach(self) -> None:
        run(["losetup", "-d", self.dev])


@pytest.fixture
def announced(env: Env, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the boot said once in the kernel log (kept off the host's)."""
    lines: list[str] = []
    monkeypatch.setattr(upper, "announce", lambda line, warning=False: lines.append(line))
    return lines


@pytest.fixture
def disks(env: Env) -> Iterator[Callable[..., Disk]]:
    made: list[Disk] = []

    def make(label: str = "", **kwargs: object) -> Disk:
        disk = Disk(env.work, label or f"oa-{secrets.token_hex(4)}", **kwargs)  # type: ignore[arg-type]
        made.append(disk)
        return disk

    try:
        yield make
    finally:
        for point in reversed(mounts_under(str(env.work))):
            syscalls.umount2(point, syscalls.MNT_DETACH)
        for disk in made:
            disk.detach()


def with_fstab(env: Env, text: str = INSTALLER_FSTAB) -> None:
    """The base root gets an installer's fstab (remounted rw for the write)."""
    syscalls.mount(None, str(env.base), None, syscalls.MS_REMOUNT)
    (env.base / "etc/fstab").write_text(text)
    syscalls.mount(None, str(env.base), None, syscalls.MS_REMOUNT | syscalls.MS_RDONLY)


def settings_for(env: Env, cmdline: str) -> ActivationSettings:
    s = env.settings
    return settings_from_params(scan_cmdline(cmdline), list_path=s.list_path,
                                images_dir=s.images_dir, status_path=s.status_path,
                                staging_dir=s.staging_dir)


def reboot(env: Env) -> None:
    """What a shutdown undoes: the overlay and the upper's filesystem."""
    for point in (str(env.target), env.settings.staging_dir + "/upper"):
        if os.path.ismount(point):
            syscalls.umount2(point)


def first_boot_writes(env: Env, disk: Disk, upper: str) -> tuple[ActivationSettings, Path]:
    """Boot with `upper`, write /etc/x, shut down; the device's filesystem, mounted."""
    settings = settings_for(env, f"overlay_agent.upper={upper}")
    assert env.activate(settings) == str(env.target)
    (env.target / "etc/x").write_text("x")
    reboot(env)
    return settings, disk.mounted(env.work / "look")


def status(env: Env) -> BootStatus:
    return read_status(env.settings.status_path)


@pytest.mark.parametrize("api", [API_MOUNT, API_FSCONFIG])
def test_tmpfs_upper_is_writable_and_volatile(env: Env, announced: list[str], disks: Callable[..., Disk],
                                              image_cache: Callable[[int], Path],
                                              monkeypatch: pytest.MonkeyPatch, api: str) -> None:
    force_api(monkeypatch, api)
    with_fstab(env)
    env.add(image_cache, [0, 1])
    settings = settings_for(env, "root=/dev/vda rw overlay_agent.upper=tmpfs:16m")
    assert env.activate(settings) == str(env.target)
    assert env.read(f"{SHARE}/layer") == "1"
    (env.target / "etc/new").write_text("kept until shutdown")
    (env.target / SHARE / "layer").write_text("changed")
    assert not (env.base / "etc/new").exists()                # the base is untouched
    assert (env.base / SHARE / "layer").read_text() == "base"
    syscalls.mount(None, str(env.target), None, syscalls.MS_REMOUNT)   # remount rw works
    got = status(env)
    assert (got.root_mode, got.overlay, got.notes) == (ROOT_VOLATILE, api, ())
    assert got.upper is not None
    assert (got.upper.requested, got.upper.source, got.upper.fallback) == ("tmpfs:16m", "tmpfs", "")
    assert got.upper.size_bytes == 16 << 20
    assert (env.target / "etc/fstab").read_text().splitlines()[-3:] == [
        "# UUID=5e0c1f2a-9b7d-4e36-a1c8-0d2f4b6e8a13 / ext4 errors=remount-ro 0 1",
        "overlay / overlay rw 0 0", "UUID=0a1b-2c3d /boot/efi vfat umask=0077 0 1"]
    assert announced == ["/ is writable, changes kept in RAM (tmpfs) until shutdown"]
    assert env.lines == []
    reboot(env)
    assert env.activate(settings) == str(env.target)
    assert not (env.target / "etc/new").exists()
    assert env.read(f"{SHARE}/layer") == "1"


def test_read_only_root_has_an_ro_fstab_view(env: Env, announced: list[str], disks: Callable[..., Disk],
                                             image_cache: Callable[[int], Path]) -> None:
    """What systemd-remount-fs runs: a remount asking for rw fails on the read-only overlay
    (the installer's line asks for it); the view's `ro` asks for what is there."""
    with_fstab(env)
    env.add(image_cache, [0])
    assert env.activate(settings_for(env, "root=/dev/vda rw")) == str(env.target)
    assert "overlay / overlay ro 0 0" in (env.target / "etc/fstab").read_text().splitlines()
    with pytest.raises(OSError) as exc:
        syscalls.mount(None, str(env.target), None, syscalls.MS_REMOUNT)
    assert exc.value.errno == errno.EROFS
    syscalls.mount(None, str(env.target), None, syscalls.MS_REMOUNT | syscalls.MS_RDONLY)
    got = status(env)
    assert (got.root_mode, got.upper) == (ROOT_READ_ONLY, None)
    assert announced == ["/ is read-only by design (no overlay_agent.upper=)"]


def test_upper_without_extensions_still_makes_root_writable(env: Env,
                                                            disks: Callable[..., Disk]) -> None:
    assert env.activate(settings_for(env, "overlay_agent.upper=tmpfs")) == str(env.target)
    (env.target / "etc/x").write_text("x")
    assert env.read(f"{SHARE}/layer") == "base"
    assert not (env.target / "etc/extensions.yaml").exists()
    assert not (env.target / "etc/fstab").exists()        # the base has none: nothing to view
    assert status(env).root_mode == ROOT_VOLATILE


def test_disable_is_the_bare_root_even_with_an_upper(env: Env, disks: Callable[..., Disk],
                                                     image_cache: Callable[[int], Path]) -> None:
    env.add(image_cache, [0])
    settings = settings_for(env, "overlay_agent.disable overlay_agent.upper=tmpfs")
    assert env.activate(settings) == str(env.base)
    assert not os.path.ismount(env.target)
    assert mounts_under(env.settings.staging_dir) == []
    assert status(env).root_mode == ROOT_READ_ONLY


def test_device_upper_keeps_changes_across_boots_and_upgrades(
        env: Env, announced: list[str], disks: Callable[..., Disk], image_cache: Callable[[int], Path]) -> None:
    disk = disks()
    env.add(image_cache, [0, 1])
    settings = settings_for(env, f"overlay_agent.upper=LABEL={disk.label}")
    assert env.activate(settings) == str(env.target)
    (env.target / "etc/hostname").write_text("kept\n")
    got = status(env)
    assert (got.root_mode, got.notes) == (ROOT_PERSISTENT, ())
    assert got.upper is not None
    assert (got.upper.source, got.upper.dir, got.upper.shadowed_count) == (
        disk.dev, "/", SHADOWS_UNCOUNTED)
    assert 0 < got.upper.used_bytes < got.upper.size_bytes <= 32 << 20
    assert announced[0].startswith(
        f"/ is writable, changes kept on LABEL={disk.label} ({disk.dev}): ")
    reboot(env)
    env.add(image_cache, [0, 1, 2])          # an upgrade: one more extension
    assert env.activate(settings) == str(env.target)
    assert (env.target / "etc/hostname").read_text() == "kept\n"
    assert env.read(f"{SHARE}/layer") == "2"
    reboot(env)
    inside = disk.mounted(env.work / "look")
    assert (inside / "upper/etc/hostname").read_text() == "kept\n"
    assert (inside / "work").is_dir()
    assert oct((inside / "upper").stat().st_mode & 0o7777) == oct(env.base.stat().st_mode & 0o7777)


def test_device_folder_holds_upper_and_work(env: Env, disks: Callable[..., Disk]) -> None:
    disk = disks()
    _, inside = first_boot_writes(env, disk, f"{disk.dev}:/roots/a")
    assert sorted(p.name for p in (inside / "roots/a").iterdir()) == ["upper", "work"]
    assert (inside / "roots/a/upper/etc/x").read_text() == "x"
    got = status(env).upper
    assert got is not None and got.dir == "/roots/a"


def garbage_disk(env: Env, disks: Callable[..., Disk]) -> str:
    disk = disks()
    with open(disk.dev, "r+b") as f:     # wipe the superblock
        f.write(bytes(1 << 20))
    return disk.dev


def full_disk(env: Env, disks: Callable[..., Disk]) -> str:
    disk = disks(size="8M")
    fill = disk.mounted(env.work / "fill")
    fd = os.open(fill / "blob", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(1 << 16))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    syscalls.umount2(str(fill))
    return disk.dev


FALLBACKS: dict[str, tuple[Callable[[Env, Callable[..., Disk]], str], str]] = {
    "missing": (lambda env, disks: "LABEL=oa-not-there",
                "overlay_agent.upper=LABEL=oa-not-there: device did not appear within 0 s"),
    "unmountable": (garbage_disk,
                    "overlay_agent.upper={dev}: {dev}: no known filesystem (an ext4 filesystem "
                    "is needed)"),
    "full": (full_disk, "overlay_agent.upper={dev}: {dev} is full ("),
}


@pytest.mark.parametrize("case", sorted(FALLBACKS))
def test_unusable_device_falls_back_to_tmpfs(env: Env, disks: Callable[..., Disk],
                                             image_cache: Callable[[int], Path],
                                             capsys: pytest.CaptureFixture[str],
                                             case: str) -> None:
    make, expected = FALLBACKS[case]
    env.add(image_cache, [0])
    dev = make(env, disks)
    settings = settings_for(env, f"rootdelay=0 overlay_agent.upper={dev}")
    assert env.activate(settings) == str(env.target)
    (env.target / "etc/x").write_text("x")           # writable all the same
    got = status(env)
    assert got.root_mode == ROOT_VOLATILE and got.upper is not None
    reason = expected.format(dev=dev)
    assert got.upper.fallback.startswith(reason) and got.upper.fallback.endswith(FALLBACK)
    assert (got.upper.source, got.notes, env.lines) == ("tmpfs", (got.upper.fallback,),
                                                        [got.upper.fallback])
    assert main(["get", "extensions", "--status", env.settings.status_path]) == 0
    assert capsys.readouterr().err == f"overlay-agent: {got.upper.fallback}\n"


def test_strict_makes_the_fallback_fatal(env: Env, disks: Callable[..., Disk],
                                         image_cache: Callable[[int], Path]) -> None:
    env.add(image_cache, [0, 1])
    settings = settings_for(env, "rootdelay=0 overlay_agent.strict "
                                 "overlay_agent.upper=LABEL=oa-not-there")
    with pytest.raises(BootError, match=r"^overlay_agent\.upper=LABEL=oa-not-there: device did "
                                        r"not appear within 0 s; a tmpfs upper serves instead "
                                        r"\(overlay_agent\.strict\)$"):
        env.activate(settings)
    assert not os.path.ismount(env.target)
    assert mounts_under(env.settings.staging_dir) == []


def test_stale_work_dir_is_emptied_not_fatal(env: Env, disks: Callable[..., Disk]) -> None:
    """A crash under a `volatile` overlay leaves work/work/incompat/volatile: overlayfs
    refuses the work dir until it is emptied."""
    disk = disks()
    settings, inside = first_boot_writes(env, disk, disk.dev)
    (inside / "work/work/incompat/volatile").mkdir(parents=True)
    syscalls.umount2(str(inside))
    assert env.activate(settings) == str(env.target)
    assert (env.target / "etc/x").read_text() == "x"
    got = status(env)
    assert got.root_mode == ROOT_PERSISTENT and got.upper is not None
    assert got.upper.repaired == (f"{env.settings.staging_dir}/upper/work: emptied after the "
                                  "overlay refused it (Invalid argument)")
    assert (got.notes, env.lines) == ((), [])


def test_work_dir_that_is_a_file_is_replaced(env: Env, disks: Callable[..., Disk]) -> None:
    disk = disks()
    inside = disk.mounted(env.work / "look")
    (inside / "upper").mkdir()
    (inside / "work").write_text("not a dir")
    syscalls.umount2(str(inside))
    assert env.activate(settings_for(env, f"overlay_agent.upper={disk.dev}")) == str(env.target)
    got = status(env).upper
    assert got is not None and got.repaired.endswith("/upper/work: not a directory; replaced")


def test_upper_files_shadowing_extension_files_are_counted_after_boot(
        env: Env, announced: list[str], disks: Callable[..., Disk],
        image_cache: Callable[[int], Path]) -> None:
    """Not at boot: the first reader as root counts them (each layer mounted again from
    its loop device in a namespace of its own) and keeps the count in the status file."""
    disk = disks()
    env.add(image_cache, [0, 1])
    settings = settings_for(env, f"overlay_agent.upper={disk.dev}")
    env.activate(settings)
    (env.target / SHARE / "only-1").write_text("edited")    # copied up: hides layer 1's
    (env.target / SHARE / "only-0").unlink()                # a whiteout hides layer 0's
    (env.target / "etc/mine").write_text("no extension ships it")
    reboot(env)
    announced.clear()
    env.activate(settings)
    assert len(announced) == 1 and "hide" not in announced[0]
    booted = status(env)
    assert booted.upper is not None and booted.upper.shadowed_count == SHADOWS_UNCOUNTED
    mounts_before = Path("/proc/self/mountinfo").read_text()
    counted = shadows.with_shadows(booted, env.settings.status_path)
    assert Path("/proc/self/mountinfo").read_text() == mounts_before   # ended with the child
    assert counted.upper is not None and counted.notes == ()
    expected = (2, (f"/{SHARE}/only-0", f"/{SHARE}/only-1"))
    assert (counted.upper.shadowed_count, counted.upper.shadowed) == expected
    kept = status(env).upper
    assert kept is not None and (kept.shadowed_count, kept.shadowed) == expected
    assert env.read(f"{SHARE}/only-1") == "edited"
    assert shadows.with_shadows(status(env), "/nonexistent/status.json") == status(env)


def test_shadow_count_failure_is_a_note_not_kept(env: Env, disks: Callable[..., Disk],
                                                 image_cache: Callable[[int], Path]) -> None:
    disk = disks()
    env.add(image_cache, [0])
    env.activate(settings_for(env, f"overlay_agent.upper={disk.dev}"))
    booted = status(env)
    gone = booted.replace(extensions=tuple(e.replace(loop="/dev/oa-no-such-loop")
                                           for e in booted.extensions))
    got = shadows.with_shadows(gone, env.settings.status_path)
    assert got.notes == ("shadowed files not counted: /dev/oa-no-such-loop: "
                         "No such file or directory",)
    assert status(env).upper == booted.upper      # not kept: the next reader tries again


def test_hook_mode_makes_an_rw_base_read_only_below_the_upper(
        env: Env, disks: Callable[..., Disk], image_cache: Callable[[int], Path]) -> None:
    """initramfs-tools mounts the root rw when the command line says `rw`."""
    env.add(image_cache, [0])
    syscalls.mount("rwroot", str(env.target), "tmpfs", 0, "mode=0755")
    (env.target / "etc").mkdir()
    settings = settings_for(env, "rw overlay_agent.upper=tmpfs")
    assert activate_mounted_root(str(env.target), settings) == str(env.target)
    base = env.settings.staging_dir + "/base"
    assert os.statvfs(base).f_flag & os.ST_RDONLY
    (env.target / "etc/x").write_text("x")
    assert not Path(base, "etc/x").exists()
    assert env.read(f"{SHARE}/layer") == "0"


def test_overlay_refusing_the_device_falls_back(env: Env, disks: Callable[..., Disk],
                                               image_cache: Callable[[int], Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """When the overlay refuses the device even with an empty work dir, a tmpfs serves
    (and the device's shadowing file is not reported: the root does not show it)."""
    disk = disks()
    env.add(image_cache, [0])
    inside = disk.mounted(env.work / "look")
    (inside / "upper" / SHARE).mkdir(parents=True)
    (inside / "upper" / SHARE / "layer").write_text("mine")
    syscalls.umount2(str(inside))
    real = syscalls.mount
    upper_fs = env.settings.staging_dir + "/upper"

    def refuse(src: str | None, dst: str, fstype: str | None = None, flags: int = 0,
               data: str | None = None) -> None:
        if fstype == "overlay" and data and "upperdir=" in data \
                and syscalls.statfs_type(upper_fs) != syscalls.TMPFS_MAGIC:
            raise OSError(errno.EIO, os.strerror(errno.EIO), dst)
        real(src, dst, fstype, flags, data)

    monkeypatch.setattr(syscalls, "mount", refuse)
    assert env.activate(settings_for(env, f"overlay_agent.upper={disk.dev}")) == str(env.target)
    monkeypatch.setattr(syscalls, "mount", real)
    (env.target / "etc/x").write_text("x")
    assert env.read(f"{SHARE}/layer") == "0"
    got = status(env)
    assert got.root_mode == ROOT_VOLATILE and got.upper is not None
    assert got.upper.fallback == (f"overlay_agent.upper={disk.dev}: overlay over "
                                  f"{env.settings.staging_dir}/upper: Input/output error{FALLBACK}")
    assert (got.upper.shadowed_count, got.upper.repaired) == (0, "")
    assert env.lines == [got.upper.fallback]
