"""Build side of dm-verity and the image store, gc, and the boot's sha256 fallback on this
machine's kernel (no device mapper): real mksquashfs, veritysetup, loop and squashfs."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from bake_support import debian_style_initrd, make_extension, overlay_agent

from agent import listfile, syscalls
from agent.bake.segments import merged_members, split_segments
from agent.bake.store import collect_garbage
from agent.boot import activate
from agent.boot.activate import ActivationSettings, activate_extensions
from agent.errors import BuildError
from agent.statusfile import ACTIVE, CHECK_SHA256, FAILED, read_status
from agent.tools import run

STORE_UUID = "7a3d2c1b-4e5f-4a6b-9c8d-0e1f2a3b4c5d"


# the host's kernel here has no device mapper; where it has dm-verity, the VM tier covers it
without_dm_verity = pytest.mark.skipif(
    os.path.exists(syscalls.DM_CONTROL) or os.path.exists("/sys/module/dm_verity"),
    reason="this kernel has dm-verity: the VM tier covers it")


@pytest.fixture
def exts(tmp_path: Path) -> list[Path]:
    base = tmp_path / "exts"
    # incompressible data: more than one 4 KiB block, so the image has a hash tree block
    return [make_extension(base, "tool", {"usr/local/bin/tool": b"#!/bin/sh\necho tool\n",
                                          "usr/local/share/tool/data":
                                          random.Random(1).randbytes(300 << 10)}),
            make_extension(base, "other", {"usr/local/share/other/x": b"x\n"})]


def build(out: Path, initrd: Path, exts: list[Path], *extra: str | Path,
          check: bool = True) -> subprocess.CompletedProcess[str]:
    args = [a for e in exts for a in ("--extension", f"dir:{e}")]
    return overlay_agent("build", *args, "--initramfs", initrd, "-o", out,
                         "--os-version", "v1.7.0", *extra, check=check)


def members_of(path: Path) -> dict[str, bytes]:
    members = merged_members(split_segments(path.read_bytes(), str(path)))
    return {name: e.content() for name, e in members.items() if e.data is not None}


def layers_of(path: Path) -> tuple[listfile.Layer, ...]:
    return listfile.read_list(members_of(path)["extensions.yaml"].decode())


def test_hash_tree_verifies_with_veritysetup_and_bytes_are_reproducible(
        tmp_path: Path, exts: list[Path]) -> None:
    initrd = debian_style_initrd(tmp_path / "initrd.img")
    first, second, plain = tmp_path / "a.img", tmp_path / "b.img", tmp_path / "p.img"
    build(first, initrd, exts)
    build(second, initrd, exts)
    assert first.read_bytes() == second.read_bytes()       # salt and UUID from the content
    build(plain, initrd, exts, "--no-verity")
    images = members_of(first)
    assert layers_of(first)[0].size > layers_of(first)[0].verity.hash_offset + 4096  # type: ignore[union-attr]
    for layer, bare in zip(layers_of(first), layers_of(plain), strict=True):
        tree = layer.verity
        assert tree is not None and bare.verity is None
        image = tmp_path / layer.image
        image.write_bytes(images[f"extensions/{layer.image}"])
        # the data is the squashfs built without verity, the tree follows it
        assert image.read_bytes()[:tree.data_size] == members_of(plain)[
            f"extensions/{bare.image}"]
        assert layer.size == image.stat().st_size > tree.hash_offset == tree.data_size
        run(["veritysetup", "verify", "--hash-offset", str(tree.hash_offset), image, image,
             tree.root_hash], capture=True)
        dump = run(["veritysetup", "dump", "--hash-offset", str(tree.hash_offset), image],
                   capture=True).stdout.decode()
        assert f"Salt:            \t{tree.salt}" in dump
        assert "Data block size: \t4096" in dump and "Hash algorithm:  \tsha256" in dump
        if layer.size == tree.hash_offset + 4096:
            continue      # one data block: the root hash is its hash, no tree block
        # a flipped byte in the tree fails the userspace verification
        data = bytearray(image.read_bytes())
        data[tree.hash_offset + 4096] ^= 0xFF
        image.write_bytes(bytes(data))
        proc = run(["veritysetup", "verify", "--hash-offset", str(tree.hash_offset), image,
                    image, tree.root_hash], capture=True, check=False)
        assert proc.returncode != 0


def test_store_gets_content_named_images_and_the_initramfs_only_the_list(
        tmp_path: Path, exts: list[Path]) -> None:
    initrd = debian_style_initrd(tmp_path / "initrd.img")
    store = tmp_path / "store"
    store.mkdir()
    out = tmp_path / "out.img"
    flags = ("--store", store, "--store-uuid", STORE_UUID, "--store-path", "boot/oa")
    build(out, initrd, exts, *flags)
    layers = layers_of(out)
    assert [n for n in members_of(out) if n.startswith("extensions/")] == []
    names = sorted(p.name for p in store.glob("*.sqsh"))
    assert names == sorted(f"{layer.sha256}.sqsh" for layer in layers)
    for layer in layers:
        assert layer.store == STORE_UUID and layer.path == f"boot/oa/{layer.sha256}.sqsh"
        assert (store / f"{layer.sha256}.sqsh").stat().st_size == layer.size
    again = tmp_path / "again.img"
    build(again, initrd, exts, *flags)
    assert again.read_bytes() == out.read_bytes()
    assert sorted(p.name for p in store.glob("*.sqsh")) == names
    # a store image must carry verity: refused before anything is written
    proc = build(tmp_path / "none.img", initrd, exts, *flags, "--no-verity", check=False)
    assert proc.returncode != 0 and not (tmp_path / "none.img").exists()
    assert (f"--store {store}: store images need verity (the root hash in the initramfs is "
            "what vouches for them)") in proc.stderr


def test_gc_keeps_every_referenced_image_and_the_running_ones(tmp_path: Path,
                                                              exts: list[Path]) -> None:
    initrd = debian_style_initrd(tmp_path / "initrd.img")
    store = tmp_path / "store"
    store.mkdir()
    flags = ("--store", store, "--store-uuid", STORE_UUID, "--store-path", "oa")
    old, new = tmp_path / "old.img", tmp_path / "new.img"
    build(old, initrd, exts, *flags)
    (exts[1] / "rootfs/usr/local/share/other/x").write_bytes(b"upgraded\n")
    build(new, initrd, exts, *flags)
    old_names = {os.path.basename(layer.path) for layer in layers_of(old)}
    new_names = {os.path.basename(layer.path) for layer in layers_of(new)}
    assert len(old_names | new_names) == 3          # the unchanged extension is shared
    orphan = store / f"{'e' * 64}.sqsh"
    orphan.write_bytes(b"unreferenced")
    (store / "notes.txt").write_text("not an image name: left alone")
    running = tmp_path / "extensions.yaml"             # what the running (old) system shows
    running.write_bytes(members_of(old)["extensions.yaml"])
    assert collect_garbage(store, [new], running) == [orphan.name]
    assert {p.name for p in store.glob("*.sqsh")} == old_names | new_names
    # the old system is gone from /boot and no longer runs: its own image goes
    removed = collect_garbage(store, [new], None)
    assert removed == sorted(old_names - new_names)
    assert {p.name for p in store.glob("*.sqsh")} == new_names
    assert (store / "notes.txt").exists()


def test_gc_removes_nothing_when_an_initramfs_cannot_be_read(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    image = store / f"{'a' * 64}.sqsh"
    image.write_bytes(b"x")
    with pytest.raises(BuildError) as exc:
        collect_garbage(store, [tmp_path / "gone.img"], None)
    assert str(exc.value) == (f"{tmp_path / 'gone.img'}: cannot read: No such file or "
                              "directory; nothing removed")
    assert image.exists()
    proc = overlay_agent("gc", "--store", store, "--initramfs", tmp_path / "gone.img",
                         check=False)
    assert proc.returncode != 0 and image.exists()
    assert proc.stderr.strip() == f"overlay-agent: error: {exc.value}"


# ---------------------------------------------------------------- boot: sha256 fallback

@pytest.fixture
def work(private_mounts: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="oav", dir="/tmp"))
    monkeypatch.setattr(activate, "report", lambda line: None)
    yield path
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        point = line.split()[4]
        if point.startswith(str(path)):
            syscalls.umount2(point, syscalls.MNT_DETACH)
    shutil.rmtree(path)


@without_dm_verity
def test_without_device_mapper_verity_layers_get_the_full_sha256(
        work: Path, tmp_path: Path, exts: list[Path]) -> None:
    initrd = debian_style_initrd(tmp_path / "initrd.img")
    out = tmp_path / "out.img"
    build(out, initrd, exts)
    members = members_of(out)
    images = work / "images"
    images.mkdir()
    layers = layers_of(out)
    for layer in layers:
        (images / layer.image).write_bytes(members[f"extensions/{layer.image}"])
    tree = layers[0].verity
    assert tree is not None
    bad = bytearray((images / layers[0].image).read_bytes())
    bad[tree.hash_offset + 4096] ^= 0xFF                  # in the hash tree, not the data
    (images / layers[0].image).write_bytes(bytes(bad))
    target, settings = activate_list(work, members["extensions.yaml"], images)
    assert (target / "usr/local/share/other/x").read_bytes() == b"x\n"
    assert not (target / "usr/local/bin/tool").exists()
    status = read_status(settings.status_path)
    assert [(e.phase, e.check, e.device) for e in status.extensions] == [
        (FAILED, CHECK_SHA256, ""), (ACTIVE, CHECK_SHA256, "")]
    assert status.extensions[0].reason.startswith(f"{images / layers[0].image}: sha256 ")
    assert json.loads((work / "st.json").read_text())["extensions"][1]["check"] == "sha256"


def activate_list(work: Path, list_bytes: bytes, images: Path) -> tuple[Path, ActivationSettings]:
    (work / "extensions.yaml").write_bytes(list_bytes)
    base, target = work / "base", work / "root"
    base.mkdir()
    target.mkdir()
    syscalls.mount("base", str(base), "tmpfs", syscalls.MS_RDONLY, "mode=0755")
    settings = ActivationSettings(list_path=str(work / "extensions.yaml"),
                                  images_dir=str(images), status_path=str(work / "st.json"),
                                  staging_dir=str(work / "s"))
    assert activate_extensions(str(base), str(target), settings) == str(target)
    return target, settings


@without_dm_verity
def test_store_on_a_disk_is_found_by_uuid_and_mounted_read_only(
        work: Path, tmp_path: Path, exts: list[Path]) -> None:
    initrd = debian_style_initrd(tmp_path / "initrd.img")
    tree = tmp_path / "storefs"
    (tree / "oa").mkdir(parents=True)
    out = tmp_path / "out.img"
    build(out, initrd, exts, "--store", tree / "oa", "--store-uuid", STORE_UUID,
          "--store-path", "oa")
    disk = tmp_path / "store.ext4"
    run(["mkfs.ext4", "-q", "-F", "-U", STORE_UUID, "-O", "^has_journal", "-d", tree, disk,
         "8M"], capture=True)
    dev = run(["losetup", "--find", "--show", "--read-only", disk],
              capture=True).stdout.decode().strip()
    try:
        target, settings = activate_list(work, members_of(out)["extensions.yaml"], work)
        assert (target / "usr/local/bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"
        status = read_status(settings.status_path)
        assert [(e.phase, e.check) for e in status.extensions] == [(ACTIVE, CHECK_SHA256)] * 2
        mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
        store = [m for m in mounts if m[1] == str(work / "s" / "store0")]
        assert [(m[0], m[2], m[3].split(",")[0]) for m in store] == [(dev, "ext4", "ro")]
    finally:
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            if line.split()[4].startswith(str(work)):
                syscalls.umount2(line.split()[4], syscalls.MNT_DETACH)
        run(["losetup", "-d", dev], check=False)


def test_a_store_that_never_appears_fails_its_layers_only(
        work: Path, tmp_path: Path, exts: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.boot import store

    monkeypatch.setattr(store, "STORE_WAIT", 0.2)
    initrd = debian_style_initrd(tmp_path / "initrd.img")
    folder = tmp_path / "st"
    folder.mkdir()
    out = tmp_path / "out.img"
    build(out, initrd, exts[1:], "--store", folder, "--store-uuid", "0BAD-CAFE",
          "--store-path", "oa")
    stored = layers_of(out)[0]
    plain = tmp_path / "plain.img"
    build(plain, initrd, exts[:1])
    inline = layers_of(plain)[0]
    images = work / "images"
    images.mkdir()
    (images / inline.image).write_bytes(members_of(plain)[f"extensions/{inline.image}"])
    listing = listfile.dump_list([inline, stored.replace(image="001-other.sqsh")]).encode()
    target, settings = activate_list(work, listing, images)
    assert (target / "usr/local/bin/tool").exists()
    status = read_status(settings.status_path)
    assert [(e.phase, e.reason) for e in status.extensions] == [
        (ACTIVE, ""),
        (FAILED, "store UUID=0BAD-CAFE: no such filesystem appeared within 0.2 s")]


# ---------------------------------------------------------------- the hooks' store setting

HOOK_KVER = "6.1.0-99-amd64"
HOOK_MODULES = ("kernel/drivers/block/loop.ko", "kernel/fs/squashfs/squashfs.ko",
                "kernel/fs/overlayfs/overlay.ko")


def hook_tree(tmp_path: Path) -> tuple[Path, Path]:
    """An initramfs tree with the modules the hook script copies, and their modules folder."""
    tree, mods = tmp_path / "initrd", tmp_path / "modules" / HOOK_KVER
    for folder in (tree / "lib/modules" / HOOK_KVER, mods):
        for rel in HOOK_MODULES:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(b"\x7fELF")
    (mods / "modules.dep").write_text("".join(f"{m}:\n" for m in HOOK_MODULES))
    for name in ("modules.builtin", "modules.softdep", "modules.alias"):
        (mods / name).write_text("")
    return tree, mods


def test_hook_bakes_into_the_store_setting_and_boot_reads_it_on_the_mounted_root(
        work: Path, tmp_path: Path, exts: list[Path]) -> None:
    """`initramfs-hook` with /etc/overlay-agent/store.conf's setting: images in the store,
    only the list in the tree; at boot the store is the root filesystem, mounted read-write
    (as with `rw` on the command line), read where it is mounted, never mounted again."""
    tree, mods = hook_tree(tmp_path)
    rootfs = tmp_path / "rootfs"
    (rootfs / "var/lib/oa").mkdir(parents=True)
    config = tmp_path / "machine.yaml"
    config.write_text("machine:\n  install:\n    extensions:\n" +
                      "".join(f"      - image: dir:{e}\n" for e in exts))
    setting = tmp_path / "store.conf"
    setting.write_text(f"# the store\nSTORE={rootfs / 'var/lib/oa'}\nSTORE_UUID={STORE_UUID}\n"
                       "STORE_PATH='var/lib/oa'\n")
    hook = ("initramfs-hook", "--destdir", tree, "--kernel-release", HOOK_KVER,
            "--modules-dir", mods, "--config", config, "--cache", tmp_path / "cache")
    proc = overlay_agent(*hook, "--store-config", setting)
    assert f"2 extension(s) in the store {rootfs / 'var/lib/oa'}: tool 1.0.0" in proc.stderr
    layers = listfile.read_list((tree / "extensions.yaml").read_text())
    assert not (tree / "extensions").exists()
    assert [(la.store, la.path) for la in layers] == [
        (STORE_UUID, f"var/lib/oa/{la.sha256}.sqsh") for la in layers]
    assert sorted(p.name for p in (rootfs / "var/lib/oa").glob("*.sqsh")) == sorted(
        f"{la.sha256}.sqsh" for la in layers)
    # an unknown key is one line naming the file and line; nothing baked
    setting.write_text("STORE=/x\nSTROE_UUID=1\n")
    bad = overlay_agent(*hook, "--store-config", setting, check=False)
    assert bad.returncode != 0
    assert bad.stderr == (f"overlay-agent: error: {setting}:2: 'STROE_UUID=1': not KEY=VALUE "
                          "with KEY one of STORE, STORE_UUID, STORE_PATH\n")

    disk = tmp_path / "root.ext4"
    run(["mkfs.ext4", "-q", "-F", "-U", STORE_UUID, "-O", "^has_journal", "-d", rootfs, disk,
         "8M"], capture=True)
    dev = run(["losetup", "--find", "--show", disk], capture=True).stdout.decode().strip()
    try:
        base, target = work / "base", work / "root"
        base.mkdir()
        target.mkdir()
        syscalls.mount(dev, str(base), "ext4", 0)
        settings = ActivationSettings(list_path=str(tree / "extensions.yaml"),
                                      images_dir=str(tree / "extensions"),
                                      status_path=str(work / "st.json"),
                                      staging_dir=str(work / "s"))
        assert activate_extensions(str(base), str(target), settings) == str(target)
        assert (target / "usr/local/bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"
        assert (target / "usr/local/share/other/x").read_bytes() == b"x\n"
        status = read_status(settings.status_path)
        assert [(e.phase, e.check) for e in status.extensions] == [(ACTIVE, CHECK_SHA256)] * 2
        points = [line.split()[4] for line in
                  Path("/proc/self/mountinfo").read_text().splitlines()]
        assert not [p for p in points if p.startswith(str(work / "s" / "store"))]
    finally:
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            if line.split()[4].startswith(str(work)):
                syscalls.umount2(line.split()[4], syscalls.MNT_DETACH)
        run(["losetup", "-d", dev], check=False)
