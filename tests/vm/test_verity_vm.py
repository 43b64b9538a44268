"""dm-verity layers and the image store under QEMU on both stock kernels.

Four boots per kernel, each running its checks in the guest (see extensions.py):
- `verity`: a good layer reads; a byte flipped in one file's data (layer 1) and in the
  hash tree block over that file (layer 2) give EIO on that file only, a kernel log line,
  and `corrupted` in `get extensions`; a wrong root hash in the list fails layer 3's mount.
- `verity-strict`: overlay_agent.strict makes reading a corrupted block a kernel panic.
- `store-a` / `store-b`: three extensions in a store on a second disk, ext4 then vfat,
  after an upgrade (v1 then v2 images in one store) and a gc that kept both the running
  (v1) and the new (v2) images and removed an unreferenced one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from extensions import (
    Check,
    ExtensionSpec,
    all_lines,
    append_archive,
    assert_all_passed,
    bake,
    boot_scenario,
    demo_root_key,
    render_checks,
    table_row,
)

from agent import cpio, listfile
from agent.bake.segments import merged_members, split_segments
from agent.bake.store import Store, collect_garbage
from agent.errors import SourceError
from agent.kernels import Kernel, load_kernel
from agent.tools import run
from devtools.demo import DONE_MARKER, build_demo_root
from devtools.images import CACHE, initramfs, prune

ROOT = Path(__file__).resolve().parents[2]
SUITES = ("bookworm", "trixie")
KIB = 1024
HASHES_PER_BLOCK = listfile.VERITY_BLOCK // 32     # sha256 digests in one hash block


def blob(seed: str, size: int) -> bytes:
    """Incompressible (stored raw by mksquashfs, so its bytes can be found in the image)."""
    return random.Random(seed).randbytes(size)


def victim(name: str) -> ExtensionSpec:
    """a.bin and c.bin around b.bin: b.bin is large enough that one hash-tree block
    (128 data blocks, 512 KiB) covers nothing but b.bin."""
    base = f"usr/local/share/{name}"
    return ExtensionSpec(name, {f"{base}/a.bin": blob("a", 200 * KIB),
                                f"{base}/b.bin": blob("b", 1536 * KIB),
                                f"{base}/c.bin": blob("c", 200 * KIB)})


HELLO = ExtensionSpec("hello-v", {"usr/local/share/hello-v/greeting": b"hello verity\n"})
VERITY_SPECS = [HELLO, victim("victim-d"), victim("victim-t"),
                ExtensionSpec("badroot", {"usr/local/share/badroot/x": b"x\n"})]
IDS = [f"{i:03d}-{s.name}" for i, s in enumerate(VERITY_SPECS)]


def store_specs(version: str) -> list[ExtensionSpec]:
    return [ExtensionSpec(f"st-{n}", {f"usr/local/share/st-{n}/v": f"{n} {version}\n".encode()},
                          version) for n in ("one", "two", "three")]


# ---------------------------------------------------------------- checks in the guest

def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def reads_ok(name: str, files: Sequence[str]) -> str:
    spec = victim(name)
    return " && ".join(
        f'[ "$(sha256sum /usr/local/share/{name}/{f} | cut -d" " -f1)" = '
        f'"{digest(spec.files[f"usr/local/share/{name}/{f}"])}" ]' for f in files)


def eio(path: str) -> str:
    return f"if cat {path} > /dev/null 2>/tmp/err; then false; else grep -qi 'input/output error' /tmp/err; fi"


LISTING_AFTER = "overlay-agent get extensions > /tmp/table2 2>&1; cat /tmp/table2 >&2"
MOUNT_EIO = (r"mount squashfs /extensions/003-badroot\.sqsh from /dev/dm-[0-9]+: "
             r"Input/output error")
CORRUPTED = r"corrupted +dm-verity: a block failed its hash check \(see the kernel log\)"


def verity_checks() -> list[Check]:
    rows = [table_row(IDS[0], "hello-v", "1.0.0", "active", "verity"),
            table_row(IDS[1], "victim-d", "1.0.0", CORRUPTED, "verity"),
            table_row(IDS[2], "victim-t", "1.0.0", CORRUPTED, "verity"),
            table_row(IDS[3], "badroot", "1.0.0", f"failed +{MOUNT_EIO}", "verity")]
    return [
        Check("mapper-control", "[ -c /dev/mapper/control ]"),
        Check("greeting", '[ "$(cat /usr/local/share/hello-v/greeting)" = "hello verity" ]'),
        Check("before-read", "grep -Eq ' verity +active$' /tmp/table && "
                             "! grep -q corrupted /tmp/table"),
        Check("data-intact", reads_ok("victim-d", ["a.bin", "c.bin"])),
        Check("tree-intact", reads_ok("victim-t", ["a.bin", "c.bin"])),
        Check("data-eio", eio("/usr/local/share/victim-d/b.bin")),
        Check("tree-eio", eio("/usr/local/share/victim-t/b.bin")),
        Check("kernel-log", "dmesg | grep -Eq 'verity.*(data|metadata) block [0-9]+ is "
                            "corrupted'"),
        Check("badroot-gone", "[ ! -e /usr/local/share/badroot ]"),
        Check("listing", f"{LISTING_AFTER}; " + all_lines("/tmp/table2", rows)),
    ]


def strict_checks() -> list[Check]:
    return [Check("strict-read", "cat /usr/local/share/victim-d/b.bin > /dev/null; "
                                 "echo STRICT-READ-RETURNED")]


def store_checks(version: str) -> list[Check]:
    names = ("one", "two", "three")
    reads = " && ".join(f'[ "$(cat /usr/local/share/st-{n}/v)" = "{n} {version}" ]'
                        for n in names)
    rows = [table_row(f"{i:03d}-st-{n}", f"st-{n}", version, check="verity")
            for i, n in enumerate(names)]
    return [Check("files", reads),
            Check("store-ro", "grep -Eq '^/dev/vda /run/oa/store0 (ext4|vfat) ro,' "
                              "/proc/mounts"),
            Check("listing", all_lines("/tmp/table", rows))]


SCENARIOS: Mapping[str, Sequence[Check]] = {
    "verity": verity_checks(), "verity-strict": strict_checks(),
    "store-a": store_checks("1.0.0"), "store-b": store_checks("2.0.0"),
}

# ---------------------------------------------------------------- corruption


def image_of(baked: Path, ext_id: str) -> bytes:
    members = merged_members(split_segments(baked.read_bytes(), str(baked)))
    return members[f"extensions/{ext_id}.sqsh"].content()


def list_of(baked: Path) -> tuple[listfile.Layer, ...]:
    members = merged_members(split_segments(baked.read_bytes(), str(baked)))
    return listfile.read_list(members["extensions.yaml"].content().decode())


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def middle_of_b(image: bytes, spec: ExtensionSpec) -> tuple[int, int, int]:
    """(offset of b.bin's middle byte, b.bin's first and last offset) in the image."""
    b = spec.files[f"usr/local/share/{spec.name}/b.bin"]
    start = image.find(b[:4096])
    assert start >= 0 and image[start:start + len(b)] == b, "b.bin not stored raw"
    return start + len(b) // 2, start, start + len(b) - 1


def level0_offset(tree: listfile.Verity, data_block: int) -> int:
    """File offset of the level-0 hash block over `data_block`: the tree follows its 4 KiB
    superblock, top level first (drivers/md/dm-verity-target.c, verity_ctr)."""
    sizes = [-(-tree.data_blocks // HASHES_PER_BLOCK)]
    while sizes[-1] > 1:
        sizes.append(-(-sizes[-1] // HASHES_PER_BLOCK))
    above = sum(sizes[1:])
    block = listfile.VERITY_BLOCK
    return tree.hash_offset + block + (above + data_block // HASHES_PER_BLOCK) * block


def data_flipped(image: bytes) -> bytes:
    at, _, _ = middle_of_b(image, VERITY_SPECS[1])
    return flip(image, at)


def tree_flipped(image: bytes, tree: listfile.Verity) -> bytes:
    at, first, last = middle_of_b(image, VERITY_SPECS[2])
    block = at // listfile.VERITY_BLOCK
    covered = (block // HASHES_PER_BLOCK * HASHES_PER_BLOCK * listfile.VERITY_BLOCK,
               (block // HASHES_PER_BLOCK + 1) * HASHES_PER_BLOCK * listfile.VERITY_BLOCK - 1)
    assert first <= covered[0] and covered[1] <= last, "that hash block covers more than b.bin"
    return flip(image, level0_offset(tree, block))


def wrong_root(layers: Sequence[listfile.Layer], index: int) -> bytes:
    tree = layers[index].verity
    assert tree is not None
    bad = ("0" if tree.root_hash[0] != "0" else "1") + tree.root_hash[1:]
    changed = [layer.replace(verity=tree.replace(root_hash=bad)) if i == index else layer
               for i, layer in enumerate(layers)]
    return listfile.dump_list(changed).encode()


# ---------------------------------------------------------------- store disks

EXT4_UUID = "7a3d2c1b-4e5f-4a6b-9c8d-0e1f2a3b4c5d"
VFAT_ID = "0A1B2C3D"
VFAT_UUID = "0A1B-2C3D"
STORE_PREFIX = "oa"


def ext4_disk(tree: Path, out: Path) -> Path:
    run(["mkfs.ext4", "-q", "-F", "-U", EXT4_UUID, "-O", "^has_journal", "-E",
         "root_owner=0:0", "-d", tree, out, "64M"],
        env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"}, capture=True)
    return out


def vfat_disk(tree: Path, out: Path) -> Path:
    out.unlink(missing_ok=True)
    run(["mkfs.vfat", "-C", "-i", VFAT_ID, out, str(64 * 1024)], capture=True)
    run(["mcopy", "-s", "-i", out, tree / STORE_PREFIX, "::/"], capture=True)
    return out


# ---------------------------------------------------------------- fixtures

@dataclass(frozen=True)
class Images:
    kernel: Kernel
    verity: Path           # good layer, data flip, tree flip, wrong root hash
    strict: Path           # only the data flip
    store_a: Path          # v1 list, images on the store disks
    store_b: Path          # v2 list
    ext4: Path             # store disk after upgrade + gc
    vfat: Path
    removed: tuple[str, ...]
    kept: tuple[str, ...]
    referenced: tuple[str, ...]
    logs: Path


@pytest.fixture(scope="session")
def verity_root() -> Path:
    extra_init = render_checks(SCENARIOS)
    out = CACHE / f"verity-root-{demo_root_key(extra_init)}.sqsh"
    if not out.exists():
        build_demo_root(out, extra_init=extra_init)
        prune(CACHE, "verity-root-*.sqsh", keep=2)
    return out


@pytest.fixture(scope="session", params=SUITES)
def images(request: pytest.FixtureRequest, verity_root: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Images:
    try:
        kernel = load_kernel(ROOT / ".cache" / "kernels", request.param)
    except SourceError as exc:
        pytest.fail(str(exc))
    work = tmp_path_factory.mktemp(f"verity-{kernel.suite}")
    agent_initrd = initramfs(kernel, verity_root)
    good = bake(kernel, agent_initrd, verity_root, VERITY_SPECS, "verity", work, verity=True)
    layers = list_of(good)
    assert [layer.image for layer in layers] == [f"{i}.sqsh" for i in IDS]   # no modules layer
    tree_t = layers[2].verity
    assert tree_t is not None
    d_image = data_flipped(image_of(good, IDS[1]))
    corrupt = append_archive(good, [
        cpio.regular(f"extensions/{IDS[1]}.sqsh", d_image),
        cpio.regular(f"extensions/{IDS[2]}.sqsh", tree_flipped(image_of(good, IDS[2]), tree_t)),
        cpio.regular("extensions.yaml", wrong_root(layers, 3))], work / "verity.img")
    strict = append_archive(good, [cpio.regular(f"extensions/{IDS[1]}.sqsh", d_image)],
                            work / "strict.img")
    # the store: v1 baked (running), then the upgrade to v2 into the same folder, then gc
    tree = work / "storefs"
    folder = tree / STORE_PREFIX
    folder.mkdir(parents=True)
    (folder / f"{'0' * 64}.sqsh").write_bytes(b"an image no list names")
    a_ext4 = bake(kernel, agent_initrd, verity_root, store_specs("1.0.0"), "store-a", work,
                  verity=True, store=Store(folder, EXT4_UUID, STORE_PREFIX))
    b_vfat = bake(kernel, agent_initrd, verity_root, store_specs("2.0.0"), "store-b", work,
                  verity=True, store=Store(folder, VFAT_UUID, STORE_PREFIX))
    running = work / "running-extensions.yaml"    # /etc/extensions.yaml of the v1 system
    running.write_bytes(merged_members(split_segments(a_ext4.read_bytes(), "a"))[
        "extensions.yaml"].content())
    removed = collect_garbage(folder, [b_vfat], running)
    referenced = tuple(sorted(os.path.basename(layer.path)
                              for baked in (a_ext4, b_vfat) for layer in list_of(baked)))
    kept = tuple(sorted(p.name for p in folder.glob("*.sqsh")))
    return Images(kernel, corrupt, strict, a_ext4, b_vfat, ext4_disk(tree, work / "st.ext4"),
                  vfat_disk(tree, work / "st.vfat"), tuple(removed), kept, referenced, work)


# ---------------------------------------------------------------- scenarios

def test_verity_layers_corruption_gives_eio_and_shows_corrupted(images: Images) -> None:
    result, verdicts = boot_scenario(images.kernel, images.verity, "verity", images.logs)
    assert_all_passed(result, verdicts, SCENARIOS, "verity")
    assert re.search(rf"^overlay-agent: extension 003-badroot: failed: {MOUNT_EIO}$",
                     result.output, re.M), result.output[-3000:]


def test_verity_corruption_is_fatal_when_strict(images: Images) -> None:
    result, _ = boot_scenario(images.kernel, images.strict, "verity-strict", images.logs,
                              "overlay_agent.strict")
    tail = result.output[-3000:]
    assert "Kernel panic - not syncing: dm-verity device corrupted" in result.output, tail
    assert "STRICT-READ-RETURNED" not in result.output, tail
    assert DONE_MARKER not in result.output, tail


def test_store_upgrade_and_gc_keep_the_running_images(images: Images) -> None:
    assert images.removed == ("0" * 64 + ".sqsh",)
    assert images.kept == images.referenced and len(images.kept) == 6
    for baked in (images.store_a, images.store_b):   # only the list went into the initramfs
        members = merged_members(split_segments(baked.read_bytes(), str(baked)))
        assert not [n for n in members if n.startswith("extensions/")], sorted(members)
        doc = json.loads(members["extensions.yaml"].content())
        assert {layer["store"] for layer in doc["layers"]} <= {EXT4_UUID, VFAT_UUID}


def test_store_on_ext4_boots_the_running_version(images: Images) -> None:
    result, verdicts = boot_scenario(images.kernel, images.store_a, "store-a", images.logs,
                                     disk=images.ext4)
    assert_all_passed(result, verdicts, SCENARIOS, "store-a")


def test_store_on_vfat_boots_the_upgrade(images: Images) -> None:
    result, verdicts = boot_scenario(images.kernel, images.store_b, "store-b", images.logs,
                                     disk=images.vfat)
    assert_all_passed(result, verdicts, SCENARIOS, "store-b")
