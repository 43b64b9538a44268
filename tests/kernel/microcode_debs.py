"""Debian's CPU microcode packages (non-free-firmware), downloaded like the kernels through a
private apt config into .cache/microcode/SUITE and unpacked there (a cached set is used as
is); the early archives Debian's initramfs-tools hooks make of them; the same files packed
as extensions in the siderolabs layout."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from agent.bake import microcode
from agent.errors import SourceError
from agent.kernels import PrivateApt, derive_mirrors
from agent.output import write_bytes_atomically
from agent.tools import run
from tests.unit.bake.ucode import kernel_choice, refresh_intel_checksum

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "microcode"
PACKAGES = ("intel-microcode", "amd64-microcode")
COMPONENT = "non-free-firmware"


def fetch_iucode_tool(suite: str, cache: Path = CACHE) -> Path:
    """iucode-tool's .deb (main; intel-microcode depends on it), downloaded unless cached."""
    debs = cache / suite / "main-debs"
    found = sorted(debs.glob("iucode-tool_*.deb"))
    if found:
        return found[-1]
    apt = PrivateApt(cache / "apt-main" / suite, suite, derive_mirrors())
    apt.update()
    apt.download(["iucode-tool"], debs)
    found = sorted(debs.glob("iucode-tool_*.deb"))
    if not found:
        raise SourceError(f"{debs}: apt-get download left no iucode-tool_*.deb")
    return found[-1]


def package_debs(suite: str, cache: Path = CACHE) -> list[Path]:
    """The .debs fetch_microcode downloaded, with iucode-tool's: what `dpkg -i` needs."""
    fetch_microcode(suite, cache)
    return [*sorted((cache / suite / "debs").glob("*.deb")), fetch_iucode_tool(suite, cache)]


def fetch_microcode(suite: str, cache: Path = CACHE) -> dict[str, Path]:
    """Package name -> its unpacked tree (`dpkg-deb -x`), downloading only when not cached."""
    base = cache / suite
    trees = {name: base / name for name in PACKAGES}
    if (base / "complete").is_file():
        return trees
    apt = PrivateApt(cache / "apt" / suite, suite, derive_mirrors(), component=COMPONENT)
    apt.update()
    debs = base / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    apt.download(list(PACKAGES), debs)
    for name, tree in trees.items():
        deb = next(iter(sorted(debs.glob(f"{name}_*.deb"))), None)
        if deb is None:
            raise SourceError(f"{debs}: apt-get download left no {name}_*.deb")
        shutil.rmtree(tree, ignore_errors=True)
        run(["dpkg-deb", "-x", deb, tree])
    versions = "".join(f"{d.name}\n" for d in sorted(debs.glob("*.deb")))
    write_bytes_atomically(base / "complete", versions.encode())
    return trees


def firmware(tree: Path, folder: str) -> Path:
    """`intel-ucode` or `amd-ucode` of an unpacked package (bookworm: /lib, trixie: /usr/lib)."""
    for base in ("usr/lib/firmware", "lib/firmware"):
        if (tree / base / folder).is_dir():
            return tree / base / folder
    raise SourceError(f"{tree}: no {folder}")


def debian_early(base: Path, tree: dict[str, Path], extra_intel: Sequence[Path] = ()) -> bytes:
    """The early archives initramfs-tools prepends with both packages installed: intel's hook
    runs `iucode_tool --write-earlyfw`, amd64's concatenates the containers into a cpio."""
    intel = base / "intel-early.cpio"
    run(["iucode_tool", "-q", f"--write-earlyfw={intel}", "--overwrite",
         firmware(tree["intel-microcode"], "intel-ucode"), "-tb", *extra_intel])
    amd_root = base / "amd-early"
    (amd_root / "kernel/x86/microcode").mkdir(parents=True)
    (amd_root / "kernel/x86/microcode/AuthenticAMD.bin").write_bytes(b"".join(
        p.read_bytes() for p in sorted(firmware(tree["amd64-microcode"], "amd-ucode").iterdir())
        if p.name.startswith("microcode_amd") and p.name.endswith(".bin")))
    names = subprocess.run("find . | LC_ALL=C sort", shell=True, cwd=amd_root, check=True,
                           capture_output=True).stdout
    amd = subprocess.run(["cpio", "--reproducible", "-R", "0:0", "-H", "newc", "-o", "--quiet"],
                         input=names, cwd=amd_root, check=True, capture_output=True).stdout
    return intel.read_bytes() + amd


