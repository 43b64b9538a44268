"""Paths PID 1 relies on inside the initramfs; the initramfs builder imports INITRAMFS_DIRS."""

from __future__ import annotations

PROC = "/proc"
SYS = "/sys"
DEV = "/dev"
RUN = "/run"
BASE_ROOT = "/base"          # the immutable root, mounted read-only
SYSROOT = "/sysroot"         # the overlay of extensions on BASE_ROOT, when any is active
ROOT_IMAGE = "/rootfs.sqsh"  # optional immutable root shipped inside the initramfs
MODULES_LOAD = "/etc/overlay-agent/modules.load"
CMDLINE = "/proc/cmdline"
UPTIME = "/proc/uptime"
CONSOLE = "/dev/console"
KMSG = "/dev/kmsg"
DEFAULT_INIT = "/sbin/init"

# Mount points the initramfs must ship (empty directories).
INITRAMFS_DIRS: tuple[str, ...] = (PROC, SYS, DEV, RUN, "/tmp", BASE_ROOT, SYSROOT)

# API filesystems moved into the new root at switch_root, in this order.
API_MOUNTS: tuple[str, ...] = (DEV, PROC, SYS, RUN)
