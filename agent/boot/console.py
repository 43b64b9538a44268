"""PID 1's voice: one-line messages to the console and the kernel log, and the fatal path.

PID 1 must never exit: the kernel would panic with "Attempted to kill init" after
Python printed a traceback. fatal() prints one line and follows panic= instead.
"""

from __future__ import annotations

import os
import sys
import time

from agent import syscalls
from agent.boot.layout import CONSOLE, KMSG
from agent.escape import escape

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

TAG = "overlay-agent"
KERN_CRIT = 2
KERN_WARNING = 4
KERN_INFO = 6


def _write(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.write(fd, data)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def to_kmsg(message: str, level: int = KERN_INFO) -> None:
    """Also record the line in the kernel log (dmesg), when /dev is mounted."""
    _write(KMSG, f"<{level}>{TAG}: {message}\n".encode(errors="replace"))


def say(message: str, *, quiet: bool = False, level: int = KERN_INFO) -> None:
    """One line `overlay-agent: message` on stdout (the console) and in the kernel log."""
    message = escape(message)
    if not quiet:
        try:
            print(f"{TAG}: {message}", flush=True)
        except (OSError, ValueError):
            _write(CONSOLE, f"{TAG}: {message}\n".encode(errors="replace"))
    to_kmsg(message, level)


def fatal_line(reason: str) -> str:
    return f"{TAG}: fatal: {reason}"


def format_traceback(exc: BaseException) -> str:
    """traceback is imported only with overlay_agent.debug (main preloads it: after
    switch_root deleted the initramfs nothing new can be imported)."""
    try:
        import traceback
    except ImportError:
        return f"{type(exc).__name__}: {exc} (traceback module unavailable)\n"
    return "".join(traceback.format_exception(exc))


def fatal(reason: str, *, panic: int = 0, exc: BaseException | None = None,
          debug: bool = False) -> NoReturn:
    """Report a fatal boot error once, then follow panic= (reboot after N s, at once, or hang)."""
    if debug and exc is not None:
        text = format_traceback(exc)
        if not _write(CONSOLE, text.encode(errors="replace")):
            print(text, file=sys.stderr)
    reason = escape(" ".join(reason.split()))
    line = fatal_line(reason)
    if not _write(CONSOLE, (line + "\n").encode(errors="replace")):
        print(line, file=sys.stderr, flush=True)
    to_kmsg(f"fatal: {reason}", KERN_CRIT)
    follow_panic(panic)


def follow_panic(panic: int) -> NoReturn:
    """panic=N: N>0 reboot after N seconds, N<0 reboot at once, 0 hang forever."""
    while True:
        try:
            if panic != 0:
                if panic > 0:
                    _write(CONSOLE, f"{TAG}: rebooting in {panic} s\n".encode())
                    time.sleep(panic)
                syscalls.sync()
                syscalls.reboot(syscalls.RB_AUTOBOOT)
            time.sleep(3600)
        except BaseException:  # PID 1 must survive anything, even a failed reboot
            panic = 0