def make_ucode_extension(base: Path, name: str, version: str) -> Path:
    root = base / name
    (root / "rootfs").mkdir(parents=True)
    (root / "manifest.yaml").write_text(
        f"version: v1alpha1\nmetadata:\n  name: {name}\n  version: {version}\n"
        f"  author: tests\n  description: {name} from Debian's package\n")
    return root


def siderolabs_extensions(base: Path, tree: dict[str, Path],
                          intel_base: str = "lib/firmware") -> tuple[Path, Path]:
    """intel-ucode under /lib/firmware (split /usr; `intel_base` for merged /usr), amd-ucode
    under /usr/lib/firmware with linux-firmware's README beside the containers."""
    intel = make_ucode_extension(base, "intel-ucode", "20250812-v1.11.0")
    shutil.copytree(firmware(tree["intel-microcode"], "intel-ucode"),
                    intel / "rootfs" / intel_base / "intel-ucode")
    amd = make_ucode_extension(base, "amd-ucode", "20250811-v1.11.0")
    shutil.copytree(firmware(tree["amd64-microcode"], "amd-ucode"),
                    amd / "rootfs/usr/lib/firmware/amd-ucode")
    (amd / "rootfs/usr/lib/firmware/amd-ucode/README").write_bytes(b"text\n")
    return intel, amd


# ---------------------------------------------------------------- checks


def bumped_intel_blob(intel_dir: Path) -> bytes:
    """A real update made newer (revision + 0x100), as if one side were ahead."""
    for path in sorted(intel_dir.iterdir()):
        for blob in microcode.parse_intel(path.read_bytes()):
            if len(blob.signatures) == 1:
                raw = bytearray(blob.data)
                raw[4:8] = (blob.revision + 0x100).to_bytes(4, "little")
                return refresh_intel_checksum(bytes(raw))
    raise AssertionError("no update without an extended table")


def iucode_list(path: Path) -> dict[int, set[str]]:
    """`iucode_tool -l`: blob number -> its lines (one per signature, extended ones too)."""
    proc = subprocess.run(["iucode_tool", "-tb", "-l", path], check=True, capture_output=True,
                          text=True)
    listed: dict[int, set[str]] = {}
    for number, line in re.findall(r"^\s+\d+/(\d+): (.*)$", proc.stdout, re.MULTILINE):
        listed.setdefault(int(number), set()).add(line)
    return listed


def newest_intel(files: Sequence[bytes]) -> dict[tuple[int, int], int]:
    """(signature, platform bit) -> newest revision among the inputs."""
    best: dict[tuple[int, int], int] = {}
    for data in files:
        for blob in microcode.parse_intel(data):
            for bit in range(8):
                if blob.platforms & (1 << bit) or (blob.platforms == 0 and bit == 0):
                    key = (blob.signatures[0], bit)
                    best[key] = max(best.get(key, 0), blob.revision)
    return best


def newest_amd_matches(merged: bytes, inputs: Sequence[bytes]) -> int:
    """Checks that the kernel takes, for every signature of the inputs, the newest patch any
    input has from `merged`; the number of signatures."""
    signatures = {s for data in inputs for b in microcode.parse_amd(data) for s in b.signatures}
    for sig in signatures:
        assert kernel_choice(merged, sig) == max(
            kernel_choice(data, sig) or 0 for data in inputs), hex(sig)
    return len(signatures)
