"""Writable roots: an upper layer above the extensions, on a tmpfs (volatile) or on a
device that keeps its changes (persistent), chosen by overlay_agent.upper=.

Never brick: a device that is missing, unmountable or full, or an overlay that refuses
it, gives way to a tmpfs upper with the reason recorded (`note`, which raises under
overlay_agent.strict); a work dir a crash left stale is emptied and the mount tried
again. The base root stays read-only below. The upper's filesystem stays mounted at
STAGING/upper, where a file that shadows an extension's can be removed (removing it
through / would only hide the extension's file too); such files are counted after boot
(agent.shadows).
"""

from __future__ import annotations

import _thread
import errno
import os
import stat

from agent import statusfile
from agent.boot.cmdline import UPPER_KEY, RootSpec, UpperSpec
from agent.errors import BootError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.boot.activate import ActivationSettings

UPPER_MOUNT = "upper"        # staging name of the upper's filesystem
UPPER_DIR, WORK_DIR = "upper", "work"
UPPER_FSTYPE = "ext4"        # the writable filesystem rootdev recognises
MIN_FREE = 1 << 20           # bytes: below this a device upper counts as full


class UpperFailed(Exception):
    """The device upper cannot be used; the message says why."""


def announce(line: str, warning: bool = False) -> None:
    """One line in the kernel log, which the journal keeps; the kernel echoes it on the
    console as its loglevel says (`quiet` hides the informational ones). A seam tests
    replace."""
    from agent.boot import console

    console.to_kmsg(line, console.KERN_WARNING if warning else console.KERN_INFO)


class Upper:
    """The upper layer of this boot: where it lives and what happened to it."""

    def __init__(self, spec: UpperSpec, mountpoint: str) -> None:
        self.spec = spec
        self.mode = statusfile.ROOT_VOLATILE
        self.source = "tmpfs"
        self.mountpoint = mountpoint
        self.mounted = False
        self.folder = ""          # mountpoint + spec.dir: holds upper/ and work/
        self.fallback = ""
        self.repaired = ""
        self.size = self.used = 0

    @property
    def dirs(self) -> tuple[str, str]:
        return os.path.join(self.folder, UPPER_DIR), os.path.join(self.folder, WORK_DIR)

    def release(self) -> None:
        """Unmount the upper's filesystem (on a fallback or when no overlay could be made)."""
        from agent import syscalls

        if self.mounted:
            try:
                syscalls.umount2(self.mountpoint)
            except OSError:
                syscalls.umount2(self.mountpoint, syscalls.MNT_DETACH)
            self.mounted = False

    def measure(self) -> None:
        st = os.statvfs(self.folder)
        self.size = st.f_blocks * st.f_frsize
        self.used = (st.f_blocks - st.f_bfree) * st.f_frsize

    def doc(self) -> dict[str, object]:
        return statusfile.upper_doc(
            requested=str(self.spec), source=self.source,
            dir=self.spec.dir if self.mode == statusfile.ROOT_PERSISTENT else "",
            size_bytes=self.size, used_bytes=self.used, fallback=self.fallback,
            repaired=self.repaired, shadowed=[],
            # counted after boot (agent.shadows): a tmpfs upper hides nothing of its own
            shadowed_count=statusfile.SHADOWS_UNCOUNTED
            if self.mode == statusfile.ROOT_PERSISTENT else 0)

    def describe(self) -> str:
        if self.mode == statusfile.ROOT_PERSISTENT:
            where = f"{self.spec} ({self.source})"
            return (f"/ is writable, changes kept on {where}: {self.used >> 20} of "
                    f"{self.size >> 20} MiB used")
        return "/ is writable, changes kept in RAM (tmpfs) until shutdown"


