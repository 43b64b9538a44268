"""PID 1 of the initramfs: a short flat list of named steps, then switch_root.

PID 1 never exits: any failure ends in console.fatal(), which follows panic=. Imports
follow the boot-path rule of agent/boot/__init__.py.
"""

from __future__ import annotations

import time

from agent.boot.activate import (
    Activation,
    finish_activation,
    settings_from_params,
    start_activation,
)
from agent.boot.cmdline import BootParams, parse_cmdline, scan_cmdline
from agent.boot.console import fatal, say
from agent.boot.early import mount_api_filesystems
from agent.boot.layout import BASE_ROOT, CMDLINE, SYSROOT, UPTIME
from agent.boot.modules import load_modules
from agent.boot.rootfs import mount_root
from agent.boot.switchroot import check_init, switch_root
from agent.errors import BootError
from agent.values import Undo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn, TypeVar

    T = TypeVar("T")


class StepTimer:
    """Runs named steps, records their duration, and gives unexpected errors context."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.steps: list[tuple[str, float]] = []

    def run(self, name: str, func: Callable[..., T], *args: object) -> T:
        begin = time.monotonic()
        try:
            return func(*args)
        except BootError:
            raise
        except Exception as exc:
            raise BootError(f"{name}: {describe(exc)}") from exc
        finally:
            self.steps.append((name, time.monotonic() - begin))

    def summary(self, init: str) -> str:
        uptime = read_uptime()
        loaded = uptime - (time.monotonic() - self.started)
        steps = ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in self.steps)
        return f"exec {init} (uptime {uptime:.2f} s; agent loaded {loaded:.2f} s; {steps})"


def describe(exc: BaseException) -> str:
    """One line for any exception (the fatal path never shows a bare traceback)."""
    if isinstance(exc, BootError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    text = str(exc)
    return f"unexpected {type(exc).__name__}" + (f": {text}" if text else "")


def read_uptime() -> float:
    """Bytes, not text: after switch_root no codec module can be imported any more."""
    try:
        with open(UPTIME, "rb") as fh:
            return float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def read_cmdline() -> str:
    with open(CMDLINE, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def verify_extensions(params: BootParams) -> Activation:
    """Open the extension images and start their sha256 checks in the background: they
    need only the initramfs, so hashing overlaps module loading and the root device wait."""
    return start_activation(settings_from_params(params))


def boot(timer: StepTimer) -> NoReturn:
    raw = ""
    params: BootParams | None = None
    try:
        # /proc /sys /dev /run stay mounted on failure: the fatal path writes to /dev/kmsg.
        timer.run("early", mount_api_filesystems, None)
        with Undo() as undo:
            raw = read_cmdline()
            params = timer.run("cmdline", parse_cmdline, raw)
            if params.debug:
                import traceback  # noqa: F401 - loaded now, while the initramfs still exists
            for note in params.notes:
                say(note, quiet=params.quiet)
            checks = timer.run("verify", verify_extensions, params)
            modules = timer.run("modules", load_modules)
            for problem in modules.failed:   # recorded in the status; fatal only if strict
                checks.note(problem)
            root = timer.run("root", mount_root, params, BASE_ROOT, undo)
            say(f"root {root.source} ({root.fstype}) mounted read-only", quiet=params.quiet)
            newroot = timer.run("extensions", finish_activation, checks, BASE_ROOT, SYSROOT)
            timer.run("check-init", check_init, newroot, params.init)
            undo.pop_all()  # from here on the mounts belong to the new root
        init, quiet = params.init, params.quiet
        switch_root(newroot, init, params.init_args,
                    lambda: say(timer.summary(init), quiet=quiet))
    except BaseException as exc:  # PID 1 must never exit
        if params is None:      # panic= and debug still count when another key is bad
            params = scan_cmdline(raw)
        fatal(describe(exc), panic=params.panic, exc=exc, debug=params.debug)


def main() -> NoReturn:
    try:
        boot(StepTimer())
    except BaseException as exc:  # last resort: fatal() itself failed
        fatal(describe(exc))
