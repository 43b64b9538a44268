"""dm-verity layers at boot: loop device -> dm-verity device -> squashfs mount.

When the kernel has dm-verity, a layer whose list entry carries a hash tree is not hashed at
activation: the kernel checks each block against the tree when it is read, and the root
hash from the list vouches for the tree. A bad root hash or a corrupted superblock fails the
squashfs mount (the layer is skipped and recorded); a corrupted block later gives EIO to the
reader and a kernel log line, and the device's status turns 'C' (`get extensions` shows the
layer as corrupted). With overlay_agent.strict the table asks for panic_on_corruption:
corruption is fatal, through the kernel's panic, which follows panic= as PID 1's fatal path
does (restart_on_corruption would reboot without a trace on the console and may loop).

The device-mapper work is the ioctls of agent.syscalls: no dmsetup or veritysetup, and no
udev, so the device is used as /dev/dm-N (devtmpfs makes it) for the minor DM_DEV_CREATE
returns. Without dm-verity the layer falls back to the full sha256 check.
"""

from __future__ import annotations

import os
import stat

from agent import listfile, statusfile
from agent.boot.layout import MODULES_LOAD
from agent.boot.verify import LayerFailed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.boot.loop import LoopDevice
    from agent.boot.verify import Candidate

SYS_MODULE = "/sys/module/dm_verity"
MODULE_FILES = ("dm-verity.ko", "dm_verity.ko")
DEVICE_PREFIX = "oa-layer-"
SECTOR = 512
STRICT_OPTION = "panic_on_corruption"   # Linux 5.17+
STATE_OK, STATE_CORRUPTED = "V", "C"    # the verity target's status character
RESERVED_IOS = "/sys/module/dm_mod/parameters/reserved_bio_based_ios"
LEAN_RESERVE = "1"                      # dm-mod's least (0 means its default, 16)


def lower_reserves(path: str = RESERVED_IOS) -> str:
    """Set dm-mod's reserved_bio_based_ios to its least while our devices are made; the
    old value ("" when it cannot be read or set). A device's table load sizes its bio
    mempools, and those of dm-verity's buffer client, from it: 16 by default, about 100 KiB
    a device held for the uptime, whereas a read-only layer makes progress with one."""
    try:
        with open(path, encoding="ascii") as f:
            old = f.read().strip()
        with open(path, "w", encoding="ascii") as f:
            f.write(LEAN_RESERVE)
    except OSError:
        return ""
    return old


def restore_reserves(old: str, path: str = RESERVED_IOS) -> None:
    """Put lower_reserves()'s old value back, for the system's own devices made later."""
    if old:
        try:
            with open(path, "w", encoding="ascii") as f:
                f.write(old)
        except OSError:
            pass


def kernel_has_verity(modules_load: str = MODULES_LOAD, sys_module: str = SYS_MODULE) -> bool:
    """dm-verity is loaded or built in, or the initramfs loads it before any mount (the
    checks start before the modules step)."""
    if os.path.exists(sys_module):
        return True
    try:
        with open(modules_load, encoding="utf-8") as f:
            return any(line.strip().rsplit("/", 1)[-1].startswith(MODULE_FILES) for line in f)
    except OSError:
        return False


def choose_check(entry: listfile.Layer, verity: bool) -> str:
    """verity when the layer has a tree and the kernel dm-verity; else sha256 when the list
    has one (a Talos-written list does not: none)."""
    if verity and entry.verity is not None:
        return statusfile.CHECK_VERITY
    return statusfile.CHECK_SHA256 if entry.sha256 else statusfile.CHECK_NONE


def device_name(index: int) -> str:
    return f"{DEVICE_PREFIX}{index:03d}"


def verity_table(tree: listfile.Verity, dev: str, strict: bool) -> tuple[int, int, str, str]:
    """The one target: format 1, data and hash on the same device, hash blocks after the
    tree's superblock (veritysetup writes one at --hash-offset)."""
    params = (f"1 {dev} {dev} {listfile.VERITY_BLOCK} {listfile.VERITY_BLOCK} "
              f"{tree.data_blocks} {tree.hash_start_block} {listfile.VERITY_HASH} "
              f"{tree.root_hash} {tree.salt or '-'}")
    if strict:
        params += f" 1 {STRICT_OPTION}"
    return (0, tree.data_size // SECTOR, "verity", params)


def block_node(devno: int) -> str:
    """/dev/dm-N for the device number; made here when devtmpfs has not (yet)."""
    path = f"/dev/dm-{os.minor(devno)}"
    if not os.path.exists(path):
        os.mknod(path, stat.S_IFBLK | 0o600, devno)
    return path


def open_verity(cand: Candidate, loop_path: str, strict: bool) -> str:
    """A read-only dm-verity device over the candidate's loop device; its path. OSError
    (the device removed again) when the kernel refuses the table."""
    from agent import syscalls

    tree = cand.entry.verity
    assert tree is not None
    rdev = os.stat(loop_path).st_rdev
    name = device_name(cand.index)
    devno = syscalls.dm_create(name)
    try:
        syscalls.dm_load_table(name, [verity_table(
            tree, f"{os.major(rdev)}:{os.minor(rdev)}", strict)])
        syscalls.dm_resume(name)
        path = block_node(devno)
    except BaseException:
        remove_device(name)
        raise
    cand.device = name
    return path


def attach(cand: Candidate, dev: LoopDevice) -> str:
    """The layer's dm-verity device over its loop device; LayerFailed (loop detached)."""
    from agent.boot import loop

    try:
        return open_verity(cand, dev.path, cand.strict)
    except OSError as exc:
        loop.detach(dev)
        raise LayerFailed(f"dm-verity device for {cand.path}: {exc.strerror}") from None


def detach(cand: Candidate) -> None:
    """Undo attach() after a failed mount."""
    if cand.device:
        remove_device(cand.device)
        cand.device = ""


def remove_device(name: str) -> None:
    from agent import syscalls

    try:
        syscalls.dm_remove(name)
    except OSError:
        pass     # in use or gone: nothing more to undo here


def device_state(name: str) -> str:
    """STATE_OK or STATE_CORRUPTED from the device's status; "" when it cannot be read
    (no such device, no device mapper, not a verity table)."""
    from agent import syscalls

    try:
        targets = syscalls.dm_table_status(name)
    except OSError:
        return ""
    for _, _, ttype, status in targets:
        if ttype == "verity":
            return STATE_CORRUPTED if status.startswith(STATE_CORRUPTED) else STATE_OK
    return ""
