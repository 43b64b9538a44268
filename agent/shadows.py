"""Files of a persistent upper that hide files the extensions ship (the upper wins in
overlayfs): the answer to "I upgraded the extension but still see the old binary".

Found in the booted system, not at boot: finding them reads each layer's directories down
to the ones the upper also has, milliseconds per hundred layers with the cold caches of a
boot, for a report nobody reads before the system is up. `get extensions` run as root
(the status unit runs it once per boot) walks them and keeps the answer in the status
file, where the table, yaml, json and later readers find it.

After boot no layer is mounted at a path (the overlay holds its own clones), so a child
process in a mount namespace of its own mounts them again read-only from their loop or
dm-verity devices (the kernel hands back the superblocks already in use, and the namespace,
with every mount in it, ends with the child). The upper is read where its filesystem is
mounted (the boot leaves it at STAGING/upper); its device is never mounted here.
"""

from __future__ import annotations

import json
import os
import re
import stat

from agent.statusfile import (
    ACTIVE,
    CHECK_VERITY,
    ROOT_PERSISTENT,
    BootStatus,
    write_json_atomic,
)

SHADOWS_SHOWN = 5            # paths of shadowing files kept in the status
OPAQUE_XATTR = "trusted.overlay.opaque"
UPPER_FSTYPE = "ext4"        # as agent.boot.upper mounts it
LAYER_FSTYPE = "squashfs"
SYS_BLOCK = "/sys/block"
MOUNTINFO = "/proc/self/mountinfo"
MAX_REPLY = 1 << 20          # bytes read from the child


def find_shadows(upper: str, layers: list[str]) -> tuple[int, list[str]]:
    """(how many, the first few) entries of the upper directory `upper` that hide what the
    layers (topmost first) show: a non-directory, a whiteout or an opaque directory where
    the layers show something. Walks the upper only, looking each of its names up in the
    layers whose same directory shows through, as the kernel merges them; never lists a
    layer's directory, so an empty upper reads no layer."""
    found: set[str] = set()
    _shadows(upper, layers, "", found)
    return len(found), sorted(found)[:SHADOWS_SHOWN]


def _shadows(upper: str, lowers: list[str], rel: str, found: set[str]) -> None:
    try:
        with os.scandir(upper) as it:
            entries = list(it)
    except OSError:
        return
    for entry in entries:
        merged = _shown_below(lowers, entry.name)
        if merged is None:
            continue
        path = f"{rel}/{entry.name}"
        if merged and entry.is_dir(follow_symlinks=False) and not _opaque(entry.path):
            _shadows(entry.path, merged, path, found)
        else:
            found.add(path)


def _shown_below(lowers: list[str], name: str) -> list[str] | None:
    """What the layers show at `name`, merged top down as overlayfs does: None for nothing
    (absent, or a whiteout first), [] for a non-directory, else the directories merged
    there (down to the first non-directory; extension images carry no xattrs, so no
    opaque directory stops them earlier)."""
    merged: list[str] = []
    for lower in lowers:
        below = os.path.join(lower, name)
        try:
            st = os.lstat(below)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            merged.append(below)
        elif merged:
            break                   # a directory above hides it
        elif stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return None             # a whiteout: nothing shows
        else:
            return []
    return merged or None


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def dm_node(name: str, sys_block: str = SYS_BLOCK) -> str:
    """/dev/dm-N of the device-mapper device `name` (udev's /dev/mapper links need dmsetup's
    rules, which a minimal system lacks); "" when there is none."""
    try:
        nodes = os.listdir(sys_block)
    except OSError:
        return ""
    for node in nodes:
        try:
            with open(os.path.join(sys_block, node, "dm", "name"), "rb") as f:
                if f.read().strip() == name.encode():
                    return f"/dev/{node}"
        except OSError:
            continue
    return ""


def layer_devices(status: BootStatus) -> list[str]:
    """The active layers' block devices, topmost first (the last list entry is on top)."""
    devices = []
    for ext in sorted(status.extensions, key=lambda e: e.index, reverse=True):
        if ext.phase != ACTIVE:
            continue
        node = dm_node(ext.device) if ext.check == CHECK_VERITY and ext.device else ext.loop
        if not node:
            raise OSError(f"extension {ext.id}: no device to read it from")
        devices.append(node)
    return devices


