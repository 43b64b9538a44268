"""Mount the API filesystems PID 1 needs before anything else: /proc, /sys, /dev, /run."""

from __future__ import annotations

import os

from agent import syscalls
from agent.boot.layout import DEV, PROC, RUN, SYS
from agent.errors import BootError
from agent.values import Undo

_NOSUID_NODEV_NOEXEC = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC

# (target, fstype, flags, data); devtmpfs gives the device nodes (no udev in the initramfs)
EARLY_MOUNTS: tuple[tuple[str, str, int, str | None], ...] = (
    (PROC, "proc", _NOSUID_NODEV_NOEXEC, None),
    (SYS, "sysfs", _NOSUID_NODEV_NOEXEC, None),
    (DEV, "devtmpfs", syscalls.MS_NOSUID, "mode=0755"),
    (RUN, "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=0755"),
)


def mount_api_filesystems(undo: Undo | None, prefix: str = "") -> list[str]:
    """Mount each early filesystem (below `prefix`, for tests); `undo` unmounts in reverse."""
    mounted: list[str] = []
    for target, fstype, flags, data in EARLY_MOUNTS:
        path = prefix + target
        os.makedirs(path, mode=0o755, exist_ok=True)
        try:
            syscalls.mount(fstype, path, fstype, flags, data)
        except OSError as exc:
            raise BootError(f"mount {fstype} on {path}: {exc.strerror}") from exc
        if undo is not None:
            undo.callback(_lazy_umount, path)
        mounted.append(path)
    return mounted


def _lazy_umount(path: str) -> None:
    try:
        syscalls.umount2(path, syscalls.MNT_DETACH)
    except OSError:
        pass
