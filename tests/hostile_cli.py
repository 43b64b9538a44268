"""The harness of the command-line corpus (tests/unit/test_hostile_*.py): each case runs
the real command line in a child under resource limits, RLIMIT_AS of 256 MiB and
RLIMIT_CPU of 10 s. Past either, the child dies (MemoryError, SIGXCPU) and the case fails:
the limits are stated by the test, not measured with a timer."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_AS = 256 << 20      # bytes of address space: memory bounded, not just slow to grow
MAX_CPU = 10            # seconds of CPU
# The limits are applied in the child before the agent is imported.
RUNNER = ("import resource, sys\n"
          f"resource.setrlimit(resource.RLIMIT_AS, ({MAX_AS}, {MAX_AS}))\n"
          f"resource.setrlimit(resource.RLIMIT_CPU, ({MAX_CPU}, {MAX_CPU}))\n"
          "from agent.cli import main\n"
          "sys.exit(main(sys.argv[1:]))\n")
HANG_GUARD = 120        # wall seconds: only so a regression cannot hang the suite


@dataclass
class Case:
    make: Callable[[Path], list[str]]   # writes the inputs under tmp, returns the arguments
    code: int
    err: str                            # exact stderr; {tmp} is the case's folder
    out: str = ""                       # exact stdout
    env: dict[str, str] | None = None
    lines: int = -1                     # stdout lines, where a forged one must not appear
    after: Callable[[Path], None] | None = None   # more checks of what is left under tmp


def glob_match(text: str, pattern: str) -> bool:
    """`*` in `pattern` stands for any run of characters on one line, `**` for any text."""
    if "**" in pattern:
        head, _, tail = pattern.partition("**")
        return glob_match(text[:len(head)], head) and any(
            glob_match(text[i:], tail) for i in range(len(head), len(text) + 1))
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return text == pattern
    if not text.startswith(pieces[0]) or not text.endswith(pieces[-1]):
        return False
    at = len(pieces[0])
    for piece in pieces[1:-1]:
        found = text.find(piece, at)
        if found < 0 or "\n" in text[at:found]:
            return False
        at = found + len(piece)
    return "\n" not in text[at:len(text) - len(pieces[-1])] if pieces[-1] else True


def run_limited(argv: list[str], cwd: Path, env: dict[str, str] | None = None,
                ) -> subprocess.CompletedProcess[str]:
    """The command line in a child under RLIMIT_AS and RLIMIT_CPU."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-c", RUNNER, *argv], capture_output=True,
                          text=True, errors="surrogateescape", cwd=cwd, env=full_env,
                          timeout=HANG_GUARD)


def check(case: Case, tmp_path: Path) -> None:
    """Run `case` in a child under the limits; exact exit status, stdout and stderr, and
    no traceback."""
    argv = case.make(tmp_path)
    proc = run_limited(argv, tmp_path, case.env)
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode} (over a limit?)"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == case.code, (proc.returncode, proc.stdout[-500:], proc.stderr)
    tmp = str(tmp_path)
    assert glob_match(proc.stderr, case.err.replace("{tmp}", tmp)), proc.stderr
    assert glob_match(proc.stdout, case.out.replace("{tmp}", tmp)), proc.stdout[-2000:]
    if case.lines >= 0:
        assert len(proc.stdout.splitlines()) == case.lines, proc.stdout
    if case.after is not None:
        case.after(tmp_path)
