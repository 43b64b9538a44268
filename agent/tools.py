"""The one way external tools are run: every command line is logged before it starts."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent.errors import ToolError


def log_command(event: str, args: list[str]) -> None:
    # structlog loads on the first command, not with the CLI parser (runtime size)
    from agent.log import get_logger

    get_logger("overlay_agent.tools").info(event, command=shlex.join(args))


def which(tool: str) -> str:
    """Return the path of `tool` or raise ToolError naming the Debian package to install."""
    found = shutil.which(tool)
    if found is None:
        raise ToolError(f"{tool}: not found on PATH (install the Debian package that provides it)")
    return found


def start(argv: Sequence[str | Path]) -> subprocess.Popen[bytes]:
    """Start an external tool that streams: stdin, stdout and stderr are pipes. Logged as
    run() logs; the caller waits for it and judges its exit status."""
    args = [str(a) for a in argv]
    log_command("start", args)
    try:
        return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise ToolError(f"{args[0]}: not found (install the Debian package that provides it)")


def run(
    argv: Sequence[str | Path],
    *,
    check: bool = True,
    capture: bool = False,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run an external tool; raise ToolError (with its stderr's last line) when it fails."""
    args = [str(a) for a in argv]
    log_command("run", args)
    try:
        proc = subprocess.run(
            args,
            input=input,
            env=None if env is None else dict(env),
            cwd=cwd,
            timeout=timeout,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE,
            check=False,
        )
    except FileNotFoundError:
        raise ToolError(f"{args[0]}: not found (install the Debian package that provides it)")
    except subprocess.TimeoutExpired:
        raise ToolError(f"{args[0]}: timed out after {timeout} s")
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        last = err[-1] if err else "no error output"
        raise ToolError(f"{shlex.join(args[:3])}{' ...' if len(args) > 3 else ''}: "
                        f"exit status {proc.returncode}: {last}")
    return proc
