"""Mount the immutable root read-only: /rootfs.sqsh through a loop device, or root= device."""

from __future__ import annotations

import os

from agent import syscalls
from agent.boot import loop
from agent.boot.cmdline import BootParams
from agent.boot.layout import ROOT_IMAGE
from agent.boot.rootdev import probe_filesystem, wait_for_device
from agent.errors import BootError
from agent.values import Undo, Value


class MountedRoot(Value):
    __slots__ = ("device", "fstype", "source", "target")
    source: str      # what root= or the image named
    device: str      # the block device mounted
    fstype: str
    target: str

    def __init__(self, source: str, device: str, fstype: str, target: str) -> None:
        self._set(source=source, device=device, fstype=fstype, target=target)


def mount_root(params: BootParams, target: str, undo: Undo,
               image: str = ROOT_IMAGE) -> MountedRoot:
    """root= wins when given; else the image shipped in the initramfs; else an error."""
    if params.root is not None:
        device = wait_for_device(params.root, params.root_timeout)
        return mount_device(str(params.root), device, params, target, undo)
    if os.path.exists(image):
        return mount_image(image, params, target, undo)
    raise BootError(f"no root: give root= on the kernel command line or ship {image}")


def mount_image(image: str, params: BootParams, target: str, undo: Undo) -> MountedRoot:
    try:
        backing = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BootError(f"root image {image}: {exc.strerror}") from exc
    try:
        dev = loop.attach_readonly(backing, image)
    except OSError as exc:
        raise BootError(f"root image {image}: loop device: {exc.strerror}") from exc
    finally:
        os.close(backing)
    try:
        mounted = mount_device(image, dev.path, params, target, undo)
    except BaseException:
        loop.detach(dev)
        raise
    loop.release(dev)  # the mount holds the device now; autoclear detaches it on umount
    return mounted


def mount_device(source: str, device: str, params: BootParams, target: str,
                 undo: Undo) -> MountedRoot:
    fstype = params.rootfstype or _probe_fstype(source, device)
    where = source if source == device else f"{source} ({device})"
    try:
        syscalls.mount(device, target, fstype, syscalls.MS_RDONLY, params.rootflags)
    except OSError as exc:
        raise BootError(f"mount root {where} as {fstype} on {target}: {exc.strerror}") from exc
    undo.callback(syscalls.umount2, target, syscalls.MNT_DETACH)
    return MountedRoot(source, device, fstype, target)


def _probe_fstype(source: str, device: str) -> str:
    info = probe_filesystem(device)
    if info is None:
        where = source if source == device else f"{source} ({device})"
        raise BootError(f"root {where}: no ext4 or squashfs filesystem found "
                        "(set rootfstype= for other filesystems)")
    return info.fstype
