"""`make test` and `make demo` leave the machine as they found it: no socket of ours
listening, no unit of ours enabled or running, nothing of ours in the system's temporary
folder, no mount or loop device left.

    python -m devtools.leftovers snapshot FILE   # before: what is there already
    python -m devtools.leftovers check FILE      # after: one line per thing left; exit 1

Only what appeared in between counts: a registry service the administrator runs, or a loop
device of theirs, is not ours to judge. Mounts are read in the caller's mount namespace (the
host's, outside `unshare`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
UNITS = ("docker-registry.service", "overlay-agent-status.service")
PROGRAMS = ("docker-registry", "qemu-system-x86_64", "skopeo")   # what the tests start
TEMP_PREFIXES = ("overlay-agent-", "pytest-of-")   # ours, and pytest's own


@dataclass(frozen=True)
class State:
    listeners: frozenset[str] = frozenset()
    units: frozenset[str] = frozenset()
    temp: frozenset[str] = frozenset()
    mounts: frozenset[str] = frozenset()
    loops: frozenset[str] = frozenset()


KINDS = {"listeners": "socket listening", "units": "unit", "temp": "in the temporary folder",
         "mounts": "mount", "loops": "loop device"}


def ours(pid: int) -> str | None:
    """The process's name when it is one the tests or the demo start, else None."""
    try:
        proc = psutil.Process(pid)
        name, cmdline = proc.name(), " ".join(proc.cmdline())
    except psutil.Error:
        return None
    return name if name in PROGRAMS or str(ROOT) in cmdline else None


def find_listeners() -> frozenset[str]:
    found = set()
    for conn in psutil.net_connections("inet"):
        listening = (conn.status == psutil.CONN_LISTEN if conn.type == socket.SOCK_STREAM
                     else bool(conn.laddr))
        name = ours(conn.pid) if listening and conn.pid else None
        if name is not None and conn.laddr:
            found.add(f"{name} (pid {conn.pid}) on {conn.laddr.ip}:{conn.laddr.port}")
    return frozenset(found)


def find_units() -> frozenset[str]:
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return frozenset()
    found = set()
    running = Path("/run/systemd/system").is_dir()
    for unit in UNITS:
        for verb in ("is-enabled", "is-active") if running else ("is-enabled",):
            if subprocess.run([systemctl, verb, "--quiet", unit], capture_output=True,
                              check=False).returncode == 0:
                found.add(f"{unit} {verb[3:]}")
    return frozenset(found)


def find_temp() -> frozenset[str]:
    folder = Path(tempfile.gettempdir())
    return frozenset(str(p) for prefix in TEMP_PREFIXES for p in folder.glob(f"{prefix}*"))


def find_mounts() -> frozenset[str]:
    found = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        own, _, rest = line.partition(" - ")
        fstype, source = [*rest.split(), "", ""][:2]
        found.add(f"{own.split()[4]} ({fstype} from {source})")
    return frozenset(found)


def find_loops() -> frozenset[str]:
    found = set()
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        found.add(f"/dev/{backing.parts[-3]} on {backing.read_text().strip()}")
    return frozenset(found)


def snapshot() -> State:
    return State(find_listeners(), find_units(), find_temp(), find_mounts(), find_loops())


def printable(text: str) -> str:
    """File and mount names as the terminal may show them."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def left_behind(before: State, after: State) -> list[str]:
    """One line per thing present after and not before, by kind, sorted."""
    return [f"{KINDS[f.name]}: {printable(item)}" for f in fields(State)
            for item in sorted(getattr(after, f.name) - getattr(before, f.name))]


def save(state: State, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: sorted(v) for k, v in asdict(state).items()}, indent=1))


def load(path: Path) -> State:
    data = json.loads(path.read_text())
    return State(**{f.name: frozenset(data.get(f.name, ())) for f in fields(State)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.leftovers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("snapshot", "check"))
    ap.add_argument("file", type=Path, help="where the snapshot before is kept")
    args = ap.parse_args(argv)
    if args.action == "snapshot":
        save(snapshot(), args.file)
        return 0
    try:
        before = load(args.file)
    except (OSError, ValueError, TypeError) as exc:
        print(f"leftovers: {args.file}: no usable snapshot: {exc}", file=sys.stderr)
        return 1
    found = left_behind(before, snapshot())
    for line in found:
        print(f"leftovers: left behind: {line}", file=sys.stderr)
    if not found:
        print("leftovers: none (no socket, unit, temporary file, mount or loop device of ours)")
    os.unlink(args.file)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