class Opening:
    """open_upper on a thread of its own when the upper is a device, started before the
    layers are mounted: the device's wait and its ext4 mount (reads and a superblock
    write through the block layer, milliseconds on a busy machine) overlap the layers'
    mounts instead of adding to them. Its notes wait for finish(), in the boot's thread."""

    def __init__(self, settings: ActivationSettings, base_root: str) -> None:
        self.settings, self.base_root = settings, base_root
        self.notes: list[str] = []
        self.upper: Upper | None = None
        self.error: BaseException | None = None
        self.done = _thread.allocate_lock()
        self.done.acquire()
        spec = settings.upper
        if spec is not None and spec.device is not None and not (
                settings.disable or settings.problem):
            try:
                _thread.start_new_thread(self.run, ())
                return
            except RuntimeError:
                pass     # no thread to be had (a tight pid limit): open it here
        self.run()

    def run(self) -> None:
        try:
            self.upper = open_upper(self.settings, self.base_root, self.notes.append)
        except BaseException as exc:   # raised again in the boot's thread by finish()
            self.error = exc
        finally:
            self.done.release()

    def finish(self, note: Callable[[str], None]) -> Upper | None:
        """Wait for the upper; say its notes through `note` (which raises under strict:
        the upper is released first)."""
        with self.done:
            pass
        if self.error is not None:
            raise self.error
        try:
            for line in self.notes:
                note(line)
        except BaseException:
            self.abandon()
            raise
        return self.upper

    def abandon(self) -> None:
        """Wait for the upper and unmount it (the boot failed before the overlay)."""
        with self.done:
            pass
        if self.upper is not None:
            self.upper.release()
            self.upper = None


def open_upper(settings: ActivationSettings, base_root: str,
               note: Callable[[str], None]) -> Upper | None:
    """Mount the upper's filesystem and make its folders; None for the read-only root.
    A device that cannot serve is noted (fatal under strict) and a tmpfs serves instead."""
    spec: UpperSpec | None = settings.upper
    if spec is None or settings.disable or settings.problem:
        return None
    up = Upper(spec, os.path.join(settings.staging_dir, UPPER_MOUNT))
    if spec.device is not None:
        try:
            mount_device_upper(up, spec.device, settings.upper_wait, base_root)
            return up
        except UpperFailed as exc:
            fall_back(up, str(exc), note)
    try:
        mount_tmpfs_upper(up, base_root)
    except OSError as exc:
        up.release()
        note(f"{UPPER_KEY}={spec}: tmpfs: {exc.strerror}; / stays read-only")
        return None
    return up


def fall_back(up: Upper, reason: str, note: Callable[[str], None]) -> None:
    up.release()
    up.mode, up.source, up.folder = statusfile.ROOT_VOLATILE, "tmpfs", ""
    up.fallback = f"{UPPER_KEY}={up.spec}: {reason}; a tmpfs upper serves instead"
    note(up.fallback)


def mount_tmpfs_upper(up: Upper, base_root: str) -> None:
    from agent import syscalls

    os.makedirs(up.mountpoint, exist_ok=True)
    size = f",size={up.spec.size}" if up.spec.size else ""
    syscalls.mount("oa-upper", up.mountpoint, "tmpfs", 0, "mode=0755" + size)
    up.mounted, up.folder = True, up.mountpoint
    make_dirs(up, base_root)


