"""Cross-check the boot status against the running system: a layer the status calls
active whose overlay or loop device has gone since boot, or whose dm-verity device has seen
a corrupted block, is reported, not trusted.

Mounts come from psutil; loop devices from sysfs (psutil has no view of them). Used by
`get extensions` and the metrics in the booted system, never on the boot path.
"""

from __future__ import annotations

import os

from agent.statusfile import ACTIVE, API_NONE, CHECK_VERITY, BootStatus

SYS_BLOCK = "/sys/block"
GONE = "gone"   # the phase shown for such a layer
CORRUPTED = "corrupted"       # an active verity layer whose device saw a bad block
CORRUPTED_REASON = "dm-verity: a block failed its hash check (see the kernel log)"


def overlay_mounted(mountpoint: str) -> bool | None:
    """Whether an overlay is mounted at `mountpoint`; None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    return any(p.mountpoint == mountpoint and p.fstype == "overlay"
               for p in psutil.disk_partitions(all=True))


def loop_attached(device: str, sys_block: str = SYS_BLOCK) -> bool:
    """Whether loop `device` is still attached to a file (its name is not compared: a store
    image is content-named, and the initramfs copy shows ` (deleted)` after switch_root)."""
    name = os.path.basename(device)
    try:
        with open(os.path.join(sys_block, name, "loop", "backing_file"), "rb") as f:
            return bool(f.read().strip())
    except OSError:
        return False


def find_gone(status: BootStatus, root: str = "/", sys_block: str = SYS_BLOCK) -> dict[int, str]:
    """Index -> why, for every layer recorded active that the running system no longer holds."""
    active = [e for e in status.extensions if e.phase == ACTIVE]
    if active and status.overlay != API_NONE and overlay_mounted(root) is False:
        return {e.index: f"no overlay mounted at {root} any more" for e in active}
    return {e.index: f"loop device {e.loop} is no longer attached" for e in active
            if e.loop and not loop_attached(e.loop, sys_block)}


def mark_corrupted(status: BootStatus) -> BootStatus:
    """Active verity layers whose device-mapper status now says corrupted."""
    from agent.boot.verity import STATE_CORRUPTED, device_state

    exts = tuple(e.replace(phase=CORRUPTED, reason=CORRUPTED_REASON)
                 if e.phase == ACTIVE and e.check == CHECK_VERITY and e.device
                 and device_state(e.device) == STATE_CORRUPTED else e
                 for e in status.extensions)
    return status.replace(extensions=exts)


def with_live_phases(status: BootStatus, root: str = "/",
                     sys_block: str = SYS_BLOCK) -> BootStatus:
    """`status` with every layer that has gone shown in phase `gone` and every verity layer
    that saw corruption in phase `corrupted`, each with the reason."""
    status = mark_corrupted(status)
    gone = find_gone(status, root, sys_block)
    if not gone:
        return status
    return status.replace(extensions=tuple(
        e.replace(phase=GONE, reason=gone[e.index]) if e.index in gone else e
        for e in status.extensions))
