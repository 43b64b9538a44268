"""Cross-check the boot status against the running system: a layer the status calls
active whose overlay, staging mount or loop device has gone since boot, or whose dm-verity
device has seen a corrupted block, is reported, not trusted. The one home of "is this
layer live": `get extensions` shows it as a phase, the metrics as layer_mounted.

Mounts come from psutil; loop devices from sysfs (psutil has no view of them). Never on
the boot path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from agent.statusfile import ACTIVE, API_NONE, CHECK_VERITY, BootStatus

SYS_BLOCK = "/sys/block"
GONE = "gone"   # the phase shown for such a layer
CORRUPTED = "corrupted"       # an active verity layer whose device saw a bad block
CORRUPTED_REASON = "dm-verity: a block failed its hash check (see the kernel log)"


def mount_table() -> list[object] | None:
    """psutil.disk_partitions(all=True); None without psutil (the initramfs has none)."""
    try:
        import psutil
    except ImportError:
        return None
    return list(psutil.disk_partitions(all=True))


def overlay_lowers(partitions: Iterable[object], mountpoint: str) -> set[str] | None:
    """Every path the overlay mounted at `mountpoint` lists in its options (lowerdir=a:b,
    lowerdir+=c); None when no overlay is mounted there."""
    found: set[str] | None = None
    for part in partitions:
        if getattr(part, "mountpoint", None) != mountpoint or \
                getattr(part, "fstype", None) != "overlay":
            continue
        found = set() if found is None else found
        for opt in str(getattr(part, "opts", "")).split(","):
            key, _, value = opt.partition("=")
            if key in ("lowerdir", "lowerdir+"):
                # a ":" inside a path is escaped as "\:" by overlayfs
                found.update(p.replace("\\:", ":") for p in re.split(r"(?<!\\):", value) if p)
    return found


def loop_attached(device: str, sys_block: str = SYS_BLOCK) -> bool:
    """Whether loop `device` is still attached to a file (its name is not compared: a store
    image is content-named, and the initramfs copy shows ` (deleted)` after switch_root)."""
    name = os.path.basename(device)
    try:
        with open(os.path.join(sys_block, name, "loop", "backing_file"), "rb") as f:
            return bool(f.read().strip())
    except OSError:
        return False


def find_gone(status: BootStatus, root: str = "/", sys_block: str = SYS_BLOCK,
              staging: str = "", partitions: Iterable[object] | None = None) -> dict[int, str]:
    """Index -> why, for every layer recorded active that the running system no longer
    holds. With `staging` (the per-layer mount folder of the boot), a layer whose mount
    STAGING/INDEX is not among the overlay's lower layers is gone too."""
    active = [e for e in status.extensions if e.phase == ACTIVE]
    table = list(partitions) if partitions is not None else mount_table()
    lowers = None
    # the status may say the bare root (overlay none); given the staging folder, the
    # running system is asked all the same
    if active and table is not None and (staging or status.overlay != API_NONE):
        lowers = overlay_lowers(table, root)
        if lowers is None:
            return {e.index: f"no overlay mounted at {root} any more" for e in active}
    gone = {}
    for e in active:
        mount = f"{staging.rstrip('/')}/{e.index}"
        if staging and lowers is not None and mount not in lowers:
            gone[e.index] = f"{mount} is not a layer of the overlay at {root} any more"
        elif e.loop and not loop_attached(e.loop, sys_block):
            gone[e.index] = f"loop device {e.loop} is no longer attached"
    return gone


def mark_corrupted(status: BootStatus) -> BootStatus:
    """Active verity layers whose device-mapper status now says corrupted."""
    from agent.boot.verity import STATE_CORRUPTED, device_state

    exts = tuple(e.replace(phase=CORRUPTED, reason=CORRUPTED_REASON)
                 if e.phase == ACTIVE and e.check == CHECK_VERITY and e.device
                 and device_state(e.device) == STATE_CORRUPTED else e
                 for e in status.extensions)
    return status.replace(extensions=exts)


def with_live_phases(status: BootStatus, root: str = "/", sys_block: str = SYS_BLOCK,
                     staging: str = "",
                     partitions: Iterable[object] | None = None) -> BootStatus:
    """`status` with every layer that has gone shown in phase `gone` and every verity layer
    that saw corruption in phase `corrupted`, each with the reason: after it, a layer is
    live exactly when its phase is active."""
    status = mark_corrupted(status)
    gone = find_gone(status, root, sys_block, staging, partitions)
    if not gone:
        return status
    return status.replace(extensions=tuple(
        e.replace(phase=GONE, reason=gone[e.index]) if e.index in gone else e
        for e in status.extensions))
