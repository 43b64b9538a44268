"""Fuzzing the document readers: list file, status file, manifest, machine config, policy,
YAML, version ranges, OCI index/manifest, kernel command line; and the escaping helper."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agent import listfile, statusfile, yamltext
from agent.bake.config import read_machine_config, validate_documents
from agent.boot import activate
from agent.boot.cmdline import parse_cmdline, scan_cmdline
from agent.commands.get import render_json, render_table, render_yaml
from agent.errors import AgentError, BootError, ListFileError, SourceError, StatusError
from agent.escape import escape
from agent.image.manifest import check_manifest, load_manifest
from agent.image.oci import read_layout
from agent.image.policy import check_policy
from agent.image.versions import VersionRangeError, parse_range
from tests.fuzz.strategies import JSON_VALUES, NASTY_TEXT, mutated

GOOD_LIST = listfile.dump_list([listfile.Layer(
    "000-x.sqsh", listfile.Metadata("x", "1", compatibility={"talos": {"version": ">= 1"}}),
    "0" * 64, 4096)]).encode()
GOOD_YAML_LIST = b"layers:\n  - image: 000-x.sqsh\n    metadata:\n      name: x\n      version: 1\n"


def layer_doc() -> Any:
    return st.fixed_dictionaries({}, optional={
        "image": NASTY_TEXT | st.just("000-x.sqsh"), "kind": JSON_VALUES | st.just("modules"),
        "sha256": JSON_VALUES | st.just("a" * 64), "size": JSON_VALUES,
        "metadata": JSON_VALUES | st.fixed_dictionaries(
            {"name": JSON_VALUES, "version": JSON_VALUES},
            optional={"compatibility": JSON_VALUES, "description": JSON_VALUES})})


LIST_BYTES = (st.binary(max_size=300) | mutated(GOOD_LIST) | mutated(GOOD_YAML_LIST)
              | st.fixed_dictionaries({"version": st.just(1) | JSON_VALUES},
                                      optional={"layers": st.lists(layer_doc(), max_size=3)})
              .map(lambda d: json.dumps(d).encode()))


@given(LIST_BYTES)
def test_list_file_reads_or_is_refused_with_bounded_values(data: bytes) -> None:
    try:
        layers = listfile.read_list(listfile.decode_list(data, "L"), "L")
    except ListFileError as exc:
        assert str(exc).startswith("L") and "\n" not in str(exc)
        return
    for layer in layers:
        assert not listfile.check_image_name(layer.image)
        assert layer.kind in listfile.KINDS and layer.size >= -1
        for text in (layer.metadata.name, layer.metadata.version, layer.metadata.description):
            assert isinstance(text, str) and len(text) <= listfile.MAX_TEXT
        json.dumps(layer.metadata.compatibility)     # plain, finite-size JSON


@given(LIST_BYTES)
def test_boot_reads_any_list_without_raising(data: bytes) -> None:
    """The activation's first step: any list is used, or every layer it names skipped."""
    with tempfile.TemporaryDirectory(prefix="oa-fuzz-") as tmp:
        path = Path(tmp, "extensions.yaml")
        path.write_bytes(data)
        run = activate.Activation(activate.ActivationSettings(list_path=str(path)))
        lines: list[str] = []
        real, activate.report = activate.report, lines.append
        try:
            entries = activate.load_entries(run)
        finally:
            activate.report = real
        assert isinstance(entries, tuple)
        statusfile.write_json_atomic(str(Path(tmp, "status.json")), statusfile.boot_doc(
            extensions=list(run.records.values()), root="/", overlay="none", notes=run.notes,
            disabled=False, strict=False, list_path=str(path), activated="", duration_ms=0))
        status = statusfile.read_status(str(Path(tmp, "status.json")))
        assert len(status.extensions) == len(run.records)


STATUS_DOC = st.fixed_dictionaries(
    {"schema": st.just(1) | JSON_VALUES, "overlay": st.just("mount") | JSON_VALUES,
     "notes": st.lists(NASTY_TEXT, max_size=2) | JSON_VALUES,
     "extensions": st.lists(st.fixed_dictionaries(
         {k: NASTY_TEXT for k in ("id", "image", "kind", "name", "version", "reason", "author",
                                  "description", "created", "updated")} | {
             "index": st.integers(-5, 5) | JSON_VALUES,
             "phase": st.sampled_from(statusfile.PHASES) | JSON_VALUES,
             "compatibility": st.dictionaries(NASTY_TEXT, JSON_VALUES, max_size=3)}),
         max_size=3) | JSON_VALUES},
    optional={"duration_ms": JSON_VALUES, "root": JSON_VALUES})


