"""The demo root: a small immutable root (squashfs) with busybox, the same Python runtime and
agent as the initramfs, and a /sbin/init that reports and powers off."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from agent import cpio
from agent.errors import BuildError
from agent.initramfs.build import canonicalize, write_tree
from agent.initramfs.pyruntime import AGENT_LIB, PYTHON_LINK, build_runtime
from agent.kernels import SUITES
from agent.output import source_date_epoch
from agent.tools import run, which
from devtools.qemu import TOKEN_KEY

MARKER = "DEMO-ROOT-OK"
DONE_MARKER = "DEMO-ROOT-DONE"
DIRECTORIES = ("proc", "sys", "dev", "run", "tmp", "etc", "lib/firmware", "lib/modules",
               "root", "var")

CLI_WRAPPER = f"""#!{PYTHON_LINK} -IS
import sys
sys.path.insert(0, "{AGENT_LIB}")
from agent.cli import main
sys.exit(main())
"""

OS_RELEASE = """PRETTY_NAME="overlay-agent demo root"
NAME="overlay-agent demo"
ID=overlay-agent-demo
VERSION_ID=1.0
"""


RELEASES = {"bookworm": "Debian 12", "trixie": "Debian 13"}


def host_suite(os_release: Path = Path("/etc/os-release")) -> str | None:
    """The host's Debian codename, when it is one we fetch kernels for."""
    try:
        lines = os_release.read_text().splitlines()
    except OSError:
        return None
    fields = dict(line.split("=", 1) for line in lines if "=" in line)
    codename = fields.get("VERSION_CODENAME", "").strip('"')
    return codename if codename in SUITES else None


def default_suites(host: str | None) -> list[str]:
    """Every suite, the host's own first."""
    return sorted(SUITES, key=lambda s: s != host)


def describe(suite: str, release: str) -> str:
    """e.g. `bookworm (Debian 12, Linux 6.1.0-41-amd64)`."""
    return f"{suite} ({RELEASES.get(suite, 'Debian')}, Linux {release})"


def render_init(extra_init: str = "") -> str:
    """/sbin/init: mount what is missing, print the marker with the token from the kernel
    command line, list extensions, run `extra_init`, power off."""
    return f"""#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
[ -e /proc/mounts ] || mount -t proc proc /proc
mounted() {{ grep -q " $1 " /proc/mounts; }}
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev
mounted /run || mount -t tmpfs -o mode=0755 tmpfs /run
mounted /tmp || mount -t tmpfs tmpfs /tmp
[ -c /dev/console ] && exec >/dev/console 2>&1 </dev/null
hostname -F /etc/hostname
token=""
for word in $(cat /proc/cmdline); do
  case "$word" in {TOKEN_KEY}=*) token="${{word#*=}}" ;; esac
done
echo "{MARKER} $token"
echo "kernel: Linux $(uname -r)"
overlay-agent get extensions || echo "overlay-agent get extensions: exit status $?"
{extra_init}
echo "{DONE_MARKER} $token"
sync
poweroff -f
"""


def busybox_entries(busybox: Path, mtime: int, taken: set[str]) -> list[cpio.Entry]:
    """busybox as /bin/busybox plus one symlink per applet at its usual path."""
    listing = run([busybox, "--list-full"], capture=True).stdout.decode().split()
    entries = [cpio.regular("bin/busybox", busybox, 0o755, mtime)]
    for applet in sorted(set(listing)):
        if applet not in taken and applet != "bin/busybox":
            entries.append(cpio.symlink(applet, "/bin/busybox", mtime))
    return entries


def demo_entries(extra_init: str = "", mtime: int | None = None) -> list[cpio.Entry]:
    when = source_date_epoch() if mtime is None else mtime
    entries = list(build_runtime(mtime=when).entries)
    own = [
        cpio.regular("sbin/init", render_init(extra_init).encode(), 0o755, when),
        cpio.regular("usr/bin/overlay-agent", CLI_WRAPPER.encode(), 0o755, when),
        cpio.regular("etc/os-release", OS_RELEASE.encode(), 0o644, when),
        cpio.regular("etc/hostname", b"overlay-agent-demo\n", 0o644, when),
        *[cpio.directory(d, 0o755, when) for d in DIRECTORIES],
    ]
    taken = {e.name for e in entries + own}
    busybox = Path(os.path.realpath(which("busybox")))
    return cpio.with_parents(canonicalize([*entries, *busybox_entries(busybox, when, taken),
                                           *own]), when)


def build_demo_root(out: Path, *, extra_init: str = "") -> Path:
    """Write the demo root squashfs at `out` (reproducible, owned by root, atomic)."""
    when = source_date_epoch()
    entries = demo_entries(extra_init, when)
    if any(stat.S_ISCHR(e.mode) or stat.S_ISBLK(e.mode) for e in entries):
        raise BuildError("demo root: device nodes belong in devtmpfs, not the image")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tree = Path(tmp) / "root"
        tree.mkdir()
        write_tree(entries, tree)
        tmp_out.unlink(missing_ok=True)
        run(["mksquashfs", tree, tmp_out, "-all-root", "-noappend", "-quiet", "-no-progress",
             "-comp", "zstd", "-reproducible", "-mkfs-time", str(when),
             "-all-time", str(when), "-processors", "1"],
            # mksquashfs refuses SOURCE_DATE_EPOCH together with explicit times
            env={k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"})
    with open(tmp_out, "rb") as f:
        os.fsync(f.fileno())
    tmp_out.replace(out)
    return out

