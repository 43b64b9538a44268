from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.bake.config import find_duplicates, read_machine_config, validate_documents
from agent.errors import SourceError

CASES: list[tuple[str, list[Any], tuple[str, ...], list[str]]] = [
    ("images in order", [{"machine": {"install": {"extensions": [
        {"image": "a:1"}, {"image": " b:2 "}]}}}], ("a:1", "b:2"), []),
    ("other keys ignored", [{"version": "v1alpha1", "cluster": {"x": 1},
                             "machine": {"type": "worker", "install": {
                                 "disk": "/dev/sda", "extensions": [{"image": "a"}]}}}],
     ("a",), []),
    ("multi-document config", [{"kind": "SideroLinkConfig"},
                               {"machine": {"install": {"extensions": [{"image": "a"}]}}}],
     ("a",), []),
    ("no install section", [{"machine": {}}], (), []),
    ("no machine section", [{"cluster": {}}], (), ["m.yaml: no document with a machine section"]),
    ("empty file", [None], (), ["m.yaml: no document with a machine section"]),
    ("install not a mapping", [{"machine": {"install": []}}], (),
     ["m.yaml: machine.install is not a mapping"]),
    ("extensions not a list", [{"machine": {"install": {"extensions": "a"}}}], (),
     ["m.yaml: machine.install.extensions is not a list"]),
    ("every bad entry reported", [{"machine": {"install": {"extensions": [
        {"image": ""}, "a", {"image": "ok"}, {"name": "x"}]}}}], ("ok",),
     ["m.yaml: machine.install.extensions[0]: needs an image (a non-empty string)",
      "m.yaml: machine.install.extensions[1]: needs an image (a non-empty string)",
      "m.yaml: machine.install.extensions[3]: needs an image (a non-empty string)"]),
]


@pytest.mark.parametrize("docs,images,problems", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_validate_documents(docs: list[Any], images: tuple[str, ...],
                            problems: list[str]) -> None:
    config, found = validate_documents("m.yaml", docs)
    assert config.images == images
    assert found == problems


def test_duplicates_name_both_positions() -> None:
    assert find_duplicates(["a", "b", "a", "c", "b"]) == [
        "a: listed twice (positions 1 and 3)", "b: listed twice (positions 2 and 5)"]
    assert find_duplicates(["a", "b"]) == []


def test_reads_the_example_machine_config() -> None:
    root = Path(__file__).resolve().parents[3]
    config, problems = read_machine_config(root / "examples" / "machine.yaml")
    assert problems == []
    examples = root / "examples"
    assert config.images == (f"dir:{examples}/hello", f"dir:{examples}/example-firmware")


ANCHOR_CASES = [
    ("dir:hello", "dir:/cfg/hello"),
    ("dir:../x/y", "dir:/cfg/../x/y"),
    ("oci:layout:1.0", "oci:/cfg/layout:1.0"),
    ("oci-archive:a.tar", "oci-archive:/cfg/a.tar"),
    ("docker-archive:d.tar", "docker-archive:/cfg/d.tar"),
    ("dir:/abs/hello", "dir:/abs/hello"),
    ("docker://reg.example:5000/ext/a:1", "docker://reg.example:5000/ext/a:1"),
    ("reg.example/ext/a:1", "reg.example/ext/a:1"),
    ("dir:", "dir:"),
]


@pytest.mark.parametrize("image,expected", ANCHOR_CASES, ids=[c[0] for c in ANCHOR_CASES])
def test_local_paths_resolve_against_the_config_folder(image: str, expected: str) -> None:
    config, problems = validate_documents(
        "/cfg/m.yaml", [{"machine": {"install": {"extensions": [{"image": image}]}}}], "/cfg")
    assert problems == []
    assert config.images == (expected,)


def test_config_paths_do_not_depend_on_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "m.yaml").write_text("machine:\n  install:\n    extensions:\n"
                                 "      - image: dir:ext/hello\n")
    monkeypatch.chdir(tmp_path)
    config, _ = read_machine_config(Path("etc/m.yaml"))
    assert config.images == (f"dir:{conf}/ext/hello",)


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("machine:\n  install: [\n")
    with pytest.raises(SourceError, match=r"m\.yaml: not valid YAML at line 3$"):
        read_machine_config(path)
