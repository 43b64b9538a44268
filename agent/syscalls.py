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
