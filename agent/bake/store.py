"""The image store: extension images kept in a folder on a disk filesystem the boot can
reach (the boot partition or the root filesystem) instead of inside the initramfs.

Images are named by content (`SHA256.sqsh`), so the images of an old and a new initramfs
sit side by side through an upgrade; the initramfs keeps only the list, which names the
store's filesystem by UUID and each image by its path inside that filesystem. A lock file
keeps `build` (images written, initramfs not yet) and `gc` apart.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent import listfile
from agent.errors import AgentError, BuildError, UsageError
from agent.output import write_atomically
from agent.tools import run

LOCK_NAME = ".overlay-agent.lock"
# KEY=VALUE lines of the store setting, named after build's --store, --store-uuid, --store-path
SETTING_KEYS = ("STORE", "STORE_UUID", "STORE_PATH")
IMAGE_NAME = re.compile(r"^[0-9a-f]{64}\.sqsh$")
BOOT_DIR = Path("/boot")
# initramfs formats the kernel unpacks: cpio "0707", gzip, xz, zstd, lz4 legacy
INITRAMFS_MAGICS = (b"0707", b"\x1f\x8b", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd", b"\x02\x21\x4c\x18")


@dataclass(frozen=True)
class Store:
    folder: Path          # where images are written on this machine
    uuid: str             # the store filesystem's UUID, as the list names it
    prefix: str           # `folder` inside that filesystem ("" at its top)


def image_name(sha256: str) -> str:
    return f"{sha256}.sqsh"


def find_filesystem(folder: Path) -> tuple[str, str, str]:
    """(mount point, UUID, fstype) of the filesystem holding `folder`, from findmnt."""
    import shlex

    proc = run(["findmnt", "-n", "-P", "-o", "TARGET,UUID,FSTYPE", "--target", folder],
               capture=True, check=False)
    pairs = dict(word.split("=", 1) for word in shlex.split(
        proc.stdout.decode(errors="replace").splitlines()[0] if proc.stdout else "")
        if "=" in word)
    if proc.returncode != 0 or "TARGET" not in pairs:
        raise UsageError(f"--store {folder}: cannot tell its filesystem (findmnt); "
                         "give --store-uuid and --store-path")
    return pairs["TARGET"], pairs.get("UUID", ""), pairs.get("FSTYPE", "")


def locate_store(folder: Path, uuid: str | None = None, prefix: str | None = None) -> Store:
    """The store at `folder`; `uuid`/`prefix` override what findmnt says (a folder that
    becomes a filesystem image later, or a disk mounted elsewhere at boot)."""
    if not folder.is_dir():
        raise UsageError(f"--store {folder}: not a folder")
    if uuid is None or prefix is None:
        mount, found_uuid, fstype = find_filesystem(folder)
        if uuid is None:
            if not found_uuid:
                raise UsageError(f"--store {folder}: its filesystem ({fstype}) has no UUID; "
                                 "give --store-uuid")
            uuid = found_uuid
        if prefix is None:
            prefix = os.path.relpath(folder.resolve(), mount)
    prefix = "" if prefix in (".", "/") else prefix.strip("/")
    try:
        listfile.check_store_path(f"{prefix}/x" if prefix else "x", "--store-path")
    except AgentError as exc:
        raise UsageError(str(exc)) from None
    return Store(folder, uuid, prefix)


MAX_SETTING = 64 << 10      # bytes of the store setting: a few KEY=VALUE lines


def read_setting(path: Path) -> dict[str, str]:
    """The store setting the initramfs hooks read: `KEY=VALUE` lines (SETTING_KEYS; `#`
    comments, blank lines, a value optionally in quotes, as in /etc/default files). A missing
    file or an empty STORE: no store. Every problem in one UsageError, each naming its line."""
    from agent.files import read_regular

    try:   # a regular file of a bounded size: never a fifo to block on, nor /dev/zero
        text = read_regular(str(path), MAX_SETTING, follow=True).decode(errors="replace")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    values: dict[str, str] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if not sep or key not in SETTING_KEYS:
            problems.append(f"{path}:{number}: {line[:80]!r}: not KEY=VALUE with KEY one of "
                            f"{', '.join(SETTING_KEYS)}")
        elif key in values:
            problems.append(f"{path}:{number}: {key} set twice")
        else:
            values[key] = value
    if problems:
        raise UsageError("; ".join(problems))
    if not values.get("STORE"):
        if values.get("STORE_UUID") or values.get("STORE_PATH"):
            raise UsageError(f"{path}: STORE_UUID and STORE_PATH need STORE=DIR")
        return {}
    if not values["STORE"].startswith("/"):    # the hooks run from whatever folder
        raise UsageError(f"{path}: STORE={values['STORE']!r}: not an absolute path")
    return values


def setting_store(path: Path) -> Store | None:
    """The store the setting at `path` names (locate_store), or None for none."""
    values = read_setting(path)
    if not values:
        return None
    try:
        return locate_store(Path(values["STORE"]), values.get("STORE_UUID") or None,
                            values.get("STORE_PATH") or None)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the store's lock (flock, released however the process ends). The lock file is
    a regular file or nothing yet: a link, fifo or device under its name is not opened
    (opening a device node can itself do something)."""
    from agent.files import file_kind

    path = folder / LOCK_NAME
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{file_kind(st.st_mode)}, not a regular file")
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise BuildError(f"{path}: cannot open the store lock: {exc.strerror}") from None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise BuildError(f"{path}: cannot open the store lock: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def put_image(store: Store, image: Path, layer: listfile.Layer) -> listfile.Layer:
    """Copy `image` into the store under its content name (kept when already there) and
    return the layer naming it there."""
    if layer.verity is None:
        raise BuildError(f"{layer.image}: a store image needs a verity hash tree")
    name = image_name(layer.sha256)
    dest = store.folder / name
    if not (dest.is_file() and dest.stat().st_size == layer.size):
        def write(out: BinaryIO) -> None:
            with image.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)

        write_atomically(dest, write)
    path = f"{store.prefix}/{name}" if store.prefix else name
    return layer.replace(store=store.uuid, path=path)


