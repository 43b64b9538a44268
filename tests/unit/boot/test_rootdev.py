"""Root device probing on images made in tmp files: ext4 (mkfs.ext4), squashfs, GPT, MBR."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from agent.boot.cmdline import RootKind, RootSpec
from agent.boot.rootdev import FsInfo, find_device, probe_filesystem, read_partitions
from agent.tools import run

EXT_UUID = "6f1c2a3b-4d5e-4f60-8172-93a4b5c6d7e8"
PART_GUIDS = ("0fc63daf-8483-4772-8e79-3d69d8477de4", "a2a0d0eb-e5b9-3344-87c0-68b6b72699c7")
PART_NAMES = ("EFI system", "rootfs-\u00e9t\u00e9 \U0001f680")   # UTF-16: surrogate pairs too


@pytest.fixture(scope="module")
def ext4_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = tmp_path_factory.mktemp("ext4") / "root.ext4"
    run(["mkfs.ext4", "-q", "-F", "-U", EXT_UUID, "-L", "demo-root", str(image), "4M"])
    return image


@pytest.fixture(scope="module")
def squashfs_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("sqsh")
    (base / "tree").mkdir()
    (base / "tree" / "f").write_text("x")
    run(["mksquashfs", str(base / "tree"), str(base / "root.sqsh"), "-quiet", "-noappend",
         "-all-root"])
    return base / "root.sqsh"


def gpt_disk(path: Path, guids: tuple[str, ...], sector: int = 512,
             names: tuple[str, ...] = PART_NAMES) -> None:
    """A minimal GPT: header at LBA 1, 128-byte entries from LBA 2 (UEFI spec 5.3)."""
    header = bytearray(sector)
    header[:8] = b"EFI PART"
    struct.pack_into("<QII", header, 72, 2, 128, 128)
    entries = bytearray(128 * 128)
    for i, guid in enumerate(guids):
        entries[i * 128:i * 128 + 16] = uuid.UUID(PART_GUIDS[0]).bytes_le  # type GUID
        entries[i * 128 + 16:i * 128 + 32] = uuid.UUID(guid).bytes_le
        name = names[i].encode("utf-16-le")
        entries[i * 128 + 56:i * 128 + 56 + len(name)] = name
    path.write_bytes(bytes(sector) + header + entries + bytes(sector * 8))


def mbr_disk(path: Path, signature: int, types: tuple[int, ...]) -> None:
    mbr = bytearray(512)
    struct.pack_into("<I", mbr, 440, signature)
    for i, ptype in enumerate(types):
        mbr[446 + 16 * i + 4] = ptype
    mbr[510:512] = b"\x55\xaa"
    path.write_bytes(bytes(mbr) + bytes(4096))


def test_probe_ext4(ext4_image: Path) -> None:
    assert probe_filesystem(str(ext4_image)) == FsInfo("ext4", EXT_UUID, "demo-root")


def test_probe_squashfs(squashfs_image: Path) -> None:
    assert probe_filesystem(str(squashfs_image)) == FsInfo("squashfs")


@pytest.mark.parametrize("content", [b"", bytes(4096), b"hsq" + bytes(4000)])
def test_probe_unknown(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "blob").write_bytes(content)
    assert probe_filesystem(str(tmp_path / "blob")) is None
    assert probe_filesystem(str(tmp_path / "missing")) is None


def test_gpt_partitions(tmp_path: Path) -> None:
    gpt_disk(tmp_path / "disk", PART_GUIDS)
    assert read_partitions(str(tmp_path / "disk")) == {1: (PART_GUIDS[0], PART_NAMES[0]),
                                                       2: (PART_GUIDS[1], PART_NAMES[1])}


def test_gpt_4k_sectors_and_a_full_length_name(tmp_path: Path) -> None:
    gpt_disk(tmp_path / "disk", PART_GUIDS[1:], sector=4096, names=("n" * 36,))
    assert read_partitions(str(tmp_path / "disk"), 4096) == {1: (PART_GUIDS[1], "n" * 36)}


@pytest.mark.parametrize(("types", "expected"), [
    ((0x83, 0, 0x83), {1: ("1234abcd-01", ""), 3: ("1234abcd-03", "")}),
    ((0xEE,), {}),   # protective MBR of a GPT disk whose header is missing
    ((), {}),
])
def test_mbr_partitions(tmp_path: Path, types: tuple[int, ...],
                        expected: dict[int, tuple[str, str]]) -> None:
    mbr_disk(tmp_path / "disk", 0x1234ABCD, types)
    assert read_partitions(str(tmp_path / "disk")) == expected


def test_not_a_partition_table(tmp_path: Path) -> None:
    (tmp_path / "disk").write_bytes(bytes(8192))
    assert read_partitions(str(tmp_path / "disk")) == {}


@pytest.fixture
def fake_system(tmp_path: Path, ext4_image: Path, squashfs_image: Path) -> tuple[str, str]:
    """A /sys/class/block and /dev lookalike: disks vda (GPT), vdb (ext4), vdc (squashfs)."""
    sys_block, dev, devices = tmp_path / "sys", tmp_path / "dev", tmp_path / "devices"
    for d in (sys_block, dev):
        d.mkdir()
    gpt_disk(dev / "vda", PART_GUIDS)
    (dev / "vdb").write_bytes(ext4_image.read_bytes())
    (dev / "vdc").write_bytes(squashfs_image.read_bytes())
    for disk in ("vda", "vdb", "vdc"):
        (devices / disk / "queue").mkdir(parents=True)
        (devices / disk / "queue" / "logical_block_size").write_text("512\n")
        (sys_block / disk).symlink_to(devices / disk)
    for number in (1, 2):
        part = devices / "vda" / f"vda{number}"
        part.mkdir()
        (part / "partition").write_text(f"{number}\n")
        (sys_block / f"vda{number}").symlink_to(part)
        (dev / f"vda{number}").write_bytes(b"")
    return str(sys_block), str(dev)


@pytest.mark.parametrize(("spec", "found"), [
    (RootSpec(RootKind.UUID, EXT_UUID), "vdb"),
    (RootSpec(RootKind.LABEL, "demo-root"), "vdb"),
    (RootSpec(RootKind.LABEL, "Demo-Root"), None),
    (RootSpec(RootKind.PARTUUID, PART_GUIDS[1]), "vda2"),
    (RootSpec(RootKind.PARTUUID, "00000000-01"), None),
    (RootSpec(RootKind.PARTLABEL, PART_NAMES[1]), "vda2"),
    (RootSpec(RootKind.PARTLABEL, "EFI system"), "vda1"),
    (RootSpec(RootKind.PARTLABEL, "efi system"), None),      # names are case-sensitive
    (RootSpec(RootKind.PARTLABEL, "demo-root"), None),       # a filesystem label is not one
    (RootSpec(RootKind.UUID, "00000000-0000-0000-0000-000000000000"), None),
])
def test_find_device(fake_system: tuple[str, str], spec: RootSpec, found: str | None) -> None:
    sys_block, dev = fake_system
    result = find_device(spec, sys_block, dev)
    assert result == (None if found is None else f"{dev}/{found}")


def test_wait_without_uevent_socket_polls(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Hook mode's runtime has no uevent module: the wait polls until the node appears."""
    import sys
    import threading

    from agent.boot.rootdev import wait_for_device
    from agent.errors import BootError

    monkeypatch.setitem(sys.modules, "agent.boot.uevent", None)   # import fails, as there
    node = tmp_path / "vdc"
    timer = threading.Timer(0.2, node.touch)
    timer.start()
    try:
        assert wait_for_device(RootSpec(RootKind.PATH, str(node)), 5.0) == str(node)
    finally:
        timer.cancel()
    missing = RootSpec(RootKind.PATH, str(tmp_path / "vdd"))
    with pytest.raises(BootError, match=r"^root=.*vdd: device did not appear within 0.3 s$"):
        wait_for_device(missing, 0.3)
