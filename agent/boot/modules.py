"""Load the kernel modules listed in modules.load with finit_module(2), in order.

The list is written by the initramfs builder with dependencies first. The kernel
decompresses .ko.xz/.ko.zst/.ko.gz itself when given MODULE_INIT_COMPRESSED_FILE
(CONFIG_MODULE_DECOMPRESS, Linux 5.17+).
"""

from __future__ import annotations

import errno
import os

from agent import syscalls
from agent.boot.layout import MODULES_LOAD
from agent.errors import BootError
from agent.values import Value

COMPRESSED_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz")


class ModulesReport(Value):
    __slots__ = ("already", "failed", "loaded")
    loaded: int
    already: int
    failed: tuple[str, ...]   # one line per module that could not be loaded

    def __init__(self, loaded: int, already: int, failed: tuple[str, ...] = ()) -> None:
        self._set(loaded=loaded, already=already, failed=tuple(failed))


def read_module_list(path: str = MODULES_LOAD) -> list[str]:
    """Absolute module paths, one a line; a missing list means no modules to load."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [line.strip() for line in fh]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise BootError(f"{path}: {exc.strerror}") from exc
    return [line for line in lines if line and not line.startswith("#")]


def load_module(path: str) -> bool:
    """finit_module one file; False when the kernel already has it (loaded or built in)."""
    flags = syscalls.MODULE_INIT_COMPRESSED_FILE if path.endswith(COMPRESSED_SUFFIXES) else 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BootError(f"kernel module {path}: {exc.strerror}") from exc
    try:
        syscalls.finit_module(fd, "", flags, path)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return False
        raise BootError(f"kernel module {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return True


def load_modules(list_path: str = MODULES_LOAD) -> ModulesReport:
    """Load every listed module; one that is missing or refused is reported, not fatal:
    the root may not need it (a missing loop module costs the extensions, recorded each),
    and when it does, mounting the root fails with its own line."""
    loaded = already = 0
    failed = []
    for path in read_module_list(list_path):
        try:
            if load_module(path):
                loaded += 1
            else:
                already += 1
        except BootError as exc:
            failed.append(str(exc))
    return ModulesReport(loaded, already, tuple(failed))
