from __future__ import annotations

import pytest

from agent.contract import ExtensionList, ExtensionMetadata, Layer, LayerKind, dump_list, parse_list
from agent.errors import ListFileError


def _list() -> ExtensionList:
    meta = ExtensionMetadata("gvisor", "1.0", "me", "desc\n", {"talos": {"version": ">= v1.0.0"}})
    return ExtensionList((Layer("000-gvisor.sqsh", meta, "ab" * 32, 4096),
                          Layer("001-modules.dep.sqsh", ExtensionMetadata("modules.dep", "6.1"),
                                "cd" * 32, 8192, LayerKind.MODULES)))


def test_dump_then_parse_is_identity() -> None:
    lst = _list()
    assert parse_list(dump_list(lst)) == lst
    assert lst.layers[0].id == "000-gvisor"


def test_dump_is_valid_yaml_with_talos_shape() -> None:
    import yaml

    doc = yaml.safe_load(dump_list(_list()))
    assert doc["layers"][0]["image"] == "000-gvisor.sqsh"
    assert doc["layers"][0]["metadata"]["compatibility"]["talos"]["version"] == ">= v1.0.0"


def test_talos_written_list_is_read() -> None:
    text = ("layers:\n  - image: 000.ghcr.io-siderolabs-gvisor-33f613e.sqsh\n"
            "    metadata:\n      name: gvisor\n      version: 2022\n")
    (layer,) = parse_list(text).layers
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
        parse_list(text)
    assert str(exc.value) == message
