"""`make demo`'s images boot on both stock kernels: the demo root as /rootfs.sqsh of an
initramfs from the builder; its own Python runtime runs `overlay-agent` after switch_root."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from agent.errors import SourceError
from agent.initramfs.build import InitramfsSpec, make_initramfs
from agent.kernels import load_kernel
from devtools.demo import DONE_MARKER, MARKER, build_demo_root
from devtools.qemu import TOKEN_KEY, boot

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "kernels"
CHECK = 'python3 -IS -c "import sys; print(\'ROOT-PY\', sys.prefix)"'


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_root(tmp_path_factory.mktemp("demo") / "root.sqsh", extra_init=CHECK)


@pytest.mark.parametrize("suite", ["bookworm", "trixie"])
def test_demo_root_boots_and_runs_the_agent(demo_root: Path, tmp_path: Path,
                                            suite: str) -> None:
    try:
        kernel = load_kernel(CACHE, suite)
    except SourceError as exc:
        pytest.fail(str(exc))
    initrd = tmp_path / "initrd.img"
    make_initramfs(InitramfsSpec(kernel.release, kernel.modules_dir, root_image=demo_root,
                                  disk_modules=False), initrd)
    token = secrets.token_hex(6)
    result = boot(kernel.vmlinuz, initrd, f"panic=-1 {TOKEN_KEY}={token}", timeout=150,
                  serial_log=tmp_path / "serial.log")
    assert not result.timed_out, result.output[-2000:]
    assert f"{MARKER} {token}" in result.output, result.output[-2000:]
    assert "ROOT-PY /usr" in result.output
    assert "NODE" in result.output and "NAMESPACE" in result.output   # get extensions ran
    assert f"{DONE_MARKER} {token}" in result.output
