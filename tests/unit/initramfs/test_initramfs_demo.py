"""The demo root squashfs: busybox, the agent's runtime, the CLI wrapper and /sbin/init."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from devtools.demo import MARKER, build_demo_root, default_suites, describe, host_suite, render_init


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_root(tmp_path_factory.mktemp("demo") / "root.sqsh",
                           extra_init="echo EXTRA-LINE")


@pytest.fixture(scope="module")
def listing(image: Path) -> dict[str, tuple[str, str]]:
    out = image
    text = subprocess.run(["unsquashfs", "-lls", str(out)], capture_output=True, text=True,
                          check=True).stdout
    found: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        m = re.match(r"(\S+) (\S+) .* squashfs-root(/\S*)(?: -> (\S+))?$", line)
        if m:
            found[m.group(3) or "/"] = (m.group(1) + " " + m.group(2), m.group(4) or "")
    return found


@pytest.mark.parametrize("path, kind", [
    ("/sbin/init", "-rwxr-xr-x root/root"),
    ("/bin/busybox", "-rwxr-xr-x root/root"),
    ("/usr/bin/overlay-agent", "-rwxr-xr-x root/root"),
    ("/usr/lib/overlay-agent/agent/cli.pyc", "-rw-r--r-- root/root"),
    ("/etc/os-release", "-rw-r--r-- root/root"),
    ("/etc/hostname", "-rw-r--r-- root/root"),
    ("/proc", "drwxr-xr-x root/root"),
    ("/dev", "drwxr-xr-x root/root"),
    ("/usr/lib/firmware", "drwxr-xr-x root/root"),
    ("/usr/lib/modules", "drwxr-xr-x root/root"),
])
def test_demo_root_holds(listing: dict[str, tuple[str, str]], path: str, kind: str) -> None:
    assert listing[path][0] == kind


def test_applets_point_at_busybox_and_init_is_the_script(
        listing: dict[str, tuple[str, str]]) -> None:
    assert listing["/bin/sh"][1] == "/bin/busybox"
    assert listing["/sbin/poweroff"][1] == "/bin/busybox"
    assert listing["/usr/bin/python3"][1].startswith("python3")
    assert listing["/lib"][1] == "usr/lib"


def test_init_prints_the_token_marker_and_extra_lines() -> None:
    script = render_init("echo EXTRA-LINE")
    assert script.startswith("#!/bin/sh\n")
    assert f'echo "{MARKER} $token"' in script
    assert script.index("echo EXTRA-LINE") < script.index("poweroff -f")
    proc = subprocess.run(["busybox", "sh", "-n", "-c", script], capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_same_inputs_give_the_same_image(image: Path, tmp_path: Path) -> None:
    again = build_demo_root(tmp_path / "again.sqsh", extra_init="echo EXTRA-LINE")
    assert again.read_bytes() == image.read_bytes()


@pytest.mark.parametrize("os_release,host,order", [
    ('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nVERSION_CODENAME=trixie\n', "trixie",
     ["trixie", "bookworm"]),
    ("VERSION_CODENAME=bookworm\n", "bookworm", ["bookworm", "trixie"]),
    ('VERSION_CODENAME="noble"\nID=ubuntu\n', None, ["bookworm", "trixie"]),
    ("ID=debian\n", None, ["bookworm", "trixie"]),        # sid: no codename
])
def test_demo_boots_every_kernel_the_hosts_first(tmp_path: Path, os_release: str,
                                                 host: str | None, order: list[str]) -> None:
    path = tmp_path / "os-release"
    path.write_text(os_release)
    assert host_suite(path) == host
    assert default_suites(host) == order


def test_demo_names_each_kernel() -> None:
    assert host_suite(Path("/nonexistent/os-release")) is None
    assert describe("trixie", "6.12.57+deb13-amd64") == "trixie (Debian 13, Linux 6.12.57+deb13-amd64)"
    assert 'echo "kernel: Linux $(uname -r)"' in render_init()
