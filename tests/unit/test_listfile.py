from __future__ import annotations

import json

import pytest

from agent.errors import ListFileError
from agent.listfile import (
    KIND_MODULES,
    Layer,
    Metadata,
    Verity,
    dump_list,
    image_name,
    layer_id,
    read_list,
)


def _list() -> tuple[Layer, ...]:
    meta = Metadata("gvisor", "1.0", "me", "desc\n", {"talos": {"version": ">= v1.0.0"}})
    return (Layer("000-gvisor.sqsh", meta, "ab" * 32, 4096),
            Layer("001-modules.dep.sqsh", Metadata("modules.dep", "6.1"), "cd" * 32, 8192,
                  KIND_MODULES))


def test_dump_then_parse_is_identity() -> None:
    lst = _list()
    assert read_list(dump_list(lst)) == lst
    assert lst[0].id == "000-gvisor"


def test_dump_is_valid_yaml_with_talos_shape() -> None:
    import yaml

    doc = yaml.safe_load(dump_list(_list()))
    assert doc["layers"][0]["image"] == "000-gvisor.sqsh"
    assert doc["layers"][0]["metadata"]["compatibility"]["talos"]["version"] == ">= v1.0.0"


def test_talos_written_list_is_read() -> None:
    text = ("layers:\n  - image: 000.ghcr.io-siderolabs-gvisor-33f613e.sqsh\n"
            "    metadata:\n      name: gvisor\n      version: 2022\n")
    (layer,) = read_list(text)
    assert layer.metadata.version == "2022" and layer.sha256 == "" and layer.size == -1


@pytest.mark.parametrize("text,message", [
    ('{"version": 9, "layers": []}', "/extensions.yaml: unknown schema version 9 "
     "(this agent reads version 1)"),
    ('{"layers": [{"image": "../x"}]}', "/extensions.yaml: layers[0]: image '../x' is not a "
     "plain file name"),
    ('{"layers": [{"image": "a", "metadata": {"name": "a"}}]}',
     "/extensions.yaml: layers[0]: metadata has no version"),
    ("layers: [", "/extensions.yaml: not valid YAML at line 1"),
    ('{"layers": {}}', "/extensions.yaml: layers is not a list"),
])
def test_bad_lists_give_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(ListFileError) as exc:
        read_list(text)
    assert str(exc.value) == message


@pytest.mark.parametrize(("index", "name", "image"), [
    (0, "gvisor", "000-gvisor.sqsh"), (10, "a", "010-a.sqsh"), (498, "x", "498-x.sqsh"),
    (2, "modules.dep", "002-modules.dep.sqsh"), (3, "a/b c", "003-a-b-c.sqsh"),
    (4, "..", "004-extension.sqsh"), (12, "intel ucode/x", "012-intel-ucode-x.sqsh"),
])
def test_image_names_sort_in_layer_order_and_give_the_id(index: int, name: str, image: str) -> None:
    assert image_name(index, name) == image
    assert layer_id(image) == image[:-5]
    assert layer_id("plain") == "plain"


ROOT_HASH = "0123456789abcdef" * 4
TREE = Verity(ROOT_HASH, "5a" * 32, 8192, 8192)


def test_verity_and_store_round_trip_and_stay_out_of_plain_layers() -> None:
    meta = Metadata("tool", "1.0")
    layers = (Layer("000-tool.sqsh", meta, "ab" * 32, 16384, verity=TREE),
              Layer("001-st.sqsh", meta, "cd" * 32, 16384, verity=TREE,
                    store="0A1B-2C3D", path="oa/" + "cd" * 32 + ".sqsh"))
    text = dump_list(layers)
    assert read_list(text) == layers
    doc = json.loads(text)
    assert doc["layers"][0]["verity"] == {"root_hash": ROOT_HASH, "salt": "5a" * 32,
                                          "data_size": 8192, "hash_offset": 8192}
    assert "store" not in doc["layers"][0] and doc["layers"][1]["store"] == "0A1B-2C3D"
    assert "verity" not in json.loads(dump_list(_list()))["layers"][0]


def test_table_counts_hash_blocks_past_the_superblock() -> None:
    assert (TREE.data_blocks, TREE.hash_start_block) == (2, 3)


