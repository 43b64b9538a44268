"""Helpers for the bake tests: small extension folders, input initramfs images, a build call."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from agent import cpio

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / ".cache" / "kernels"


def make_extension(base: Path, name: str, files: dict[str, bytes], version: str = "1.0.0",
                   manifest: str | None = None) -> Path:
    """An extension folder: Talos manifest.yaml + rootfs/ with `files` (0755 under bin/)."""
    root = base / name
    (root / "rootfs").mkdir(parents=True)
    (root / "manifest.yaml").write_text(manifest if manifest is not None else
                                        f"version: v1alpha1\nmetadata:\n  name: {name}\n"
                                        f"  version: {version}\n  author: tests\n"
                                        f"  description: test extension {name}\n")
    for rel, data in files.items():
        path = root / "rootfs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if "/bin/" in rel else 0o644)
    return root


def archive(entries: list[cpio.Entry]) -> bytes:
    buf = io.BytesIO()
    cpio.write(cpio.with_parents(entries), buf)
    return buf.getvalue()


def debian_style_initrd(path: Path, main: str = "zstd") -> Path:
    """Like Debian's /boot/initrd.img-*: an uncompressed early microcode cpio, then the
    compressed main archive (merged /usr: lib and bin are symlinks)."""
    early = archive([cpio.regular("kernel/x86/microcode/AuthenticAMD.bin", b"\x01" * 64)])
    main_cpio = archive([cpio.regular("init", b"#!/bin/sh\nexec /sbin/init\n", 0o755),
                         cpio.symlink("lib", "usr/lib"), cpio.symlink("bin", "usr/bin"),
                         cpio.regular("usr/bin/busybox", b"\x7fELF" + b"\0" * 200, 0o755),
                         cpio.regular("usr/lib/modules/6.1.0/modules.dep", b"")])
    path.write_bytes(early + cpio.compress(main_cpio, main))
    return path


def overlay_agent(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    proc = subprocess.run([sys.executable, "-m", "agent", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc
