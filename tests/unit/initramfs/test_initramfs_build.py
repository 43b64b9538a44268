"""The initramfs builder: layout, device nodes, ELF closure, reproducibility, bad input."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.bake.early import MicrocodeSource
from agent.errors import BuildError
from agent.initramfs.build import (
    INIT_SCRIPT,
    InitramfsSpec,
    canonical_name,
    make_initramfs,
    read_members,
)
from agent.initramfs.elfdeps import Lookup
from agent.kernels import Kernel, load_kernel

CACHE = Path(__file__).resolve().parents[3] / ".cache" / "kernels"


def kernel(suite: str) -> Kernel:
    if not (CACHE / suite / "kernel-release").exists():
        pytest.skip("run `make kernels` first")
    return load_kernel(CACHE, suite)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, InitramfsSpec]:
    k = kernel("trixie")
    out = tmp_path_factory.mktemp("ir") / "initrd.img"
    root = out.parent / "root.sqsh"
    root.write_bytes(b"hsqs" + bytes(60))
    spec = InitramfsSpec(k.release, k.modules_dir, root_image=root, mtime=1700000000)
    make_initramfs(spec, out)
    return out, spec


def test_layout_the_boot_side_relies_on(built: tuple[Path, InitramfsSpec]) -> None:
    out, spec = built
    members = read_members(out.read_bytes(), "zstd")
    look = Lookup(members)
    assert members["/init"] == (stat.S_IFREG | 0o755, INIT_SCRIPT.encode())
    assert INIT_SCRIPT.splitlines()[0] == "#!/usr/bin/python3 -IS"
    assert look.resolve("/usr/bin/python3") is not None
    for d in ("/proc", "/sys", "/dev", "/run", "/tmp", "/sysroot"):
        assert stat.S_ISDIR(members[d][0]), d
    assert members["/rootfs.sqsh"][1][:4] == b"hsqs"
    load = members["/etc/overlay-agent/modules.load"][1].decode().splitlines()
    assert [p.rsplit("/", 1)[1] for p in load[:3]] == ["loop.ko.xz", "squashfs.ko.xz",
                                                        "overlay.ko.xz"]
    names = [p.rsplit("/", 1)[1] for p in load]
    # dm-verity with its dependencies, and the vfat store modules, when the kernel has them
    assert sorted(names[3:6]) == ["dm-bufio.ko.xz", "dm-mod.ko.xz", "reed_solomon.ko.xz"]
    assert names[6] == "dm-verity.ko.xz"
    assert names.index("ext4.ko.xz") < names.index("vfat.ko.xz")
    assert names[-2:] == ["nls_cp437.ko.xz", "nls_ascii.ko.xz"]
    for p in load:
        assert p.startswith(f"/lib/modules/{spec.kernel_release}/kernel/")
        assert members[look.resolve(p) or ""][1][:6] == b"\xfd7zXZ\x00"   # shipped as-is
    assert all(m[0] & 0o7777 != 0 or stat.S_ISLNK(m[0]) for m in members.values())


@pytest.mark.parametrize("name, major, minor", [("/dev/console", 5, 1), ("/dev/null", 1, 3),
                                                ("/dev/urandom", 1, 9)])
def test_device_nodes_are_made_in_the_archive(built: tuple[Path, InitramfsSpec], name: str,
                                              major: int, minor: int) -> None:
    from agent import cpio

    blob = cpio.decompress(built[0].read_bytes(), "zstd")
    entry = next(e for a in cpio.iter_archives(blob) for e in a if e.name == name[1:])
    assert stat.S_ISCHR(entry.mode) and entry.rdev == (major, minor)
    assert (entry.uid, entry.gid, entry.mtime) == (0, 0, 1700000000)


def test_runtime_is_sourceless_bytecode(built: tuple[Path, InitramfsSpec]) -> None:
    members = read_members(built[0].read_bytes(), "zstd")
    names = set(members)
    assert "/usr/lib/overlay-agent/agent/boot/main.pyc" in names
    assert "/usr/lib/overlay-agent/yaml/__init__.pyc" in names
    assert not [n for n in names if n.endswith(".py") or "__pycache__" in n]
    stdlib = [n for n in names if n.endswith("/os.pyc") and "/python3." in n]
    assert stdlib, "getpath's landmark lib/pythonX.Y/os.pyc"
    # hash-based unchecked pyc: flags word == 1 (PEP 552)
    assert members[stdlib[0]][1][4:8] == b"\x01\x00\x00\x00"


def test_same_inputs_give_identical_bytes(built: tuple[Path, InitramfsSpec],
                                          tmp_path: Path) -> None:
    out, spec = built
    again = make_initramfs(spec, tmp_path / "again.img")
    assert again.out.read_bytes() == out.read_bytes()


def test_bad_inputs_are_reported_together_and_nothing_is_written(tmp_path: Path) -> None:
    k = kernel("bookworm")
    out = tmp_path / "x.img"
    bad = tmp_path / "bad" / "lib/firmware/amd-ucode/microcode_amd.bin"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"junk")
    spec = InitramfsSpec("6.1.0-0-amd64", k.modules_dir, root_image=tmp_path / "none.sqsh",
                         compression="lz4",
                         microcode=(MicrocodeSource("bad", "dir:bad", tmp_path / "bad"),))
    with pytest.raises(BuildError) as exc:
        make_initramfs(spec, out)
    assert str(exc.value) == (
        "compression 'lz4': use one of zstd, xz, gzip; "
        f"{tmp_path}/none.sqsh: root image missing or unreadable; "
        f"{k.modules_dir}: modules folder is for kernel release {k.release}, "
        "not 6.1.0-0-amd64; "
        "dir:bad: lib/firmware/amd-ucode/microcode_amd.bin: malformed AuthenticAMD microcode: "
        "container at offset 0: truncated header")
    assert list(tmp_path.iterdir()) == [tmp_path / "bad"]


def test_microcode_goes_into_an_early_archive_before_the_rest(tmp_path: Path) -> None:
    """--microcode DIR: the agent's initramfs gets the early archive too (a small runtime
    here: the archive, not the runtime, is under test)."""
    import json

    from agent.bake import microcode
    from agent.bake.early import RECORD, leading_archives
    from agent.commands.mkinitramfs import microcode_source
    from tests.unit.bake.ucode import amd_container, amd_patch

    k = kernel("bookworm")
    ext = tmp_path / "amd-ucode"
    container = amd_container([(0x00830F10, 0x8310)], [amd_patch(0x8310, 0x0830107C)])
    (ext / "rootfs/usr/lib/firmware/amd-ucode").mkdir(parents=True)
    (ext / "rootfs/usr/lib/firmware/amd-ucode/microcode_amd_fam17h.bin").write_bytes(container)
    spec = InitramfsSpec(k.release, k.modules_dir, disk_modules=False, entry_modules=("os",),
                         compression="gzip", level=1, mtime=1700000000,
                         microcode=(microcode_source(ext),))
    report = make_initramfs(spec, tmp_path / "x.img")
    blob = report.out.read_bytes()
    ((start, end, entries),) = leading_archives(blob, "x.img")
    assert (start, report.size, blob[end:end + 2]) == (0, len(blob), b"\x1f\x8b")
    members = {e.name: e for e in entries}
    assert microcode.parse_amd(members["kernel/x86/microcode/AuthenticAMD.bin"].content()) == \
        microcode.parse_amd(container)
    assert list(json.loads(members[RECORD].content())["AuthenticAMD.bin"].values()) == [
        ["amd-ucode"]]
    assert "/init" in read_members(blob[end:], "gzip")


@pytest.mark.parametrize("name, links, expected", [
    ("lib/modules/x/a.ko", {"lib": "usr/lib"}, "usr/lib/modules/x/a.ko"),
    ("lib64/ld.so", {"lib64": "usr/lib64", "usr/lib64": "/usr/lib"}, "usr/lib/ld.so"),
    ("usr/bin/python3", {"lib": "usr/lib"}, "usr/bin/python3"),
    ("lib", {"lib": "usr/lib"}, "lib"),
])
def test_members_never_sit_under_a_symlink(name: str, links: dict[str, str],
                                           expected: str) -> None:
    assert canonical_name(name, links) == expected


def test_cli_reports_a_wrong_release_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    k = kernel("bookworm")
    out = tmp_path / "x.img"
    proc = subprocess.run([sys.executable, "-m", "agent", "mkinitramfs", "--kernel-release",
                           "9.9.9-amd64", "--modules-dir", str(k.modules_dir), "-o", str(out)],
                          capture_output=True, text=True, cwd=CACHE.parent.parent)
    assert proc.returncode == 1
    assert proc.stderr == (f"overlay-agent: error: {k.modules_dir}: modules folder is for "
                           f"kernel release {k.release}, not 9.9.9-amd64\n")
    assert not out.exists()
