"""The one thin ctypes layer over the syscalls the agent makes.

Every wrapper raises OSError(errno, strerror, path) on failure, so callers can
wrap it with context. Nothing else in the package calls libc directly. This
module is on the boot path: it imports only _ctypes, os and fcntl, and builds its few C
types on _ctypes, the C half of ctypes (the package would be a boot-path import).
x86_64 syscall numbers come from arch/x86/entry/syscalls/syscall_64.tbl.
"""

from __future__ import annotations

import _ctypes
import fcntl
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    _Simple = _ctypes._SimpleCData[Any]    # generic only in typeshed's stubs
    _CArray = _ctypes.Array[Any]
else:
    _Simple = _ctypes._SimpleCData
    _CArray = _ctypes.Array


class _Int(_Simple):   # type codes as in ctypes/__init__.py
    _type_ = "i"


class _Long(_Simple):
    _type_ = "l"


class _ULong(_Simple):
    _type_ = "L"


class _CharP(_Simple):
    _type_ = "z"


class _Char(_Simple):
    _type_ = "c"


class _StatfsBuffer(_CArray):    # struct statfs is 120 bytes on x86_64
    _type_ = _Char
    _length_ = 128


class _Libc:
    """The process's own symbols (libc included), as ctypes.CDLL(None) finds them."""

    _handle = _ctypes.dlopen(None, 0)  # type: ignore[arg-type]  # NULL: this process

    def function(self, name: str, restype: type, argtypes: tuple[type, ...] | None = None,
                 ) -> Callable[..., int]:
        class Function(_ctypes.CFuncPtr):
            # cdecl; errno saved right after the call, for get_errno()
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = restype

        func = Function((name, self))  # type: ignore[arg-type]  # any object with _handle
        if argtypes is not None:
            func.argtypes = argtypes
        return func  # type: ignore[no-any-return]


_lib = _Libc()
_mount = _lib.function("mount", _Int, (_CharP, _CharP, _CharP, _ULong, _CharP))
_umount2 = _lib.function("umount2", _Int, (_CharP, _Int))
_syscall = _lib.function("syscall", _Long)
_reboot = _lib.function("reboot", _Int, (_Int,))
_statfs = _lib.function("statfs", _Int)
_sync = _lib.function("sync", _Int)
_unshare = _lib.function("unshare", _Int, (_Int,))

# mount(2) flags (include/uapi/linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19

# umount2(2) flags
MNT_FORCE = 1
MNT_DETACH = 2

# finit_module(2) flags
MODULE_INIT_IGNORE_MODVERSIONS = 1
MODULE_INIT_IGNORE_VERMAGIC = 2
MODULE_INIT_COMPRESSED_FILE = 4

# new mount API (Linux 5.2+)
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSOPEN_CLOEXEC = 1
FSMOUNT_CLOEXEC = 1
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NODEV = 0x4
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100

# reboot(2) commands
RB_AUTOBOOT = 0x01234567
RB_HALT_SYSTEM = 0xCDEF0123
RB_POWER_OFF = 0x4321FEDC

_NR = {
    "finit_module": 313,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
}


