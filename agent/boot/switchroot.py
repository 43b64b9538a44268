"""switch_root: make the mounted root `/` and exec its init (as util-linux switch_root does).

pivot_root(2) does not work on the initramfs rootfs, so: move the API mounts into the
new root, delete the initramfs contents (it is RAM; only when / really is ramfs/tmpfs,
never crossing into another filesystem), move the new root onto /, chroot, exec.
Every check runs before the first destructive step.
"""

from __future__ import annotations

import os
import stat

from agent import syscalls
from agent.boot.layout import API_MOUNTS
from agent.errors import BootError
from agent.paths import MISSING, walk

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import NoReturn


def resolve_in_root(root: str, path: str) -> str | None:
    """Host path of `path` inside `root`, following symlinks as if `root` were `/`."""
    def probe(cand: str) -> object:
        host = os.path.join(root, cand.lstrip("/"))
        try:
            return os.readlink(host) if stat.S_ISLNK(os.lstat(host).st_mode) else True
        except OSError:
            return MISSING

    walked = walk(path, probe)
    return None if walked is None else os.path.join(root, walked[0].lstrip("/"))


def check_init(root: str, init: str) -> str:
    """The host path of init inside the new root; BootError when it cannot be executed."""
    found = resolve_in_root(root, init)
    if found is None:
        raise BootError(f"init={init}: not found in the new root")
    try:
        st = os.stat(found)
    except OSError as exc:
        raise BootError(f"init={init}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise BootError(f"init={init}: not a regular file")
    if not st.st_mode & 0o111:
        raise BootError(f"init={init}: not executable")
    return found


def is_ramfs(path: str = "/") -> bool:
    return syscalls.statfs_type(path) in (syscalls.RAMFS_MAGIC, syscalls.TMPFS_MAGIC)


def move_api_mounts(newroot: str, mounts: Sequence[str] = API_MOUNTS) -> list[str]:
    """MS_MOVE each API mount under newroot; one with no mount point there is detached.

    Returns the mounts that had to be detached (a read-only root cannot grow a directory).
    """
    detached: list[str] = []
    for mount in mounts:
        dest = newroot.rstrip("/") + mount
        try:
            if os.path.isdir(dest):
                syscalls.mount(mount, dest, None, syscalls.MS_MOVE)
                continue
            syscalls.umount2(mount, syscalls.MNT_DETACH)
            detached.append(mount)
        except OSError as exc:
            raise BootError(f"move {mount} to {dest}: {exc.strerror}") from exc
    return detached


def delete_contents(top: str, device: int) -> int:
    """Remove everything below `top` on filesystem `device`; other filesystems are kept."""
    removed = 0
    with os.scandir(top) as it:
        entries = list(it)
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if st.st_dev != device:
            continue  # a mount point of another filesystem: never cross into it
        try:
            if stat.S_ISDIR(st.st_mode):
                removed += delete_contents(entry.path, device)
                os.rmdir(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
        except OSError:
            pass  # e.g. a directory still holding a mount point: leave it
    return removed


def switch_root(newroot: str, init: str, args: Sequence[str],
                before_exec: Callable[[], None] | None = None) -> NoReturn:
    """Make `newroot` the root and exec `init`; returns only by raising BootError."""
    check_init(newroot, init)
    initramfs = is_ramfs("/")
    root_dev = os.lstat("/").st_dev
    move_api_mounts(newroot)
    os.chdir(newroot)
    if initramfs:
        delete_contents("/", root_dev)
    try:
        syscalls.mount(newroot, "/", None, syscalls.MS_MOVE)
        os.chroot(".")
        os.chdir("/")
    except OSError as exc:
        raise BootError(f"switch root to {newroot}: {exc.strerror}") from exc
    if before_exec is not None:
        before_exec()
    try:
        os.execv(init, [init, *args])
    except OSError as exc:
        raise BootError(f"exec init={init}: {exc.strerror}") from exc
