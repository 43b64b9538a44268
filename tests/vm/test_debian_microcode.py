"""`update-initramfs -u` in a real Debian root with Debian's intel-microcode and
amd64-microcode installed and the other release's packages listed as extensions (siderolabs
layout, oci-archives): the initrd starts with one early archive whose GenuineIntel.bin and
AuthenticAMD.bin hold, per processor, the newest revision of either side. Malformed microcode
fails update-initramfs with one line, and the old initrd stays.

No boot: the kernel's microcode lines are checked in test_microcode_vm.py. The root is
mmdebstrap's base root under an overlay that ends with the test, so the cached root is left as
it was; the packages go in with `dpkg -i --no-triggers` (their postinst would rebuild the
initrd once more)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent import syscalls
from agent.bake import microcode
from agent.bake.early import RECORD, leading_archives
from agent.bake.segments import split_segments
from agent.image.pack import PackOptions, pack_extension
from devtools.debian_root import FAKE_TIME, base_root, in_chroot, kernel_releases
from tests.kernel.microcode_debs import (
    bumped_intel_blob,
    fetch_microcode,
    firmware,
    iucode_list,
    newest_amd_matches,
    newest_intel,
    package_debs,
    siderolabs_extensions,
)

ROOT = Path(__file__).resolve().parents[2]
OTHER = {"bookworm": "trixie", "trixie": "bookworm"}
INTEL_BIN = "kernel/x86/microcode/GenuineIntel.bin"
AMD_BIN = "kernel/x86/microcode/AuthenticAMD.bin"
IMAGES = "etc/overlay-agent/images"
MACHINE_YAML = """version: v1alpha1
machine:
  install:
    extensions:
      - image: oci-archive:images/intel-ucode.oci.tar
      - image: oci-archive:images/amd-ucode.oci.tar