def upper_folder(source: str, folder: str, mountinfo: str = MOUNTINFO) -> str:
    """The upper/ folder of the upper on `source`, where its filesystem is mounted whole."""
    try:
        with open(mountinfo, "rb") as f:
            lines = f.read().decode(errors="surrogateescape").splitlines()
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, mountinfo) from None
    for line in lines:
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) >= 5 and len(rest) >= 2 and fields[3] == "/" \
                and rest[:2] == [UPPER_FSTYPE, source]:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            upper = os.path.join(point, folder.strip("/"), "upper")
            if os.path.isdir(upper):
                return upper
    raise OSError(f"{source}: the upper's filesystem is not mounted any more")


def walk_devices(scratch: str, upper: str, devices: list[str]) -> tuple[int, list[str]]:
    """In a private mount namespace (the caller's, which ends with it): a tmpfs over the
    existing folder `scratch`, each layer mounted read-only in it, then the walk."""
    from agent import syscalls

    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    syscalls.mount("oa-shadows", scratch, "tmpfs", syscalls.MS_NODEV | syscalls.MS_NOSUID,
                   "mode=0700")
    layers = []
    for index, device in enumerate(devices):
        point = os.path.join(scratch, str(index))
        os.mkdir(point)
        mount_named(device, point, LAYER_FSTYPE, syscalls.MS_RDONLY | syscalls.MS_NODEV)
        layers.append(point)
    return find_shadows(upper, layers)


def mount_named(device: str, point: str, fstype: str, flags: int) -> None:
    """mount(2), the error naming the device (the mount point is a scratch name)."""
    from agent import syscalls

    try:
        syscalls.mount(device, point, fstype, flags)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, device) from None


def count_in_child(scratch: str, upper: str, devices: list[str]) -> tuple[int, list[str]]:
    """walk_devices in a forked child with its own mount namespace; OSError with the
    child's reason when it fails."""
    from agent import syscalls

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:      # the child: answer on the pipe, never return into the caller
        code = 0
        try:
            os.close(read_end)
            syscalls.unshare(syscalls.CLONE_NEWNS)
            count, shown = walk_devices(scratch, upper, devices)
            reply = {"count": count, "shown": shown}
        except BaseException as exc:      # reported to the parent
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            where = f"{exc.filename}: " if isinstance(exc, OSError) and exc.filename else ""
            reply, code = {"error": f"{where}{reason}"}, 1
        try:
            os.write(write_end, json.dumps(reply).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        data = b""
        while len(data) <= MAX_REPLY and (chunk := os.read(read_end, 65536)):
            data += chunk
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    try:
        reply = json.loads(data)
    except ValueError:
        raise OSError("the shadow check ended without an answer") from None
    if "error" in reply:
        raise OSError(str(reply["error"]))
    return int(reply["count"]), [str(p) for p in reply["shown"]]


def with_shadows(status: BootStatus, status_path: str) -> BootStatus:
    """`status` with the persistent upper's shadowing files counted, once, and kept in the
    status file; unchanged for another root, when not root, or once counted. A failure
    becomes a note (not kept: the next root reader tries again)."""
    up = status.upper
    if up is None or status.root_mode != ROOT_PERSISTENT or os.geteuid() != 0:
        return status
    if up.shadowed_count >= 0:
        return status
    try:
        count, shown = count_in_child(os.path.dirname(status_path) or ".",
                                      upper_folder(up.source, up.dir), layer_devices(status))
    except OSError as exc:
        reason = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror or str(exc)
        return status.replace(notes=(*status.notes, f"shadowed files not counted: {reason}"))
    status = status.replace(upper=up.replace(shadowed_count=count, shadowed=tuple(shown)))
    keep(status_path, count, shown)
    return status


def keep(status_path: str, count: int, shown: list[str]) -> None:
    """Write the count into the status file (atomically; the rest as the boot wrote it)."""
    from agent.files import read_regular
    from agent.statusfile import MAX_STATUS_BYTES

    try:
        doc = json.loads(read_regular(status_path, MAX_STATUS_BYTES, follow=True))
        doc["upper"].update(shadowed_count=count, shadowed=shown)
        write_json_atomic(status_path, doc)
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        pass    # shown this time; counted again by the next reader
