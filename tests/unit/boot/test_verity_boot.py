"""agent.boot.verity's pure parts: which check a layer gets, the dm-verity table line,
and whether the kernel will have dm-verity (the device-mapper work runs in the VM tier)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import syscalls
from agent.boot import verity
from agent.listfile import Layer, Metadata, Verity
from agent.statusfile import CHECK_NONE, CHECK_SHA256, CHECK_VERITY

ROOT = "0123456789abcdef" * 4
TREE = Verity(ROOT, "5a" * 32, 3 * 4096, 3 * 4096)
META = Metadata("t", "1")


def test_table_counts_in_sectors_and_blocks_past_the_tree_superblock() -> None:
    assert verity.verity_table(TREE, "7:3", strict=False) == (
        0, 24, "verity", f"1 7:3 7:3 4096 4096 3 4 sha256 {ROOT} {'5a' * 32}")


def test_strict_makes_corruption_a_panic() -> None:
    assert verity.verity_table(TREE, "7:3", strict=True)[3].endswith(
        " 1 panic_on_corruption")


def test_an_empty_salt_is_a_dash() -> None:
    assert verity.verity_table(TREE.replace(salt=""), "7:3", False)[3].endswith(f"{ROOT} -")


@pytest.mark.parametrize("layer, has_verity, check", [
    (Layer("a.sqsh", META, "ab" * 32, 4096, verity=TREE), True, CHECK_VERITY),
    (Layer("a.sqsh", META, "ab" * 32, 4096, verity=TREE), False, CHECK_SHA256),
    (Layer("a.sqsh", META, "ab" * 32, 4096), True, CHECK_SHA256),
    (Layer("a.sqsh", META), True, CHECK_NONE),        # a Talos-written list
])
def test_check_follows_the_list_and_the_kernel(layer: Layer, has_verity: bool,
                                               check: str) -> None:
    assert verity.choose_check(layer, has_verity) == check


@pytest.mark.parametrize("lines, loaded, expected", [
    ("/lib/modules/6.1.0/kernel/drivers/md/dm-verity.ko.xz\n", False, True),
    ("/lib/modules/6.1.0/kernel/fs/squashfs/squashfs.ko.xz\n", False, False),
    ("", True, True),
    (None, False, False),
])
def test_kernel_has_verity_when_loaded_or_about_to_be(tmp_path: Path, lines: str | None,
                                                      loaded: bool, expected: bool) -> None:
    load = tmp_path / "modules.load"
    if lines is not None:
        load.write_text(lines)
    sys_module = tmp_path / "dm_verity"
    if loaded:
        sys_module.mkdir()
    assert verity.kernel_has_verity(str(load), str(sys_module)) is expected


def test_device_state_without_a_device_mapper_is_unknown() -> None:
    if Path(syscalls.DM_CONTROL).exists():
        pytest.skip("this kernel has a device mapper")
    assert verity.device_state("oa-layer-000") == ""


def test_reserves_are_lowered_while_devices_are_made_then_put_back(tmp_path: Path) -> None:
    param = tmp_path / "reserved_bio_based_ios"
    param.write_text("16\n")
    old = verity.lower_reserves(str(param))
    assert (old, param.read_text()) == ("16", verity.LEAN_RESERVE)
    verity.restore_reserves(old, str(param))
    assert param.read_text() == "16"
    # no dm-mod (or no such parameter): nothing to put back, nothing raised
    assert verity.lower_reserves(str(tmp_path / "none")) == ""
    verity.restore_reserves("", str(tmp_path / "none"))
    assert not (tmp_path / "none").exists()
