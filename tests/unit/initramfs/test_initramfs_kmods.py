"""Kernel module resolution: modules.dep, pre: softdeps via aliases, built-ins, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import BuildError
from agent.initramfs.kmods import (
    BOOT_MODULES,
    DISK_MODULES,
    load_module_index,
    module_name,
    parse_softdeps,
    resolve_load_order,
)
from agent.kernels import load_kernel

CACHE = Path(__file__).resolve().parents[3] / ".cache" / "kernels"


@pytest.mark.parametrize("path, name", [
    ("kernel/fs/overlayfs/overlay.ko", "overlay"),
    ("kernel/fs/overlayfs/overlay.ko.xz", "overlay"),
    ("kernel/arch/x86/crypto/crc32c-intel.ko.zst", "crc32c_intel"),
])
def test_module_names(path: str, name: str) -> None:
    assert module_name(path) == name


def test_softdeps_keep_pre_only() -> None:
    text = "# comment\nsoftdep ext4 pre: crypto-crc32c post: foo\nsoftdep cifs gcm\n"
    assert parse_softdeps(text) == {"ext4": ("crypto-crc32c",)}


def fake_tree(tmp_path: Path, release: str = "9.9.9-test") -> Path:
    root = tmp_path / "lib/modules" / release
    (root / "kernel/fs").mkdir(parents=True)
    (root / "modules.dep").write_text(
        "kernel/fs/a.ko: kernel/fs/b.ko kernel/fs/c.ko\nkernel/fs/b.ko: kernel/fs/c.ko\n"
        "kernel/fs/c.ko:\nkernel/fs/d.ko:\nkernel/fs/gone.ko:\n")
    (root / "modules.softdep").write_text("softdep a pre: crypto-d\n")
    (root / "modules.alias").write_text("alias crypto-d d_intel\nalias crypto-d d\n")
    (root / "modules.builtin").write_text("kernel/fs/e.ko\n")
    for m in "abcd":
        (root / f"kernel/fs/{m}.ko").write_bytes(b"\x7fELF")
    return root


def test_load_order_puts_softdeps_and_dependencies_first(tmp_path: Path) -> None:
    root = fake_tree(tmp_path)
    order = resolve_load_order(load_module_index(root, root.name), ["a", "e", "c"])
    assert [m.name for m in order] == ["d", "c", "b", "a"]


@pytest.mark.parametrize("wanted, message", [
    (["nosuch"], "module nosuch: not in {root}/modules.dep"),
    (["gone"], "module gone: file {root}/kernel/fs/gone.ko missing"),
    (["nosuch", "gone"], "module nosuch: not in {root}/modules.dep; "
                         "module gone: file {root}/kernel/fs/gone.ko missing"),
])
def test_bad_modules_are_reported_together(tmp_path: Path, wanted: list[str],
                                           message: str) -> None:
    root = fake_tree(tmp_path)
    with pytest.raises(BuildError) as exc:
        resolve_load_order(load_module_index(root, root.name), wanted)
    assert str(exc.value) == message.format(root=root)


def test_wrong_release_is_one_clear_error(tmp_path: Path) -> None:
    root = fake_tree(tmp_path)
    with pytest.raises(BuildError) as exc:
        load_module_index(root, "6.1.0-99-amd64")
    assert str(exc.value) == (f"{root}: modules folder is for kernel release 9.9.9-test, "
                              "not 6.1.0-99-amd64")


@pytest.mark.parametrize("suite, suffix", [("bookworm", ".ko"), ("trixie", ".ko.xz")])
def test_stock_kernels_resolve_the_boot_modules(suite: str, suffix: str) -> None:
    if not (CACHE / suite / "kernel-release").exists():
        pytest.skip("run `make kernels` first")
    k = load_kernel(CACHE, suite)
    order = resolve_load_order(load_module_index(k.modules_dir, k.release),
                               BOOT_MODULES + DISK_MODULES)
    names = [m.name for m in order]
    assert all(m.relpath.endswith(suffix) for m in order)
    for needed in ("loop", "squashfs", "overlay", "virtio_blk", "ext4", "jbd2", "mbcache",
                   "crc16", "crc32c_generic"):
        assert needed in names
    # dependencies and the crc32c softdep come before ext4; crc32c_intel (CPU-specific) never
    assert names.index("crc32c_generic") < names.index("jbd2") < names.index("ext4")
    assert "crc32c_intel" not in names
    assert len(names) == len(set(names))
