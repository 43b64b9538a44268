"""Check extension images (size, sha256) in background threads, one per core.

A layer with a dm-verity hash tree, on a kernel with dm-verity, is not hashed here: the
kernel checks its blocks as they are read (agent.boot.verity). Store images are opened
once their store is mounted (agent.boot.store).

Verification needs nothing but the initramfs, so PID 1 starts it before loading kernel
modules and waiting for the root device, and hashing overlaps both; the mounts later wait
only for the layers not yet checked. OpenSSL's sha256 drops the GIL while it hashes, so the
threads really run in parallel.
"""

from __future__ import annotations

import _thread
import errno
import os

from agent.boot.workers import share_out
from agent.files import open_regular
from agent.listfile import Layer
from agent.statusfile import CHECK_NONE, CHECK_SHA256

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

CHUNK = 1 << 20    # per read; one buffer per thread (a 1 MiB layer in one read)
# Below this many bytes to hash in all, the interpreter's built-in sha256 (~0.2 GB/s here)
# beats loading OpenSSL's libcrypto (~3 ms, far more under emulation) for its ~1.8 GB/s.
SMALL_HASH_TOTAL = 512 << 10


class LayerFailed(Exception):
    """One layer failed a check or a mount; the message is its recorded reason."""


class Candidate:
    """A layer past the skip check, its image open until verified and mounted.

    `checked` is held until the size and sha256 checks are done (with `error` set if
    they failed); whoever mounts the layer waits on it.
    """

    __slots__ = ("check", "checked", "device", "entry", "error", "fd", "index", "loop", "path",
                 "size", "staging", "strict")

    def __init__(self, index: int, entry: Layer, path: str) -> None:
        self.index, self.entry, self.path = index, entry, path
        self.fd = -1
        self.size = 0
        self.error = ""
        self.staging = ""     # set once mounted
        self.check = CHECK_NONE   # statusfile.CHECKS, chosen by start_checks
        self.device = ""      # the dm-verity device's name, once made
        self.strict = False   # overlay_agent.strict: verity corruption is fatal
        self.loop = ""        # its loop device, once mounted
        self.checked = _thread.allocate_lock()
        self.checked.acquire()

    def wait_checked(self) -> None:
        with self.checked:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_candidate(cand: Candidate) -> None:
    """Open the image and check its size (cheap, before any hashing starts); a store
    image waits for its store to be mounted (agent.boot.store opens it)."""
    if not cand.entry.store:
        open_image(cand)


def open_image(cand: Candidate) -> None:
    """Open an image: a regular file, not through a final symlink, never blocking on a
    fifo (agent.files)."""
    try:
        cand.fd, cand.size = open_regular(cand.path, size=cand.entry.size)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EACCES, errno.EPERM):
            raise LayerFailed(f"cannot open {cand.path}: {exc.strerror}") from None
        raise LayerFailed(f"{cand.path}: {exc.strerror}") from None


def sha256_constructor(total: int) -> Callable[[], Any]:
    """The quickest sha256 for `total` bytes: built-in when small, else OpenSSL's (without
    the hashlib module around it, another ~1 ms), which drops the GIL while hashing."""
    if total >= SMALL_HASH_TOTAL:
        try:
            from _hashlib import openssl_sha256
            return openssl_sha256
        except ImportError:
            pass
    try:
        from _sha2 import sha256  # Python 3.12+
    except ImportError:
        try:
            from _sha256 import sha256  # Python 3.11
        except ImportError:
            from hashlib import sha256
    constructor: Callable[[], Any] = sha256
    return constructor


def hash_fd(fd: int, path: str, sha256: Callable[[], Any], buf: bytearray) -> str:
    """sha256 by positioned reads into `buf`."""
    digest = sha256()
    view = memoryview(buf)
    offset = 0
    try:
        while (n := os.preadv(fd, [buf], offset)) > 0:
            digest.update(view[:n])
            offset += n
    except OSError as exc:
        raise LayerFailed(f"cannot read {path}: {exc.strerror}") from None
    hexdigest: str = digest.hexdigest()
    return hexdigest


def check_digest(cand: Candidate, digest: str) -> None:
    want = cand.entry.sha256.lower()
    if digest != want:
        raise LayerFailed(f"{cand.path}: sha256 {digest[:16]}..., the list says {want[:16]}...")


def check_one(cand: Candidate, sha256: Callable[[], Any], buf: bytearray) -> None:
    """The sha256 check of one opened candidate; the outcome lands on `cand`."""
    try:
        check_digest(cand, hash_fd(cand.fd, cand.path, sha256, buf))
    except LayerFailed as exc:
        cand.error = str(exc)
    except Exception as exc:  # a worker thread must not lose a layer silently
        cand.error = f"{type(exc).__name__}: {exc}"
    finally:
        cand.checked.release()


def start_checks(cands: list[Candidate], strict: bool = False) -> None:
    """Choose each candidate's check, and run the sha256 ones in list order on one thread
    per core; returns at once. Store images not opened yet are checked once they are."""
    from agent.boot import verity

    has_verity = any(c.entry.verity is not None for c in cands) and verity.kernel_has_verity()
    todo = []
    for cand in cands:
        cand.check = verity.choose_check(cand.entry, has_verity)
        cand.strict = strict
        if cand.entry.store:
            continue                  # agent.boot.store opens and checks it
        if cand.check == CHECK_SHA256:
            todo.append(cand)
        else:
            cand.checked.release()    # nothing to check now
    if not todo:
        return
    sha256 = sha256_constructor(sum(c.size for c in todo))

    def work(take: Callable[[], Candidate | None]) -> None:
        buf = bytearray(CHUNK)
        while (cand := take()) is not None:
            check_one(cand, sha256, buf)

    share_out(todo, min(len(todo), len(os.sched_getaffinity(0))), work, wait=False)