def _with(**changes: object) -> str:
    raw: dict[str, object] = {"image": "000-t.sqsh", "metadata": {"name": "t", "version": "1"},
                              "verity": TREE.to_dict()}
    raw.update(changes)
    return json.dumps({"layers": [raw]})


AT = "/extensions.yaml: layers[0]: "


@pytest.mark.parametrize("text,message", [
    (_with(verity=[]), AT + "verity is not a mapping"),
    (_with(verity={**TREE.to_dict(), "root_hash": "AB" * 32}),
     AT + "verity root_hash is not 64 lowercase hex digits"),
    (_with(verity={**TREE.to_dict(), "salt": "abc"}),
     AT + "verity salt is not lowercase hex of at most 256 bytes"),
    (_with(verity={**TREE.to_dict(), "data_size": 100}),
     AT + "verity data_size 100 is not a positive multiple of 4096"),
    (_with(verity={**TREE.to_dict(), "hash_offset": True}),
     AT + "verity hash_offset True is not a positive multiple of 4096"),
    (_with(verity={**TREE.to_dict(), "hash_offset": 4096}),
     AT + "verity hash_offset 4096 is inside the data (8192 bytes)"),
    (_with(store="not a uuid!", path="a.sqsh"), AT + "store 'not a uuid!' is not a filesystem UUID"),
    (_with(store="0A1B-2C3D", path="a.sqsh", verity=None),
     AT + "a store image needs verity (its root hash is what vouches for it)"),
    (_with(store="0A1B-2C3D", path="/abs.sqsh"),
     AT + "store path '/abs.sqsh' is not a relative path"),
    (_with(store="0A1B-2C3D", path="oa/../x.sqsh"),
     AT + "store path 'oa/../x.sqsh' has an empty, . or .. part"),
    (_with(store="0A1B-2C3D"), AT + "store path None is not a relative path"),
    # hostile values: bounded, printable, and nothing the device-mapper table cannot hold
    (_with(verity={**TREE.to_dict(), "data_size": 2**70}),
     AT + "verity data_size is over the limit of 4611686018427387904 bytes"),
    (_with(verity={**TREE.to_dict(), "hash_offset": "9" * 100}),
     AT + "verity hash_offset '" + "9" * 36 + "... is not a positive "
          "multiple of 4096"),
    (_with(verity={**TREE.to_dict(), "salt": "g" * 2}),
     AT + "verity salt is not lowercase hex of at most 256 bytes"),
    (_with(verity={**TREE.to_dict(), "salt": "ab" * 257}),
     AT + "verity salt is not lowercase hex of at most 256 bytes"),
    (_with(verity={**TREE.to_dict(), "root_hash": "0" * 63 + "\n"}),
     AT + "verity root_hash is not 64 lowercase hex digits"),
    (_with(size=8192), AT + "verity hash_offset 8192 is past the image's end (8192 bytes)"),
    (_with(store="-" * 9, path="a.sqsh"), AT + "store '---------' is not a filesystem UUID"),
    (_with(store="a" * 37, path="a.sqsh"), AT + "store '" + "a" * 37 + "' is not a filesystem UUID"),
    (_with(store=["0A1B-2C3D"], path="a.sqsh"), AT + "store ['0A1B-2C3D'] is not a filesystem UUID"),
    (_with(store="x" * 5000, path="a.sqsh"), AT + "store '" + "x" * 36 + "... is not a filesystem UUID"),
    (_with(store="0A1B-2C3D", path="oa/x\n.sqsh"),
     AT + "store path 'oa/x\\n.sqsh' holds a control character or an undecodable byte"),
    (_with(store="0A1B-2C3D", path="oa/\u001b[2J.sqsh"),
     AT + "store path 'oa/\\x1b[2J.sqsh' holds a control character or an undecodable byte"),
    (_with(store="0A1B-2C3D", path="a\u0000b"),
     AT + "store path 'a\\x00b' holds a control character or an undecodable byte"),
    (_with(store="0A1B-2C3D", path="a/" * 2100 + "x"),
     AT + "store path is over 4095 bytes or has a part over 255"),
    (_with(store="0A1B-2C3D", path="x" * 256), AT + "store path is over 4095 bytes or has a part over 255"),
    (_with(store="0A1B-2C3D", path=7), AT + "store path 7 is not a relative path"),
])
def test_bad_verity_and_store_fields_give_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(ListFileError) as exc:
        read_list(text)
    assert str(exc.value) == message
