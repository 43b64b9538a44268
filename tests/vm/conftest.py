"""VM tier: both Debian stock kernels, images built once per session (cached on disk)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest
from images import initramfs, root_images
from qemu import BootResult, boot

from agent.errors import SourceError
from agent.kernels import Kernel, load_kernel

ROOT = Path(__file__).resolve().parents[2]
KERNEL_CACHE = ROOT / ".cache" / "kernels"
SUITES = ("bookworm", "trixie")
BOOT_TIMEOUT = 120.0   # TCG on a shared 2-core machine; a boot takes 6-15 s


@dataclass(frozen=True)
class Machine:
    """One kernel with its initramfs images; boot() runs QEMU and returns the serial log."""

    kernel: Kernel
    initrd_with_root: Path
    initrd_plain: Path
    root_sqsh: Path
    root_ext4: Path
    logs: Path

    def boot(self, name: str, append: str, *, with_root: bool, disk: Path | None = None,
             token: str = "") -> BootResult:
        initrd = self.initrd_with_root if with_root else self.initrd_plain
        if token:
            kernel_part, sep, init_part = append.partition(" -- ")
            append = f"{kernel_part} overlay_agent.test_token={token}{sep}{init_part}"
        return boot(self.kernel.vmlinuz, initrd, append, disk=disk, timeout=BOOT_TIMEOUT,
                    serial_log=self.logs / f"{self.kernel.suite}-{name}.log")


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
