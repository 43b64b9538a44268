"""One overlayfs from a stack of lower directories (no mount process): read-only, or
writable over an upper and work directory.

mount(2) copies at most one page of option data, so a long `lowerdir=` goes through
fsopen/fsconfig instead, one `lowerdir+` value per layer (Linux 6.8+).
"""

from __future__ import annotations

import errno
import os

from agent.listfile import KERNEL_MAX_LOWER
from agent.statusfile import API_FSCONFIG, API_MOUNT

MOUNT_DATA_LIMIT = os.sysconf("SC_PAGE_SIZE")  # mount(2) option data, NUL included


def escape_lowerdir(path: str) -> str:
    """overlayfs splits options at ',' and layers at ':'; a backslash escapes both."""
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def lowerdir_option(lowers: list[str], upper: tuple[str, str] | None = None) -> str:
    """The mount(2) option string; `upper` = (upperdir, workdir) makes it writable."""
    option = "lowerdir=" + ":".join(escape_lowerdir(p) for p in lowers)
    if upper is not None:
        option += ",upperdir={},workdir={}".format(*(escape_lowerdir(p) for p in upper))
    return option


def choose_api(lowers: list[str], upper: tuple[str, str] | None = None) -> str:
    """API_MOUNT when the option string fits mount(2)'s page, else API_FSCONFIG."""
    fits = len(os.fsencode(lowerdir_option(lowers, upper))) + 1 <= MOUNT_DATA_LIMIT
    return API_MOUNT if fits else API_FSCONFIG


def mount_overlay(lowers: list[str], target: str, upper: tuple[str, str] | None = None) -> str:
    """Mount `lowers` (topmost first, as overlayfs reads them) nodev at `target`: read-only,
    or writable over `upper` = (upperdir, workdir); return the API used
    (statusfile.API_MOUNT or API_FSCONFIG).

    nodev: a device node an extension ships must not open through the new root (the
    squashfs staging mounts are nodev, but opening goes by the overlay's own mount). The
    running system's /dev is the devtmpfs moved in from the initramfs, a mount of its own,
    so nodev on / takes nothing from it (systemd-sysext mounts its overlay nodev too)."""
    from agent import syscalls  # ctypes: loaded only once something is mounted

    if len(lowers) > KERNEL_MAX_LOWER:
        raise OSError(errno.EINVAL, f"{len(lowers)} layers exceed the kernel's "
                      f"{KERNEL_MAX_LOWER}", target)
    api = choose_api(lowers, upper)
    if api == API_MOUNT:
        flags = syscalls.MS_NODEV | (syscalls.MS_RDONLY if upper is None else 0)
        syscalls.mount("overlay", target, "overlay", flags, lowerdir_option(lowers, upper))
    else:
        mount_overlay_fsconfig(lowers, target, upper)
    return api


def mount_overlay_fsconfig(lowers: list[str], target: str,
                           upper: tuple[str, str] | None = None) -> None:
    from agent import syscalls

    fs_fd = syscalls.fsopen("overlay")
    try:
        for i, path in enumerate(lowers):
            try:
                syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_SET_STRING, "lowerdir+", path)
            except OSError as exc:
                if i == 0 and exc.errno == errno.EINVAL:
                    raise OSError(errno.EINVAL, "this kernel has no overlayfs lowerdir+ "
                                  "(Linux 6.8+) and the layer paths exceed one page",
                                  target) from None
                raise
        syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_SET_STRING, "source", "overlay")
        if upper is None:
            syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_SET_FLAG, "ro")
        else:
            syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_SET_STRING, "upperdir", upper[0])
            syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_SET_STRING, "workdir", upper[1])
        syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_CMD_CREATE)
        mnt_fd = syscalls.fsmount(fs_fd, syscalls.FSMOUNT_CLOEXEC,
                                  syscalls.MOUNT_ATTR_NODEV
                                  | (syscalls.MOUNT_ATTR_RDONLY if upper is None else 0))
        try:
            syscalls.move_mount(mnt_fd, target)
        finally:
            os.close(mnt_fd)
    finally:
        os.close(fs_fd)