"""
# this machine's CPU is not AMD: amd64-microcode's hook would add nothing in its `auto` mode
AMD_DEFAULTS = "AMD64UCODE_INITRAMFS=early\n"


@contextmanager
def overlay_root(base: Path, work: Path) -> Iterator[Path]:
    """`base` under a writable overlay in this mount namespace; everything written is gone
    afterwards."""
    upper, scratch, merged = work / "upper", work / "scratch", work / "root"
    for folder in (upper, scratch, merged):
        folder.mkdir(parents=True)
    syscalls.mount("overlay", str(merged), "overlay", 0,
                   f"lowerdir={base},upperdir={upper},workdir={scratch}")
    try:
        yield merged
    finally:
        syscalls.umount2(str(merged), syscalls.MNT_DETACH)
        shutil.rmtree(work)


def install(root: Path, debs: list[Path]) -> None:
    folder = root / "tmp/oa-debs"
    folder.mkdir()
    for deb in debs:
        shutil.copy(deb, folder / deb.name)
    in_chroot(root, "dpkg -i --no-triggers /tmp/oa-debs/*.deb >/dev/null && rm -r /tmp/oa-debs")


def list_extensions(root: Path, exts: tuple[Path, ...]) -> None:
    (root / IMAGES).mkdir(parents=True, exist_ok=True)
    for ext in exts:
        pack_extension(ext, root / IMAGES / f"{ext.name}.oci.tar",
                       PackOptions(mtime=int(FAKE_TIME)))
    (root / "etc/overlay-agent/machine.yaml").write_text(MACHINE_YAML)


def fms_name(signature: int) -> str:
    """Where linux-firmware files an Intel update: family-model-stepping."""
    family = (signature >> 8 & 0xF) + (signature >> 20 & 0xFF)
    model = (signature >> 4 & 0xF) | (signature >> 12 & 0xF0)
    return f"{family:02x}-{model:02x}-{signature & 0xF:02x}"


def ucode_extensions(work: Path, suite: str) -> tuple[Path, Path, microcode.Blob]:
    """The other release's packages as extensions, plus one of this release's updates made
    newer in intel-ucode: the extensions win for that processor even against a newer host
    package."""
    intel, amd = siderolabs_extensions(work, fetch_microcode(OTHER[suite]),
                                       intel_base="usr/lib/firmware")
    data = bumped_intel_blob(firmware(fetch_microcode(suite)["intel-microcode"], "intel-ucode"))
    bumped = microcode.parse_intel(data)[0]
    path = intel / "rootfs/usr/lib/firmware/intel-ucode" / fms_name(bumped.signatures[0])
    path.write_bytes((path.read_bytes() if path.exists() else b"") + data)
    return intel, amd, bumped


def update_initramfs(root: Path, release: str) -> subprocess.CompletedProcess[str]:
    return in_chroot(root, f"TMPDIR=/tmp update-initramfs -u -k {release} 2>&1", check=False)


def inspect_json(initrd: Path) -> dict[str, list[dict[str, object]]]:
    proc = subprocess.run([sys.executable, "-m", "agent", "inspect", str(initrd), "-o", "json"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    report: dict[str, list[dict[str, object]]] = json.loads(proc.stdout)
    return report


@pytest.mark.parametrize("suite", ["bookworm", "trixie"])
def test_update_initramfs_merges_extension_microcode(private_mounts: None, tmp_path: Path,
                                                    deb_package: Path, suite: str) -> None:
    host = fetch_microcode(suite)
    intel_ext, amd_ext, bumped = ucode_extensions(tmp_path / "exts", suite)
    with overlay_root(base_root(suite), tmp_path / "overlay") as root:
        install(root, [*package_debs(suite), deb_package])
        (root / "etc/default/amd64-microcode").write_text(AMD_DEFAULTS)
        list_extensions(root, (intel_ext, amd_ext))
        (release,) = kernel_releases(root)
        proc = update_initramfs(root, release)
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert "CPU microcode of intel-ucode, amd-ucode in the early archive" in proc.stdout
        initrd = tmp_path / "initrd.img"
        shutil.copy(root / f"boot/initrd.img-{release}", initrd)

    blob = initrd.read_bytes()
    # Debian's two early archives replaced by one (trixie then has an uncompressed archive of
    # the modules that are compressed already), the compressed main archive after them
    (start, _end, members), *others = leading_archives(blob, "initrd")
    assert start == 0
    assert not [e.name for _, _, more in others for e in more if e.name.startswith("kernel")]
    assert "zstd" in [s.format.value for s in split_segments(blob, "initrd")]
    files = {e.name: e.content() for e in members if e.name in (INTEL_BIN, AMD_BIN, RECORD)}
    assert sorted(files) == [RECORD, AMD_BIN, INTEL_BIN]

    merged_intel = tmp_path / "GenuineIntel.bin"
    merged_intel.write_bytes(files[INTEL_BIN])
    ours = microcode.parse_intel(files[INTEL_BIN])
    assert sorted(iucode_list(merged_intel)) == list(range(1, len(ours) + 1))
    sides = [p.read_bytes() for side in (firmware(host["intel-microcode"], "intel-ucode"),
                                         intel_ext / "rootfs/usr/lib/firmware/intel-ucode")
             for p in sorted(side.iterdir())]
    assert newest_intel([files[INTEL_BIN]]) == newest_intel(sides)
    assert bumped.data in [b.data for b in ours]

    amd_sides = [p.read_bytes() for side in (firmware(host["amd64-microcode"], "amd-ucode"),
                                             amd_ext / "rootfs/usr/lib/firmware/amd-ucode")
                 for p in sorted(side.glob("microcode_amd*.bin"))]
    assert newest_amd_matches(files[AMD_BIN], amd_sides) > 30

    intel, amd = inspect_json(initrd)["early_microcode"]
    assert (intel["vendor"], intel["blobs"], amd["vendor"]) == (
        "GenuineIntel", len(ours), "AuthenticAMD")
    updates = intel["updates"]
    assert isinstance(updates, list)
    sources = {(u["signatures"][0], u["pf_mask"], u["revision"]): u["from"] for u in updates}
    assert sources[(bumped.signatures[0], bumped.platforms, bumped.revision)] == ["intel-ucode"]
    assert {label for u in updates for label in u["from"]} == {"initramfs", "intel-ucode"}


def test_malformed_microcode_fails_update_initramfs(private_mounts: None, tmp_path: Path,
                                                    deb_package: Path) -> None:
    """One line names the extension and the file; the old initrd stays (trixie: its
    mkinitramfs is the quicker one)."""
    intel_ext, amd_ext, _ = ucode_extensions(tmp_path / "exts", "trixie")
    bad = amd_ext / "rootfs/usr/lib/firmware/amd-ucode/microcode_amd_fam17h.bin"
    bad.write_bytes(bad.read_bytes()[:-100])
    with overlay_root(base_root("trixie"), tmp_path / "overlay") as root:
        install(root, [deb_package])
        list_extensions(root, (intel_ext, amd_ext))
        (release,) = kernel_releases(root)
        before = (root / f"boot/initrd.img-{release}").read_bytes()
        proc = update_initramfs(root, release)
        assert proc.returncode != 0, proc.stdout[-3000:]
        named = [line for line in proc.stdout.splitlines() if line.startswith("oci-archive:")]
        assert len(named) == 1, proc.stdout[-3000:]
        assert re.fullmatch(r"oci-archive:/etc/overlay-agent/images/amd-ucode\.oci\.tar: "
                            r"usr/lib/firmware/amd-ucode/microcode_amd_fam17h\.bin: malformed "
                            r"AuthenticAMD microcode: .+", named[0]), named
        assert (root / f"boot/initrd.img-{release}").read_bytes() == before
        assert not list((root / "boot").glob("*.new"))
