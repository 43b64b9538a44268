"""VM tier: both Debian stock kernels, images built once per session (cached on disk)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from agent.errors import SourceError
from agent.kernels import load_kernel
from devtools.images import Machine, initramfs, root_images

ROOT = Path(__file__).resolve().parents[2]
KERNEL_CACHE = ROOT / ".cache" / "kernels"
SUITES = ("bookworm", "trixie")


@pytest.fixture(scope="session", params=SUITES)
def machine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Machine:
    try:
        kernel = load_kernel(KERNEL_CACHE, request.param)
    except SourceError as exc:
        pytest.fail(f"{exc}")
    sqsh, ext4 = root_images()
    return Machine(kernel, initramfs(kernel, sqsh), initramfs(kernel, None), sqsh, ext4,
                   tmp_path_factory.mktemp(f"serial-{request.param}"))


@pytest.fixture
def token() -> str:
    return secrets.token_hex(8)
