"""Find the root block device named by root=: read superblocks and partition tables ourselves
(there is no udev and no blkid in the initramfs) and wait for it through kernel uevents.

On-disk facts: ext2/3/4 superblock at byte 1024, magic 0xEF53 at 1080, UUID at
1024+0x68, volume name at 1024+0x78; squashfs starts with "hsqs"; GPT header "EFI PART"
at LBA 1 with the partition entries' unique GUID at entry offset 16 and their name
(PARTLABEL, UTF-16LE, 36 units) at offset 56; an MBR disk's PARTUUID is its signature
(offset 440) and the partition number, "SSSSSSSS-NN" (MBR partitions have no names);
a FAT boot sector ends in 55 AA and names its type at 82 (FAT32, volume ID at 67, label at
71) or 54 (FAT12/16, ID at 39, label at 43); its UUID is the ID as "XXXX-XXXX".
"""

from __future__ import annotations

import os
import select
import struct
import time

from agent.boot.cmdline import RootKind, RootSpec
from agent.errors import BootError
from agent.values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

SYS_BLOCK = "/sys/class/block"
EXT_MAGIC = 0xEF53
SQUASHFS_MAGIC = b"hsqs"
GPT_SIGNATURE = b"EFI PART"
MBR_PROTECTIVE = 0xEE
POLL_INTERVAL = 0.05   # s, where no uevent socket is at hand


class FsInfo(Value):
    __slots__ = ("fstype", "label", "uuid")
    fstype: str
    uuid: str
    label: str

    def __init__(self, fstype: str, uuid: str = "", label: str = "") -> None:
        self._set(fstype=fstype, uuid=uuid, label=label)