def _fail(path: str | None = None) -> OSError:
    err = _ctypes.get_errno()
    return OSError(err, os.strerror(err), path)


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2); the error names the target."""
    if _mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        raise _fail(target)


def umount2(target: str, flags: int = 0) -> None:
    if _umount2(_b(target), flags) != 0:
        raise _fail(target)


CLONE_NEWNS = 0x00020000    # unshare(2): a mount namespace of the caller's own


def unshare(flags: int) -> None:
    if _unshare(flags) != 0:
        raise _fail()


def finit_module(fd: int, params: str = "", flags: int = 0, path: str | None = None) -> None:
    """Load a kernel module from an open file; `path` only names it in errors."""
    if _syscall(_NR["finit_module"], fd, _b(params), flags) != 0:
        raise _fail(path)


def ioctl(fd: int, request: int, arg: int | bytes | bytearray = 0, path: str | None = None) -> int:
    """ioctl(2) through fcntl; integer results are returned, buffers are filled in place."""
    try:
        if isinstance(arg, bytearray):
            return int(fcntl.ioctl(fd, request, arg, True))
        result = fcntl.ioctl(fd, request, arg)
        return int(result) if isinstance(result, int) else 0
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None


LOCK_EX = fcntl.LOCK_EX
LOCK_NB = fcntl.LOCK_NB


def flock(fd: int, operation: int, path: str | None = None) -> bool:
    """flock(2); with LOCK_NB, False when another open file holds the lock."""
    try:
        fcntl.flock(fd, operation)
    except BlockingIOError:
        return False
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    return True


def fsopen(fstype: str, flags: int = FSOPEN_CLOEXEC) -> int:
    fd = _syscall(_NR["fsopen"], _b(fstype), flags)
    if fd < 0:
        raise _fail(fstype)
    return int(fd)


def fsconfig(fd: int, cmd: int, key: str | None = None, value: str | None = None,
             aux: int = 0) -> None:
    if _syscall(_NR["fsconfig"], fd, cmd, _b(key), _b(value), aux) != 0:
        raise _fail(f"{key}={value}" if key else None)


def fsmount(fd: int, flags: int = FSMOUNT_CLOEXEC, attr_flags: int = 0) -> int:
    mfd = _syscall(_NR["fsmount"], fd, flags, attr_flags)
    if mfd < 0:
        raise _fail()
    return int(mfd)


def move_mount(from_fd: int, to_path: str, flags: int = MOVE_MOUNT_F_EMPTY_PATH) -> None:
    if _syscall(_NR["move_mount"], from_fd, b"", AT_FDCWD, _b(to_path), flags) != 0:
        raise _fail(to_path)


def reboot(cmd: int) -> None:
    """reboot(2); only returns on failure."""
    if _reboot(cmd - (1 << 32) if cmd >= 1 << 31 else cmd) != 0:
        raise _fail()


# statfs(2) f_type values (include/uapi/linux/magic.h)
RAMFS_MAGIC = 0x858458F6
TMPFS_MAGIC = 0x01021994


def statfs_type(path: str) -> int:
    """f_type of statfs(2): the first field (a long) of struct statfs on x86_64."""
    buf = _StatfsBuffer()
    if _statfs(_b(path), buf) != 0:
        raise _fail(path)
    return int.from_bytes(bytes(buf)[:8], "little") & 0xFFFFFFFF


def sync() -> None:
    _sync()


# ---------------------------------------------------------------- device mapper
# include/uapi/linux/dm-ioctl.h: every command takes a struct dm_ioctl (312 bytes) followed
# by its data. Fields: u32 version[3], data_size, data_start, target_count, s32 open_count,
# u32 flags, event_nr, padding, u64 dev, char name[128], uuid[129], data[7]. A table load's
# data is one struct dm_target_spec per target (u64 sector_start, length, s32 status,
# u32 next, char target_type[16]) followed by its NUL-ended parameters, 8-byte aligned.
DM_CONTROL = "/dev/mapper/control"
DM_IOCTL_SIZE = 312
DM_TARGET_SPEC_SIZE = 40
DM_NAME_LEN = 128
DM_UUID_LEN = 129
DM_MAX_TYPE_NAME = 16
DM_VERSION = (4, 0, 0)         # the interface version we speak: any 4.x kernel accepts it
DM_READONLY_FLAG = 1 << 0
DM_SUSPEND_FLAG = 1 << 1
DM_STATUS_TABLE_FLAG = 1 << 4
DM_BUFFER_FULL_FLAG = 1 << 8
DM_STATUS_BUFFER = 16 << 10
DM_STATUS_BUFFER_MAX = 1 << 20


def _dm_request(nr: int) -> int:
    """_IOWR(0xfd, nr, struct dm_ioctl)."""
    return (3 << 30) | (DM_IOCTL_SIZE << 16) | (0xFD << 8) | nr


DM_DEV_CREATE = _dm_request(3)
DM_DEV_REMOVE = _dm_request(4)
DM_DEV_SUSPEND = _dm_request(6)
DM_TABLE_LOAD = _dm_request(9)
DM_TABLE_STATUS = _dm_request(12)


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "little")


def _fixed(text: str, size: int, what: str) -> bytes:
    raw = os.fsencode(text)
    if len(raw) >= size or b"\0" in raw:
        raise OSError(22, f"{what} longer than {size - 1} bytes or with a NUL", text)
    return raw + bytes(size - len(raw))


def dm_header(name: str, *, size: int = DM_IOCTL_SIZE, flags: int = 0, target_count: int = 0,
              uuid: str = "") -> bytearray:
    """A struct dm_ioctl for device `name` heading a buffer of `size` bytes."""
    head = b"".join(_u32(v) for v in (*DM_VERSION, size, DM_IOCTL_SIZE, target_count, 0,
                                      flags, 0, 0)) + bytes(8)
    buf = bytearray(size)
    buf[:48] = head
    buf[48:48 + DM_NAME_LEN] = _fixed(name, DM_NAME_LEN, "device-mapper name")
    buf[176:176 + DM_UUID_LEN] = _fixed(uuid, DM_UUID_LEN, "device-mapper uuid")
    return buf


def dm_target(start: int, length: int, target_type: str, params: str) -> bytes:
    """One struct dm_target_spec and its parameters, padded to 8 bytes (`next` = its size)."""
    text = os.fsencode(params) + b"\0"
    size = DM_TARGET_SPEC_SIZE + len(text) + (-(DM_TARGET_SPEC_SIZE + len(text)) % 8)
    spec = (start.to_bytes(8, "little") + length.to_bytes(8, "little") + bytes(4) + _u32(size)
            + _fixed(target_type, DM_MAX_TYPE_NAME, "target type"))
    return spec + text + bytes(size - len(spec) - len(text))


def _dm_call(request: int, buf: bytearray, name: str) -> bytearray:
    try:
        fd = os.open(DM_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, DM_CONTROL) from None
    try:
        ioctl(fd, request, buf, path=name)
    finally:
        os.close(fd)
    return buf


def dm_create(name: str, uuid: str = "") -> int:
    """DM_DEV_CREATE: a new device without a table; returns its device number (the minor
    names /dev/dm-N, which devtmpfs creates without udev)."""
    buf = _dm_call(DM_DEV_CREATE, dm_header(name, uuid=uuid), name)
    return int.from_bytes(buf[40:48], "little")


def dm_load_table(name: str, targets: list[tuple[int, int, str, str]],
                  readonly: bool = True) -> None:
    """DM_TABLE_LOAD: (start sector, sectors, target type, parameters) per target."""
    data = b"".join(dm_target(*t) for t in targets)
    buf = dm_header(name, size=DM_IOCTL_SIZE + len(data), target_count=len(targets),
                    flags=DM_READONLY_FLAG if readonly else 0)
    buf[DM_IOCTL_SIZE:] = data
    _dm_call(DM_TABLE_LOAD, buf, name)


def dm_resume(name: str) -> None:
    """DM_DEV_SUSPEND without DM_SUSPEND_FLAG: make the loaded table live."""
    _dm_call(DM_DEV_SUSPEND, dm_header(name), name)


def dm_remove(name: str) -> None:
    _dm_call(DM_DEV_REMOVE, dm_header(name), name)


def dm_table_status(name: str) -> list[tuple[int, int, str, str]]:
    """DM_TABLE_STATUS: (start, length, target type, status text) of each live target."""
    size = DM_STATUS_BUFFER
    while True:
        buf = _dm_call(DM_TABLE_STATUS, dm_header(name, size=size), name)
        flags = int.from_bytes(buf[28:32], "little")
        if not flags & DM_BUFFER_FULL_FLAG or size >= DM_STATUS_BUFFER_MAX:
            break
        size *= 4
    return parse_dm_targets(bytes(buf))


def parse_dm_targets(buf: bytes) -> list[tuple[int, int, str, str]]:
    """The target specs a status ioctl returned; `next` counts from the first spec."""
    count = int.from_bytes(buf[20:24], "little")
    first = int.from_bytes(buf[16:20], "little")
    out = []
    at = first
    for _ in range(count):
        if at + DM_TARGET_SPEC_SIZE > len(buf):
            break
        start = int.from_bytes(buf[at:at + 8], "little")
        length = int.from_bytes(buf[at + 8:at + 16], "little")
        nxt = int.from_bytes(buf[at + 20:at + 24], "little")
        ttype = buf[at + 24:at + 40].split(b"\0", 1)[0].decode(errors="replace")
        text = buf[at + DM_TARGET_SPEC_SIZE:].split(b"\0", 1)[0].decode(errors="replace")
        out.append((start, length, ttype, text))
        at = first + nxt
    return out
