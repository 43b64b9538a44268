"""The initramfs runtime is complete: unpacked into a folder and entered with chroot (no host
files visible), its Python starts with `-IS` and imports every entry module."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent import cpio
from agent.initramfs.build import InitramfsSpec, make_initramfs, write_tree
from agent.initramfs.pyruntime import ENTRY_MODULES
from agent.kernels import load_kernel

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "kernels"


@pytest.mark.parametrize("suite", ["bookworm"])
def test_unpacked_initramfs_runs_the_agent_imports(private_mounts: None, tmp_path: Path,
                                                   suite: str) -> None:
    if not (CACHE / suite / "kernel-release").exists():
        pytest.skip("run `make kernels` first")
    k = load_kernel(CACHE, suite)
    out = tmp_path / "initrd.img"
    make_initramfs(InitramfsSpec(k.release, k.modules_dir, compression="gzip", level=1), out)
    tree = tmp_path / "tree"
    tree.mkdir()
    blob = cpio.decompress(out.read_bytes(), "gzip")
    write_tree([e for a in cpio.iter_archives(blob) for e in a], tree)
    imports = "; ".join(f"import {m}" for m in ENTRY_MODULES)
    code = (f"import sys; sys.path.insert(0, '/usr/lib/overlay-agent'); {imports}; "
            "import agent.cli; agent.cli.build_parser(); "
            "print('OK', sys.prefix, len(sys.modules))")

    def enter() -> None:
        os.chroot(tree)
        os.chdir("/")

    proc = subprocess.run(["/usr/bin/python3", "-IS", "-c", code], preexec_fn=enter,
                          capture_output=True, text=True, env={}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK /usr ")
    # /init itself is a #! script the kernel can execute: the interpreter line resolves
    first = (tree / "init").read_text().splitlines()[0]
    assert first == "#!/usr/bin/python3 -IS"
    assert (tree / "usr/bin/python3").resolve().is_file()
    assert (tree / "dev/urandom").is_char_device()