def mount_device_upper(up: Upper, device: RootSpec, wait: float, base_root: str) -> None:
    from agent import syscalls
    from agent.boot.rootdev import find_device, probe_filesystem, wait_for_device

    mountpoint = up.mountpoint
    node = find_device(device)
    if node is None:
        try:
            node = wait_for_device(device, wait)
        except BootError:
            raise UpperFailed(f"device did not appear within {wait:g} s") from None
    info = probe_filesystem(node)
    if info is None or info.fstype != UPPER_FSTYPE:
        found = "squashfs, which is read-only" if info else "no known filesystem"
        raise UpperFailed(f"{node}: {found} (an {UPPER_FSTYPE} filesystem is needed)")
    try:
        os.makedirs(mountpoint, exist_ok=True)
        syscalls.mount(node, mountpoint, UPPER_FSTYPE, 0)
    except OSError as exc:
        raise UpperFailed(f"mount {node} as {UPPER_FSTYPE}: {exc.strerror}") from None
    up.mode, up.source, up.mounted = statusfile.ROOT_PERSISTENT, node, True
    up.folder = mountpoint + up.spec.dir.rstrip("/")
    st = os.statvfs(mountpoint)
    if st.f_bavail * st.f_frsize < MIN_FREE or (st.f_files and not st.f_favail):
        raise UpperFailed(f"{node} is full ({st.f_bavail * st.f_frsize >> 10} KiB, "
                          f"{st.f_favail} inodes free)")
    try:
        make_dirs(up, base_root)
    except OSError as exc:
        full = " (full)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise UpperFailed(f"{exc.filename}: {exc.strerror}{full}") from None


def make_dirs(up: Upper, base_root: str) -> None:
    """upper/ and work/ under the folder, made on first use; upper/ takes the base root's
    owner and mode, since the overlay's root directory shows the upper's."""
    upper, work = up.dirs
    if not os.path.isdir(upper):
        os.makedirs(upper)
        st = os.stat(base_root)
        os.chown(upper, st.st_uid, st.st_gid)
        os.chmod(upper, stat.S_IMODE(st.st_mode))
    if os.path.lexists(work) and not os.path.isdir(work):
        os.unlink(work)
        up.repaired = f"{work}: not a directory; replaced"
    os.makedirs(work, exist_ok=True)


def remove_tree(path: str) -> None:
    """rm -r without shutil (its imports break the boot-path rule)."""
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, 0o700)    # overlayfs makes work/work with mode 0
        with os.scandir(path) as it:
            entries = list(it)
        for entry in entries:
            remove_tree(entry.path)
        os.rmdir(path)
    else:
        os.unlink(path)


def mount_writable(lowers: list[str], target: str, up: Upper,
                   note: Callable[[str], None]) -> str:
    """The overlay over `up`; a persistent upper whose work dir the kernel refuses is
    emptied and tried again, then gives way to a tmpfs. OSError when even that fails."""
    from agent.boot import overlay

    try:
        return overlay.mount_overlay(lowers, target, up.dirs)
    except OSError as exc:
        if up.mode != statusfile.ROOT_PERSISTENT:
            raise
        first = exc.strerror
    work = up.dirs[1]
    try:    # e.g. work/work/incompat/volatile after a crash, or a half-made index
        remove_tree(work)
        os.mkdir(work)
        api = overlay.mount_overlay(lowers, target, up.dirs)
        up.repaired = f"{work}: emptied after the overlay refused it ({first})"
        return api
    except OSError as exc:
        reason = f"overlay over {up.folder}: {exc.strerror}"
    fall_back(up, reason, note)
    mount_tmpfs_upper(up, lowers[-1])      # the base root is the lowest layer
    return overlay.mount_overlay(lowers, target, up.dirs)


def make_base_readonly(base: str) -> None:
    """Hook mode: the initramfs may have mounted the root read-write (`rw`); below the
    overlay it is read-only whatever the command line says. The filesystem itself when
    possible, else this mount (a writer elsewhere keeps the filesystem busy)."""
    from agent import syscalls

    try:
        syscalls.mount(None, base, None, syscalls.MS_REMOUNT | syscalls.MS_RDONLY)
    except OSError:
        syscalls.mount(None, base, None,
                       syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY)


def announce_root(up: Upper | None) -> None:
    """Say once, at boot, what kind of root this is (the journal keeps the kernel log)."""
    if up is None:
        announce("/ is read-only by design (no overlay_agent.upper=)")
        return
    up.measure()
    announce(up.describe())


def root_mode(up: Upper | None, overlaid: bool) -> str:
    return up.mode if up is not None and overlaid else statusfile.ROOT_READ_ONLY
