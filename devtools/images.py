"""Images the VM scenarios and the boot benchmark boot: a tiny busybox root (squashfs and
ext4) and initramfs images from the real builder, cached under .cache/vm-fixtures keyed by
every input (agent sources, kernel release, busybox, root script). Free of pytest."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent import cpio
from agent.initramfs.build import InitramfsSpec, make_initramfs
from agent.kernels import Kernel
from agent.tools import run
from devtools.qemu import TOKEN_KEY, BootResult, boot

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "vm-fixtures"
BUSYBOX = Path("/bin/busybox")
EXT4_UUID = "5e0c1f2a-9b7d-4e36-a1c8-0d2f4b6e8a13"
KEEP_PER_SUITE = 4     # images of the current and the previous set of inputs
BOOT_TIMEOUT = 120.0   # TCG on a shared 2-core machine; a boot takes 6-20 s

# /sbin/init of the test root: report what PID 1 handed over, then power off.
ROOT_INIT = f"""#!/bin/sh
bb=/bin/busybox
token=$($bb sed -n 's/.*{TOKEN_KEY}=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
mounts=""
for m in /dev /proc /sys /run; do
  $bb grep -q " $m " /proc/mounts && mounts="$mounts $m"
done
if $bb touch /.rw-probe 2>/dev/null; then rw=rw; else rw=ro; fi
echo "ROOT-INIT pid=$$ root=$rw api=$mounts args=$* token=$token"
$bb poweroff -f
"""


def inputs_key(*parts: str | bytes) -> str:
    """Hash of the agent's sources plus the given parts: changes whenever an input does."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "agent").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
    return digest.hexdigest()[:16]


def build_root_tree(tree: Path) -> Path:
    shutil.rmtree(tree, ignore_errors=True)
    for d in ("bin", "sbin", "proc", "sys", "dev", "run", "tmp", "etc"):
        (tree / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
    (tree / "bin" / "sh").symlink_to("busybox")
    init = tree / "sbin" / "init"
    init.write_text(ROOT_INIT)
    init.chmod(0o755)
    return tree


def root_images(cache: Path = CACHE) -> tuple[Path, Path]:
    """(squashfs, ext4) images of the test root, built once per set of inputs."""
    key = hashlib.sha256(ROOT_INIT.encode() + BUSYBOX.read_bytes()).hexdigest()[:16]
    folder = cache / f"root-{key}"
    sqsh, ext4 = folder / "root.sqsh", folder / "root.ext4"
    if not (sqsh.exists() and ext4.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        tree = build_root_tree(folder / "tree")
        run(["mksquashfs", tree, f"{sqsh}.tmp", "-quiet", "-noappend", "-all-root"], capture=True)
        run(["mkfs.ext4", "-q", "-F", "-U", EXT4_UUID, "-L", "oa-root", "-E",
             "root_owner=0:0", "-d", tree, f"{ext4}.tmp", "16M"],
            env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"}, capture=True)
        os.replace(f"{sqsh}.tmp", sqsh)
        os.replace(f"{ext4}.tmp", ext4)
    return sqsh, ext4


GPT_ROOT_LABEL = "oa-root-b"


def gpt_disk(ext4: Path) -> Path:
    """A GPT disk: partition 1 "oa-root-a" (empty), partition 2 "oa-root-b" holding `ext4`;
    for root=PARTLABEL=. Written beside `ext4`, once."""
    disk = ext4.with_name("gpt.img")
    if disk.exists():
        return disk
    sectors = -(-ext4.stat().st_size // 512)
    tmp = disk.with_suffix(".tmp")
    with tmp.open("wb") as f:
        f.truncate((4096 + sectors + 2048) * 512)     # room for the backup GPT at the end
    script = ("label: gpt\n"
              'start=2048, size=2048, name="oa-root-a"\n'
              f'start=4096, size={sectors}, name="{GPT_ROOT_LABEL}"\n')
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", tmp], input=script.encode(),
        capture=True)
    with tmp.open("r+b") as f:
        f.seek(4096 * 512)
        f.write(ext4.read_bytes())
    os.replace(tmp, disk)
    return disk


def initramfs(kernel: Kernel, root_image: Path | None, cache: Path = CACHE) -> Path:
    """The initramfs from the real builder for `kernel`, with /rootfs.sqsh when given."""
    image_key = b"" if root_image is None else root_image.read_bytes()
    key = inputs_key(kernel.release, hashlib.sha256(image_key).hexdigest())
    out = cache / f"initrd-{kernel.suite}-{key}"
    if not out.exists():
        spec = InitramfsSpec(kernel_release=kernel.release, modules_dir=kernel.modules_dir,
                             root_image=root_image)
        make_initramfs(spec, out)
        prune(cache, f"initrd-{kernel.suite}-*", keep=KEEP_PER_SUITE)
    return out


def prune(cache: Path, pattern: str, keep: int) -> None:
    """Drop all but the `keep` newest matches (every source change makes new keys)."""
    found = sorted(cache.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in found[keep:]:
        stale.unlink(missing_ok=True)


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
             token: str = "", initrd: Path | None = None, cpu: str | None = None) -> BootResult:
        if initrd is None:
            initrd = self.initrd_with_root if with_root else self.initrd_plain
        if token:
            kernel_part, sep, init_part = append.partition(" -- ")
            append = f"{kernel_part} {TOKEN_KEY}={token}{sep}{init_part}"
        return boot(self.kernel.vmlinuz, initrd, append, disk=disk, timeout=BOOT_TIMEOUT,
                    serial_log=self.logs / f"{self.kernel.suite}-{name}.log", cpu=cpu)

    def initrd_overriding(self, name: str, files: dict[str, bytes], *, with_root: bool) -> Path:
        """An initramfs plus an appended archive replacing `files` (the kernel unpacks
        concatenated archives in order, later members win): for bad-input boots."""
        buf = io.BytesIO()
        cpio.write(cpio.with_parents([cpio.regular(path.lstrip("/"), data)
                                      for path, data in files.items()]), buf)
        base = self.initrd_with_root if with_root else self.initrd_plain
        out = self.logs / f"initrd-{name}"
        out.write_bytes(base.read_bytes() + cpio.compress(buf.getvalue(), "zstd"))
        return out
