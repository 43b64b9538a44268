"""The kernel itself unpacks what `build` appends: Debian's stock kernels boot a
Debian-style initrd (microcode cpio + gzip main) with extensions baked in, and a busybox
/init prints what it finds."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent import cpio, listfile
from agent.bake.segments import merged_members, split_segments
from agent.errors import SourceError
from agent.kernels import load_kernel
from devtools.qemu import boot

ROOT = Path(__file__).resolve().parents[2]
BUSYBOX = Path("/bin/busybox")
INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
echo BAKE-LIST $(tr -d '\\n ' < /extensions.yaml)
for f in /extensions/*.sqsh; do echo "BAKE-IMG $(sha256sum $f)"; done
echo "BAKE-FW $(cat /usr/lib/firmware/vendor/blob.txt)"
echo "BAKE-LIB $(readlink /lib)"
reboot -f
"""


def archive(entries: list[cpio.Entry]) -> bytes:
    buf = io.BytesIO()
    cpio.write(cpio.with_parents(entries), buf)
    return buf.getvalue()


def make_initrd(path: Path) -> Path:
    early = archive([cpio.regular("kernel/x86/microcode/GenuineIntel.bin", b"\0" * 48)])
    main = archive([cpio.regular("init", INIT.encode(), 0o755),
                    cpio.regular("bin/busybox", BUSYBOX, 0o755),
                    cpio.directory("proc"), cpio.directory("usr/lib"),
                    cpio.symlink("lib", "usr/lib"), cpio.chardev("dev/console", 5, 1)])
    path.write_bytes(early + cpio.compress(main, "gzip"))
    return path


def make_extension(base: Path, name: str, files: dict[str, bytes]) -> Path:
    root = base / name
    for rel, data in files.items():
        (root / "rootfs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "rootfs" / rel).write_bytes(data)
    (root / "manifest.yaml").write_text(f"version: v1alpha1\nmetadata:\n  name: {name}\n"
                                        f"  version: 1.0.0\n  author: t\n  description: t\n")
    return root


@pytest.mark.parametrize("suite,compression", [("bookworm", "zstd"), ("trixie", "xz")])
def test_kernel_unpacks_the_appended_archive(tmp_path: Path, suite: str,
                                             compression: str) -> None:
    try:
        kernel = load_kernel(ROOT / ".cache" / "kernels", suite)
    except SourceError as exc:
        pytest.fail(str(exc))
    exts = [make_extension(tmp_path, "tool", {"usr/local/bin/tool": os.urandom(200_000)}),
            make_extension(tmp_path, "fw", {"usr/lib/firmware/vendor/blob.txt": b"fw-ok\n"})]
    out = tmp_path / "out.img"
    argv = [sys.executable, "-m", "agent", "build", "--initramfs", str(make_initrd(
        tmp_path / "in.img")), "-o", str(out), "--os-version", "v1.7.0",
            "--compression", compression]
    for ext in exts:
        argv += ["--extension", f"dir:{ext}"]
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
    result = boot(kernel.vmlinuz, out, "panic=-1 quiet", timeout=120.0,
                  serial_log=tmp_path / "serial.log")
    assert not result.timed_out, result.output[-2000:]
    images = dict(re.findall(r"BAKE-IMG ([0-9a-f]{64})\s+/extensions/(\S+)", result.output))
    tree = merged_members(split_segments(out.read_bytes(), "out"))
    layers = listfile.read_list(tree["extensions.yaml"].content().decode())
    assert {v: k for k, v in images.items()} == {x.image: x.sha256 for x in layers}
    assert hashlib.sha256(tree["extensions/000-tool.sqsh"].content()).hexdigest() in images
    assert re.search(r'BAKE-LIST \{"layers":\[.*"version":1\}', result.output)
    assert "BAKE-FW fw-ok" in result.output
    assert "BAKE-LIB usr/lib" in result.output   # the appended archive kept /lib a symlink


def test_booted_system_loads_a_module_only_an_extension_ships(tmp_path: Path) -> None:
    """The seed's flow end to end: the agent's own initramfs and a root without kernel
    modules, an extension shipping zram (+ its dependency); after the boot, `modprobe zram`
    in the booted root loads them from the overlay, indexed by the modules.dep layer."""
    from agent.bake.build import BuildRequest, bake_initramfs
    from agent.initramfs.build import InitramfsSpec, make_initramfs
    from devtools.demo import DONE_MARKER, build_demo_root

    try:
        kernel = load_kernel(ROOT / ".cache" / "kernels", "bookworm")
    except SourceError as exc:
        pytest.fail(str(exc))
    stock, release = kernel.modules_dir, kernel.release
    dep_line = next(line for line in (stock / "modules.dep").read_text().splitlines()
                    if line.startswith("kernel/drivers/block/zram/zram.ko:"))
    files = {f"usr/lib/modules/{release}/extras/{Path(rel).name}": (stock / rel).read_bytes()
             for rel in [dep_line.split(":")[0], *dep_line.split(":")[1].split()]}
    ext = make_extension(tmp_path, "zram", files)
    root = build_demo_root(tmp_path / "root.sqsh", extra_init=(
        "modprobe zram num_devices=1 && echo ZRAM-LOADED $(ls /sys/block | grep zram)\n"
        f"echo ZRAM-DEP $(grep -c extras/ /lib/modules/{release}/modules.dep)\n"))
    plain = tmp_path / "plain.img"
    make_initramfs(InitramfsSpec(release, stock, root_image=root, disk_modules=False),
                          plain)
    baked = tmp_path / "baked.img"
    result = bake_initramfs(BuildRequest(plain, baked, extensions=(f"dir:{ext}",),
                                          base_root=root, os_version="v1.7.0"))
    assert [x.image for x in result.layers] == ["000-zram.sqsh", "001-modules.dep.sqsh"]
    booted = boot(kernel.vmlinuz, baked, "panic=-1 loglevel=3", timeout=180.0,
                  serial_log=tmp_path / "serial.log")
    assert not booted.timed_out, booted.output[-3000:]
    assert DONE_MARKER in booted.output, booted.output[-3000:]
    assert "ZRAM-LOADED zram0" in booted.output, booted.output[-3000:]
    assert f"ZRAM-DEP {len(files)}" in booted.output, booted.output[-3000:]
