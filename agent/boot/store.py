"""Store images at boot: mount each store filesystem read-only (found by UUID, as root= is;
the root filesystem is used where it is mounted), then open its images and, without
dm-verity, hash them.

The initramfs carries only the list; the images sit on a disk filesystem that appears with
the disks, so this runs in the second half of activation, after modules and the root. A
store that cannot be found or mounted fails its layers (recorded), never the boot.
"""

from __future__ import annotations

import os
import time

from agent.boot.cmdline import RootKind, RootSpec
from agent.boot.verify import Candidate, LayerFailed, check_one, open_image, sha256_constructor
from agent.errors import BootError
from agent.statusfile import CHECK_SHA256

STORE_WAIT = 10.0          # seconds for the store disks to appear after the root has, in all
STORE_DIR = "store"        # store N is mounted at STAGING/storeN
# a build writes one store; a list naming many absent ones must not cost a wait each
MAX_STORES = 8


def mount_store(uuid: str, target: str, wait: float = STORE_WAIT) -> str:
    """Mount the filesystem with this UUID read-only at `target`, waiting at most `wait` s
    for it; the problem, or ""."""
    from agent import syscalls
    from agent.boot.rootdev import probe_filesystem, wait_for_device

    try:
        device = wait_for_device(RootSpec(RootKind.UUID, uuid), wait)
    except BootError:
        return f"store UUID={uuid}: no such filesystem appeared within {STORE_WAIT:g} s"
    except OSError as exc:     # the uevent socket: the store's layers fail, not the boot
        return f"store UUID={uuid}: waiting for the device: {exc.strerror}"
    info = probe_filesystem(device)
    if info is None:
        return f"store UUID={uuid} ({device}): no ext4 or vfat filesystem"
    flags = syscalls.MS_RDONLY | syscalls.MS_NODEV | syscalls.MS_NOSUID | syscalls.MS_NOEXEC
    try:
        os.makedirs(target, exist_ok=True)
        syscalls.mount(device, target, info.fstype, flags)
    except OSError as exc:
        return f"store UUID={uuid}: mount {device} ({info.fstype}): {exc.strerror}"
    return ""


def mounted_uuid(path: str) -> str:
    """UUID of the disk filesystem mounted at `path`; "" when there is none to read (tmpfs,
    overlay, no /dev node)."""
    from agent.boot.rootdev import probe_filesystem

    try:
        devno = os.stat(path).st_dev
        with open(f"/sys/dev/block/{os.major(devno)}:{os.minor(devno)}/uevent",
                  encoding="utf-8") as f:
            names = [line[8:].strip() for line in f if line.startswith("DEVNAME=")]
    except OSError:
        return ""
    info = probe_filesystem(f"/dev/{names[0]}") if names else None
    return info.uuid if info is not None else ""


def open_store_layers(cands: list[Candidate], staging_dir: str, base_root: str = "") -> None:
    """Mount the stores the candidates need, open their images, check what needs a sha256;
    each outcome lands on its candidate, whose `checked` is then released. A store on the
    root filesystem is read where `base_root` is mounted: a second mount would fail when the
    root is read-write (the kernel keeps one read-only state per filesystem)."""
    stores: dict[str, tuple[str, str]] = {}     # uuid -> (mount point, problem)
    deadline = time.monotonic() + STORE_WAIT    # one wait shared by every store
    root_uuid: str | None = None
    buf = bytearray(0)
    for cand in cands:
        if not cand.entry.store:
            continue
        uuid = cand.entry.store
        if root_uuid is None:
            root_uuid = mounted_uuid(base_root).lower() if base_root else ""
        if uuid not in stores and root_uuid and uuid.lower() == root_uuid:
            stores[uuid] = (base_root, "")
        elif uuid not in stores and len(stores) >= MAX_STORES:
            stores[uuid] = ("", f"store UUID={uuid}: over the limit of {MAX_STORES} stores "
                                "in one list")
        elif uuid not in stores:
            where = os.path.join(staging_dir, f"{STORE_DIR}{len(stores)}")
            wait = max(0.0, deadline - time.monotonic())
            stores[uuid] = (where, mount_store(uuid, where, wait))
        where, problem = stores[uuid]
        cand.path = os.path.join(where, cand.entry.path)
        if not problem:
            try:
                open_image(cand)
            except LayerFailed as exc:
                problem = str(exc)
        if problem or cand.check != CHECK_SHA256:
            cand.error = problem
            cand.checked.release()
            continue
        if not buf:
            buf = bytearray(1 << 20)
        check_one(cand, sha256_constructor(cand.size), buf)   # releases `checked`