@given(STATUS_DOC.map(lambda d: json.dumps(d).encode()) | st.binary(max_size=200))
def test_status_reads_or_is_refused_and_renders_escaped(data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="oa-fuzz-") as tmp:
        path = Path(tmp, "status.json")
        path.write_bytes(data)
        try:
            status = statusfile.read_status(str(path))
        except StatusError as exc:
            assert "\n" not in str(exc)
            return
    table = render_table(status, "node")
    assert len(table.splitlines()) == 1 + len(status.extensions)   # no forged row
    assert all(line.isprintable() for line in table.splitlines())
    assert len(render_json(status, "node").splitlines()) == len(status.extensions)
    render_yaml(status, "node")


@given(st.binary(max_size=400) | JSON_VALUES.map(lambda v: json.dumps(v).encode()) |
       mutated(b"version: v1alpha1\nmetadata:\n  name: x\n  version: '1'\n  author: a\n"
               b"  description: d\n  compatibility:\n    talos:\n      version: '>= 1.0'\n"))
def test_manifest_loads_to_problems_never_raises(data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="oa-fuzz-") as tmp:
        Path(tmp, "manifest.yaml").write_bytes(data)
        manifest = load_manifest(Path(tmp))
    assert all("\n" not in p for p in manifest.problems)
    assert manifest.metadata is not None or manifest.problems


@given(JSON_VALUES)
def test_manifest_and_policy_checks_take_any_document(doc: Any) -> None:
    check_manifest(doc)
    policy, problems = check_policy(doc, "P")
    assert (policy is None) == bool(problems)


@given(st.binary(max_size=400) | mutated(b"machine:\n  install:\n    extensions:\n"
                                          b"      - image: dir:/x\n      - image: a/b:1\n"))
def test_machine_config_reads_or_is_refused(data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="oa-fuzz-") as tmp:
        path = Path(tmp, "machine.yaml")
        path.write_bytes(data)
        try:
            config, _ = read_machine_config(path)
        except SourceError as exc:
            assert "\n" not in str(exc)
            return
    assert all(isinstance(i, str) for i in config.images)


@given(st.lists(JSON_VALUES, max_size=3))
def test_machine_config_documents_any_shape(docs: list[Any]) -> None:
    validate_documents("C", docs)


@given(st.text(max_size=200) | mutated(b"a: [1, {b: c}]\n- x\n").map(
    lambda b: b.decode("utf-8", "replace")))
def test_yaml_loads_or_yaml_error(text: str) -> None:
    try:
        yamltext.load_all(text)
    except yamltext.YamlError as exc:
        assert "\n" not in str(exc)


@given(st.text(max_size=60) | st.sampled_from([">= 1", "~> 1.2", ">= " + "9" * 5000,
                                               "~> 1", "v1.2.3-alpha+b, < 2"]))
def test_version_range_parses_or_version_range_error(text: str) -> None:
    try:
        parse_range(text)
    except VersionRangeError as exc:
        assert len(str(exc)) < 1000     # the range is clipped before it is quoted


class Store:
    """An in-memory OCI layout: member name -> bytes."""

    where = "S"

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def open(self, member: str) -> Any:
        import io
        if member not in self.files:
            raise SourceError(f"S: cannot read {member}")
        return io.BytesIO(self.files[member])


def blob(data: bytes) -> tuple[str, dict[str, Any]]:
    import hashlib
    digest = hashlib.sha256(data).hexdigest()
    return f"blobs/sha256/{digest}", {"digest": f"sha256:{digest}", "size": len(data)}


@given(JSON_VALUES, JSON_VALUES, st.booleans())
def test_oci_layout_reads_or_source_error(index: Any, manifest: Any, wrap: bool) -> None:
    mname, mdesc = blob(json.dumps(manifest).encode())
    files = {mname: json.dumps(manifest).encode()}
    doc = {"manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                          **mdesc}]} if wrap else index
    files["index.json"] = json.dumps(doc).encode()
    try:
        read_layout(Store(files), "", "amd64")    # type: ignore[arg-type]
    except SourceError as exc:
        assert "\n" not in str(exc)


@given(st.text(max_size=200) | st.lists(st.sampled_from(
    ["root=/dev/sda1", "root=UUID=", "root=PARTUUID=zz", "panic=x", "panic=" + "9" * 5000,
     "rootwait=-1", "rootwait=nan", "init=rel", "overlay_agent.strict=maybe",
     "overlay_agent.skip=", "overlay_agent.x", "rw", "--", "quiet", "\0", "é=é"]),
    max_size=8).map(" ".join))
def test_kernel_command_line_parses_or_boot_error(text: str) -> None:
    scanned = scan_cmdline(text)    # PID 1's fallback on the fatal path: never raises
    assert isinstance(scanned.panic, int)
    try:
        parse_cmdline(text)
    except BootError as exc:
        assert isinstance(exc, AgentError)


@given(st.text(max_size=100))
def test_escape_is_one_printable_line(text: str) -> None:
    shown = escape(text)
    assert shown.isprintable() and "\n" not in shown
    assert shown == text or not text.isprintable()
