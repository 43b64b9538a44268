"""Read-only loop devices through ioctls on /dev/loop-control and /dev/loopN (no losetup).

Numbers and struct layouts from include/uapi/linux/loop.h. The device is set to
autoclear: it detaches itself when its last user (our fd, then the squashfs mount) lets go.
"""

from __future__ import annotations

import errno
import os
import struct

from agent import syscalls

LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_SET_BLOCK_SIZE = 0x4C09  # Linux 4.14+
LOOP_CONFIGURE = 0x4C0A      # Linux 5.8+
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4

# struct loop_info64: 5 x u64, 4 x u32, file_name[64], crypt_name[64], encrypt_key[32], 2 x u64
_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")
# struct loop_config: u32 fd, u32 block_size, loop_info64, u64 reserved[8] (304 bytes)
_CONFIG = struct.Struct(f"=II{_INFO64.size}s64x")
LOOP_CONTROL = "/dev/loop-control"
MAX_BUSY_RETRIES = 64
# an ioctl through ctypes is not retried by Python (PEP 475 covers os.* only)
RETRY_ERRNOS = (errno.EINTR, errno.EAGAIN)


class LoopDevice:
    """An attached loop device; `fd` stays open until release() so autoclear cannot fire early."""

    __slots__ = ("fd", "number", "path")

    def __init__(self, number: int, path: str, fd: int) -> None:
        self.number, self.path, self.fd = number, path, fd


def pack_info64(backing: str, flags: int) -> bytes:
    name = os.fsencode(backing)[-63:]
    return _INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, flags, name, b"", b"", 0, 0)


def pack_config(backing_fd: int, backing: str, flags: int, block_size: int = 0) -> bytes:
    return _CONFIG.pack(backing_fd, block_size, pack_info64(backing, flags))


def configure_fallback(loop_fd: int, backing_fd: int, backing: str, dev: str,
                       block_size: int) -> None:
    """Pre-5.8 kernels: LOOP_SET_FD (read-only because backing_fd is) then LOOP_SET_STATUS64."""
    syscalls.ioctl(loop_fd, LOOP_SET_FD, backing_fd, path=dev)
    try:
        syscalls.ioctl(loop_fd, LOOP_SET_STATUS64,
                       bytearray(pack_info64(backing, LO_FLAGS_AUTOCLEAR)), path=dev)
    except OSError:
        syscalls.ioctl(loop_fd, LOOP_CLR_FD, 0, path=dev)
        raise
    if block_size:
        try:
            syscalls.ioctl(loop_fd, LOOP_SET_BLOCK_SIZE, block_size, path=dev)
        except OSError:
            pass  # only slower: 512-byte blocks work too


def attach_readonly(backing_fd: int, backing: str, block_size: int = 0) -> LoopDevice:
    """Attach the open file `backing_fd` to a free loop device, read-only with autoclear;
    `block_size` is the device's logical block size (0: the kernel's 512 bytes).

    GET_FREE then configure races with other processes (and our other mount threads)
    taking the same device: EBUSY means someone won; ENXIO, that the device was being torn
    down (an autoclear detach) as we opened it. Either way, ask for another one.
    """
    ctl = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    last = OSError(errno.EBUSY, os.strerror(errno.EBUSY))
    try:
        for _ in range(MAX_BUSY_RETRIES):
            try:
                number = syscalls.ioctl(ctl, LOOP_CTL_GET_FREE, 0, path=LOOP_CONTROL)
            except OSError as exc:
                if exc.errno not in RETRY_ERRNOS:
                    raise
                last = exc
                continue
            dev = f"/dev/loop{number}"
            try:
                loop_fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    continue
                raise
            try:
                configure(loop_fd, backing_fd, backing, dev, block_size)
            except OSError as exc:
                os.close(loop_fd)
                if exc.errno in (errno.EBUSY, errno.ENXIO) or exc.errno in RETRY_ERRNOS:
                    last = exc
                    continue
                raise
            return LoopDevice(number=number, path=dev, fd=loop_fd)
    finally:
        os.close(ctl)
    raise OSError(last.errno, f"no loop device after {MAX_BUSY_RETRIES} tries "
                  f"({last.strerror})", backing)


def configure(loop_fd: int, backing_fd: int, backing: str, dev: str, block_size: int = 0,
              ) -> None:
    config = bytearray(pack_config(backing_fd, backing, LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                                   block_size))
    try:
        syscalls.ioctl(loop_fd, LOOP_CONFIGURE, config, path=dev)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
        configure_fallback(loop_fd, backing_fd, backing, dev, block_size)


def release(loop: LoopDevice) -> None:
    """Drop our reference: a mounted device stays, an unused one detaches (autoclear)."""
    os.close(loop.fd)


def detach(loop: LoopDevice) -> None:
    """Detach now (undo after a failed mount), then drop our reference."""
    try:
        syscalls.ioctl(loop.fd, LOOP_CLR_FD, 0, path=loop.path)
    except OSError:
        pass  # autoclear still detaches it when the fd closes below
    os.close(loop.fd)