# ---------------------------------------------------------------- gc

def looks_like_initramfs(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(6)
    except OSError:
        return False
    return head.startswith(INITRAMFS_MAGICS)


def boot_initramfs_files(boot: Path = BOOT_DIR) -> list[Path]:
    """Every file directly under /boot that starts like an initramfs (names vary by distro)."""
    try:
        entries = sorted(boot.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_file() and not p.is_symlink() and looks_like_initramfs(p)]


def list_of_initramfs(path: Path) -> tuple[listfile.Layer, ...]:
    """The layers an initramfs lists (none when it has no list), read as `inspect` reads it
    (a regular file, streamed, memory bounded); AgentError when it cannot be read: gc then
    refuses to remove anything."""
    from agent.bake.inspect import inspect_initramfs

    try:
        return tuple(report.layer for report in inspect_initramfs(path).layers)
    except AgentError as exc:
        raise BuildError(f"{exc}; nothing removed") from None


def running_list(path: Path) -> tuple[listfile.Layer, ...]:
    """The running system's list (none when there is none), read with the list's bounds."""
    from agent.files import read_regular

    try:
        data = read_regular(str(path), listfile.MAX_LIST_BYTES, follow=True)
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise BuildError(f"{path}: cannot read: {exc.strerror}; nothing removed") from None
    try:
        return listfile.read_list(listfile.decode_list(data, str(path)), str(path))
    except AgentError as exc:
        raise BuildError(f"{exc}; nothing removed") from None


def referenced_names(initramfs: Sequence[Path], running: Path | None) -> set[str]:
    """Content names of store images that any given initramfs, or the running system's
    list, refers to (whatever the store UUID: keeping too much is the safe side)."""
    lists = [list_of_initramfs(p) for p in initramfs]
    if running is not None:
        lists.append(running_list(running))
    return {os.path.basename(layer.path) for layers in lists for layer in layers if layer.store}


def collect_garbage(folder: Path, initramfs: Sequence[Path] | None = None,
                    running_list: Path | None = Path(listfile.BOUND_LIST_PATH)) -> list[str]:
    """Remove store images no initramfs (default: those under /boot) and not the running
    system refers to; return their names. Under the store lock, so no build is between
    writing its images and its initramfs; each removal is one unlink."""
    if not folder.is_dir():
        raise UsageError(f"--store {folder}: not a folder")
    files = list(initramfs) if initramfs is not None else boot_initramfs_files()
    with locked(folder):
        keep = referenced_names(files, running_list)
        removed = []
        for entry in sorted(folder.iterdir()):
            # only what build writes: a regular file under a content name (a link, a fifo
            # or a folder under such a name is not ours to remove)
            if IMAGE_NAME.fullmatch(entry.name) and entry.name not in keep and \
                    stat.S_ISREG(entry.lstat().st_mode):
                entry.unlink()
                removed.append(entry.name)
    return removed
