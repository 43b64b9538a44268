from __future__ import annotations

import pytest

from agent.errors import ListFileError
from agent.listfile import KIND_MODULES, Layer, Metadata, dump_list, image_name, layer_id, read_list


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
