"""The fields added after the first fuzz properties: `overlay_agent.upper=` (root='s device
grammar, tmpfs:SIZE, :/DIR), a list's store UUID and path, and its dm-verity fields. Each:
a value within its stated bounds, or the typed error; never anything else."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agent import listfile, syscalls
from agent.boot.cmdline import UPPER_KEY, UpperSpec, parse_upper, scan_cmdline
from agent.boot.verity import verity_table
from agent.errors import BootError, ListFileError
from tests.fuzz.strategies import JSON_VALUES, NASTY_TEXT

DEVICE_HEADS = ["tmpfs", "tmpfs:", "UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "/dev/",
                "/dev/disk/by-label/", "/dev/disk/by-uuid/", ""]
UPPER_VALUES = NASTY_TEXT | st.tuples(
    st.sampled_from(DEVICE_HEADS), NASTY_TEXT | st.from_regex(r"[0-9a-fA-F-]{0,40}[kmg%]?",
                                                              fullmatch=True),
    st.sampled_from(["", ":/", ":", ":/a/../b", ":/x,y"]), NASTY_TEXT,
).map("".join)


def upper_spec_in_bounds(spec: UpperSpec) -> None:
    assert spec.dir.startswith("/") and spec.dir.isprintable()
    assert len(spec.dir.encode()) <= 4095 and ".." not in spec.dir.split("/")
    if spec.device is None:
        number = spec.size.rstrip("kKmMgG%")
        assert spec.size == "" or (number.isdigit() and number.isascii() and len(number) <= 18)
    else:
        assert spec.device.value.isprintable() and spec.device.value


@given(UPPER_VALUES)
def test_upper_value_parses_in_bounds_or_boot_error(value: str) -> None:
    try:
        spec = parse_upper(value)
    except BootError as exc:
        assert str(exc).startswith(UPPER_KEY)
    else:
        upper_spec_in_bounds(spec)
    scanned = scan_cmdline(f'"{UPPER_KEY}={value}"')   # the command line never raises
    if scanned.upper is not None:
        upper_spec_in_bounds(scanned.upper)


TREE = {"root_hash": "0" * 64, "salt": "", "data_size": 4096, "hash_offset": 4096}
STORE_VALUES = JSON_VALUES | st.from_regex(r"[0-9a-fA-F-]{0,40}", fullmatch=True)
PATH_VALUES = JSON_VALUES | st.lists(NASTY_TEXT | st.sampled_from(
    ["oa", "..", ".", "", "x" * 256, "c" * 64 + ".sqsh"]), min_size=1, max_size=4).map("/".join)


@given(STORE_VALUES, PATH_VALUES, st.booleans(), JSON_VALUES)
def test_store_fields_read_in_bounds_or_list_file_error(store: Any, path: Any, tree: bool,
                                                        size: Any) -> None:
    raw = {"image": "000-x.sqsh", "store": store, "path": path, "size": size,
           "metadata": {"name": "x", "version": "1"}, **({"verity": TREE} if tree else {})}
    try:
        layer = listfile.check_layer(json.loads(json.dumps(raw)), "L")
    except ListFileError as exc:
        assert str(exc).startswith("L: ") and "\n" not in str(exc) and len(str(exc)) < 400
        return
    if layer.store:
        assert set(layer.store) <= set("0123456789abcdefABCDEF-") and len(layer.store) <= 36
        assert layer.verity is not None and layer.path.isprintable()
        assert not layer.path.startswith("/") and len(layer.path.encode()) <= 4095
        assert all(part not in ("", ".", "..") for part in layer.path.split("/"))


# near the bounds often: the limits themselves (twice the weight), block multiples up to
# 2**78, anything
BOUNDS = st.sampled_from([4096, 2**62 - 4096, 2**62, 2**64, 2**73, 2**80])
VERITY_INTS = BOUNDS | BOUNDS | st.integers(min_value=-4, max_value=2**66).map(
    lambda n: n * 4096) | st.integers(min_value=-2**80, max_value=2**80)


@st.composite
def verity_docs(draw: Any) -> Any:
    """A tree that passes the field checks but for its sizes, then up to two fields
    replaced by anything (a random mapping rarely gets that far)."""
    size = draw(VERITY_INTS)
    doc: dict[str, Any] = {"root_hash": "0" * 64, "salt": "", "data_size": size,
                           "hash_offset": size if draw(st.booleans()) else draw(VERITY_INTS)}
    for key in draw(st.lists(st.sampled_from(sorted(doc)), max_size=2, unique=True)):
        doc[key] = draw(JSON_VALUES | st.from_regex(r"[0-9a-fA-F]{0,66}", fullmatch=True))
    return doc


VERITY_DOCS = JSON_VALUES | verity_docs()


@given(VERITY_DOCS, st.booleans())
def test_verity_fields_read_in_bounds_or_list_file_error(doc: Any, strict: bool) -> None:
    try:
        tree = listfile.Verity.from_dict(doc, "L")
    except ListFileError as exc:
        assert str(exc).startswith("L: ") and "\n" not in str(exc) and len(str(exc)) < 200
        return
    assert 0 < tree.data_size <= tree.hash_offset < listfile.VERITY_MAX_OFFSET
    assert tree.data_size % 4096 == 0 and tree.hash_offset % 4096 == 0
    assert len(tree.root_hash) == 64 and len(tree.salt) % 2 == 0 and len(tree.salt) <= 512
    # whatever passed, the device-mapper table for it can be built and packed
    syscalls.dm_target(*verity_table(tree, "7:0", strict))