def format_uuid(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def format_guid(raw: bytes) -> str:
    """GUIDs store their first three fields little-endian (UEFI spec, appendix A)."""
    a, b, c = struct.unpack_from("<IHH", raw)
    return f"{a:08x}-{b:04x}-{c:04x}-{raw[8:10].hex()}-{raw[10:16].hex()}"


def probe_fat(head: bytes) -> FsInfo | None:
    if len(head) < 512 or head[510:512] != b"\x55\xaa":
        return None
    for kind, at in ((b"FAT32", 67), (b"FAT1", 39)):
        where = 82 if kind == b"FAT32" else 54
        if head[where:where + len(kind)] == kind:
            vol = struct.unpack_from("<I", head, at)[0]
            label = head[at + 4:at + 15].decode("ascii", errors="replace").rstrip()
            return FsInfo("vfat", f"{vol >> 16:04X}-{vol & 0xFFFF:04X}",
                          "" if label == "NO NAME" else label)
    return None


def probe_filesystem(path: str) -> FsInfo | None:
    """ext2/3/4, squashfs or vfat by their magic; None when none (or unreadable)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2048)
    except OSError:
        return None
    if head[:4] == SQUASHFS_MAGIC:
        return FsInfo("squashfs")
    if len(head) >= 2048 and struct.unpack_from("<H", head, 1080)[0] == EXT_MAGIC:
        sb = head[1024:2048]
        label = sb[0x78:0x88].split(b"\0", 1)[0].decode(errors="replace")
        return FsInfo("ext4", format_uuid(sb[0x68:0x78]), label)
    return probe_fat(head)


def read_partitions(path: str, sector: int = 512) -> dict[int, tuple[str, str]]:
    """Partition number -> (PARTUUID, PARTLABEL) from a GPT (preferred) or MBR table."""
    try:
        with open(path, "rb") as fh:
            mbr = fh.read(512)
            fh.seek(sector)
            gpt = fh.read(92)
            if gpt[:8] == GPT_SIGNATURE:
                start, count, size = struct.unpack_from("<QII", gpt, 72)
                fh.seek(start * sector)
                table = fh.read(min(count, 1024) * size)
                return _gpt_entries(table, size)
    except OSError:
        return {}
    return _mbr_entries(mbr)


def _gpt_entries(table: bytes, size: int) -> dict[int, tuple[str, str]]:
    out: dict[int, tuple[str, str]] = {}
    for index in range(len(table) // size if size >= 128 else 0):
        entry = table[index * size:(index + 1) * size]
        if entry[:16] != bytes(16):
            out[index + 1] = (format_guid(entry[16:32]), decode_utf16le(entry[56:128]))
    return out


def decode_utf16le(raw: bytes) -> str:
    """Up to the first NUL; by hand, since the initramfs runtime carries no UTF-16 codec."""
    units = struct.unpack(f"<{len(raw) // 2}H", raw[:len(raw) // 2 * 2])
    chars: list[str] = []
    i = 0
    while i < len(units) and units[i]:
        unit = units[i]
        if 0xD800 <= unit < 0xDC00 and i + 1 < len(units) and 0xDC00 <= units[i + 1] < 0xE000:
            unit = 0x10000 + ((unit - 0xD800) << 10) + (units[i + 1] - 0xDC00)   # a pair
            i += 1
        chars.append(chr(unit))
        i += 1
    return "".join(chars)


def _mbr_entries(mbr: bytes) -> dict[int, tuple[str, str]]:
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        return {}
    signature = struct.unpack_from("<I", mbr, 440)[0]
    out: dict[int, tuple[str, str]] = {}
    for index in range(4):
        ptype = mbr[446 + 16 * index + 4]
        if ptype == MBR_PROTECTIVE:
            return {}
        if ptype:
            out[index + 1] = (f"{signature:08x}-{index + 1:02x}", "")
    return out


def _block_devices(sys_block: str) -> Iterator[str]:
    try:
        names = sorted(os.listdir(sys_block))
    except OSError:
        return
    yield from names


def _read(path: str) -> str:
    with open(path, "rb") as fh:
        return fh.read().decode().strip()


def find_partition(spec: RootSpec, sys_block: str = SYS_BLOCK, dev: str = "/dev") -> str | None:
    """The partition whose PARTUUID or PARTLABEL `spec` names."""
    field = 0 if spec.kind == RootKind.PARTUUID else 1
    tables: dict[str, dict[int, tuple[str, str]]] = {}
    for name in _block_devices(sys_block):
        entry = os.path.join(sys_block, name)
        try:
            number = int(_read(os.path.join(entry, "partition")))
            disk = os.path.basename(os.path.dirname(os.path.realpath(entry)))
            if disk not in tables:
                sector = int(_read(os.path.join(sys_block, disk, "queue", "logical_block_size")))
                tables[disk] = read_partitions(os.path.join(dev, disk), sector)
        except (OSError, ValueError):
            continue
        ids = tables[disk].get(number)
        if ids is not None and ids[field] == spec.value:
            return os.path.join(dev, name)
    return None


def find_device(spec: RootSpec, sys_block: str = SYS_BLOCK, dev: str = "/dev") -> str | None:
    """The device node for root=, or None while it has not appeared."""
    if spec.kind == RootKind.PATH:
        return spec.value if os.path.exists(spec.value) else None
    if spec.kind in (RootKind.PARTUUID, RootKind.PARTLABEL):
        return find_partition(spec, sys_block, dev)
    for name in _block_devices(sys_block):
        info = probe_filesystem(os.path.join(dev, name))
        if info is None:
            continue
        if (spec.kind == RootKind.UUID and info.uuid == spec.value) or \
                (spec.kind == RootKind.LABEL and info.label == spec.value):
            return os.path.join(dev, name)
    return None


def match_uevent(spec: RootSpec, event: Mapping[str, str], sys_block: str = SYS_BLOCK,
                 dev: str = "/dev") -> str | None:
    """The device node when a kernel uevent announces the block device `spec` names.

    The event's own fields decide where they can: DEVNAME for a path, PARTNAME (the GPT
    name the kernel sends with a partition) for PARTLABEL; UUID and LABEL need that one
    device's superblock, PARTUUID its disk's partition table.
    """
    name = event.get("DEVNAME") or ""
    if event.get("ACTION") not in ("add", "change") or event.get("SUBSYSTEM") != "block" \
            or not name or ".." in name.split("/"):
        return None
    node = os.path.join(dev, name)
    if spec.kind == RootKind.PATH:
        return spec.value if node == spec.value or os.path.exists(spec.value) else None
    if spec.kind == RootKind.PARTLABEL:
        return node if event.get("PARTNAME") == spec.value else None
    if spec.kind == RootKind.PARTUUID:
        return find_partition(spec, sys_block, dev) if event.get("PARTN") else None
    info = probe_filesystem(node)
    if info is not None and spec.value == (info.uuid if spec.kind == RootKind.UUID
                                           else info.label):
        return node
    return None


def wait_for_device(spec: RootSpec, timeout: float | None) -> str:
    """Return the device node for `spec`, waiting up to `timeout` s (None = forever)."""
    found = find_device(spec)
    if found is not None:
        return found
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        # Costly import (pyroute2 and asyncio), paid only when the device is not there yet.
        from agent.boot.uevent import UeventSocket
    except ImportError:
        # Hook mode leaves the uevent socket out: udev is running there and makes the node.
        return poll_for_device(spec, deadline, timeout)
    sock = UeventSocket()
    try:
        # Listen first, then look once more: a device added in between is not missed.
        sock.bind()
        found = find_device(spec)
        while found is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise BootError(f"root={spec}: device did not appear within {timeout:g} s")
            ready, _, _ = select.select([sock.fileno()], [], [], left)
            for event in sock.get() if ready else ():
                found = found or match_uevent(spec, event)
        return found
    finally:
        sock.close()


def poll_for_device(spec: RootSpec, deadline: float | None, timeout: float | None) -> str:
    while (found := find_device(spec)) is None:
        if deadline is not None and time.monotonic() >= deadline:
            raise BootError(f"root={spec}: device did not appear within {timeout:g} s")
        time.sleep(POLL_INTERVAL)
    return found
