"""Test tiers by directory: tests/unit (no root), tests/kernel (root, real mounts in a
private mount namespace), tests/vm (QEMU boots of Debian's stock kernels), tests/fuzz
(hypothesis; short budget here, OVERLAY_AGENT_FUZZ=long through `make fuzz`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNEL_CACHE = ROOT / ".cache" / "kernels"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if tier in ("unit", "kernel", "vm", "fuzz"):
            item.add_marker(getattr(pytest.mark, tier))


def in_private_mount_ns() -> bool:
    """True when PID 1, or (where PID 1's namespace is hidden) an ancestor, is elsewhere."""
    mine = os.readlink("/proc/self/ns/mnt")
    pid = 1
    try:
        return mine != os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        pid = os.getppid()
    while pid > 1:
        try:
            if os.readlink(f"/proc/{pid}/ns/mnt") != mine:
                return True
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


@pytest.fixture
def private_mounts() -> None:
    """Kernel-tier tests mount things: only as root and never in the host's namespace."""
    if os.geteuid() != 0:
        pytest.skip("needs root (run through `make test`)")
    if not in_private_mount_ns():
        pytest.fail("kernel-tier tests must run under `unshare --mount` (use `make test`)")


@pytest.fixture(scope="session")
def deb_package() -> Path:
    """dist/overlay-agent_VERSION_all.deb, built once per session by `make deb`'s script."""
    from devtools.debian_root import build_deb

    try:
        return build_deb()
    except RuntimeError as exc:
        pytest.fail(str(exc))
