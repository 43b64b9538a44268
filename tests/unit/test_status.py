"""The status file (write, read, validate) and `get extensions` in its three shapes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import lightjson
from agent.boot.activate import ActivationSettings, settings_from_params
from agent.boot.cmdline import DEFAULT_ROOT_WAIT, RootKind, RootSpec, UpperSpec, scan_cmdline
from agent.cli import main
from agent.commands.get import render_json, render_table, render_yaml
from agent.errors import StatusError
from agent.livecheck import with_live_phases
from agent.statusfile import (
    ACTIVE,
    API_FSCONFIG,
    API_MOUNT,
    FAILED,
    ROOT_PERSISTENT,
    ROOT_VOLATILE,
    BootStatus,
    ExtensionStatus,
    UpperStatus,
    boot_doc,
    extension_doc,
    read_status,
    upper_doc,
    write_json_atomic,
)

STAMP = "2022-02-10T18:25:04Z"


def status_to_dict(status: BootStatus) -> dict[str, Any]:
    """The document the boot path would write for `status` (statusfile's builders)."""
    return boot_doc(
        extensions=[extension_doc(
            index=e.index, image=e.image, kind=e.kind, name=e.name, version=e.version,
            phase=e.phase, reason=e.reason, author=e.author, description=e.description,
            compatibility=dict(e.compatibility), created=e.created, updated=e.updated)
            for e in status.extensions],
        root=status.root, overlay=status.overlay, notes=list(status.notes),
        disabled=status.disabled, strict=status.strict, list_path=status.list_path,
        activated=status.activated, duration_ms=status.duration_ms, root_mode=status.root_mode,
        upper=None if status.upper is None else upper_doc(
            requested=status.upper.requested, source=status.upper.source, dir=status.upper.dir,
            size_bytes=status.upper.size_bytes, used_bytes=status.upper.used_bytes,
            fallback=status.upper.fallback, repaired=status.upper.repaired,
            shadowed_count=status.upper.shadowed_count, shadowed=list(status.upper.shadowed)))


def write_status(path: str, status: BootStatus) -> None:
    write_json_atomic(path, status_to_dict(status))
GVISOR = ExtensionStatus(
    index=0, id="000.ghcr.io-talos-systems-gvisor-54b831d",
    image="000.ghcr.io-talos-systems-gvisor-54b831d.sqsh", kind="extension", name="gvisor",
    version="20220117.0-v1.0.0", phase=ACTIVE, author="Andrew Rynhard",
    description="This system extension provides gVisor using containerd's runtime handler.\n",
    compatibility={"talos": {"version": ">= v1.0.0"}}, created=STAMP, updated=STAMP)
BROKEN = ExtensionStatus(
    index=1, id="001-broken", image="001-broken.sqsh", kind="extension", name="broken",
    version="2.0", phase=FAILED, reason="/extensions/001-broken.sqsh: size 1 bytes, "
    "the list says 2", created=STAMP, updated=STAMP)
ALL_ACTIVE = BootStatus(extensions=(GVISOR,), root="/sysroot", overlay=API_MOUNT)
ONE_FAILED = BootStatus(extensions=(GVISOR, BROKEN), root="/sysroot", overlay=API_MOUNT)

TABLE = """\
NODE         NAMESPACE   TYPE              ID                                         VERSION   NAME     VERSION
172.20.0.2   runtime     ExtensionStatus   000.ghcr.io-talos-systems-gvisor-54b831d   1         gvisor   20220117.0-v1.0.0
"""

TABLE_FAILED = """\
NODE   NAMESPACE   TYPE              ID                                         VERSION   NAME     VERSION             PHASE    REASON
n1     runtime     ExtensionStatus   000.ghcr.io-talos-systems-gvisor-54b831d   1         gvisor   20220117.0-v1.0.0   active
n1     runtime     ExtensionStatus   001-broken                                 1         broken   2.0                 failed   /extensions/001-broken.sqsh: size 1 bytes, the list says 2
"""

YAML = """\
node: 172.20.0.2
metadata:
    namespace: runtime
    type: ExtensionStatuses.runtime.talos.dev
    id: 000.ghcr.io-talos-systems-gvisor-54b831d
    version: 1
    owner: runtime.ExtensionStatusController
    phase: running
    created: 2022-02-10T18:25:04Z
    updated: 2022-02-10T18:25:04Z
spec:
    image: 000.ghcr.io-talos-systems-gvisor-54b831d.sqsh
    metadata:
        name: gvisor
        version: 20220117.0-v1.0.0
        author: Andrew Rynhard
        description: |
            This system extension provides gVisor using containerd's runtime handler.
        compatibility:
            talos:
                version: '>= v1.0.0'
"""


def test_table_has_the_talos_columns() -> None:
    assert render_table(ALL_ACTIVE, "172.20.0.2") == TABLE


def test_table_shows_phase_and_reason_when_a_layer_failed() -> None:
    assert render_table(ONE_FAILED, "n1") == TABLE_FAILED


def test_table_of_no_extensions_is_the_header() -> None:
    assert render_table(BootStatus(), "n1").split() == [
        "NODE", "NAMESPACE", "TYPE", "ID", "VERSION", "NAME", "VERSION"]


def test_yaml_is_talos_shape() -> None:
    assert render_yaml(ALL_ACTIVE, "172.20.0.2") == YAML


def test_yaml_of_a_failed_layer_carries_phase_and_reason() -> None:
    docs = list(yaml.safe_load_all(render_yaml(ONE_FAILED, "n1")))
    assert len(docs) == 2
    assert docs[1]["metadata"]["phase"] == "failed"
    assert docs[1]["spec"]["reason"] == BROKEN.reason
    assert "reason" not in docs[0]["spec"]


def test_json_is_one_object_per_extension_with_the_yaml_data() -> None:
    objects = [json.loads(line) for line in render_json(ONE_FAILED, "n1").splitlines()]
    docs = list(yaml.safe_load_all(render_yaml(ONE_FAILED, "n1")))
    for doc in docs:     # yaml reads the plain timestamps as datetimes
        assert doc["metadata"]["created"].isoformat() == "2022-02-10T18:25:04+00:00"
        doc["metadata"]["created"] = doc["metadata"]["updated"] = STAMP
    assert objects == docs


def test_status_round_trips_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run" / "overlay-agent" / "status.json"
    status = BootStatus(extensions=(GVISOR, BROKEN), root="/sysroot",
                        overlay=API_FSCONFIG, notes=("a note",), strict=True,
                        list_path="/extensions.yaml", activated=STAMP, duration_ms=1.5)
    write_status(str(path), status)
    assert read_status(str(path)) == status
    assert os.listdir(path.parent) == ["status.json"]    # no temp file left


def _doc(**changes: Any) -> dict[str, Any]:
    doc = status_to_dict(ALL_ACTIVE)
    ext = doc["extensions"][0]
    for key, value in changes.items():
        target = ext if key.startswith("ext_") else doc
        target[key.removeprefix("ext_")] = value
    return doc


@pytest.mark.parametrize(("doc", "message"), [
    ([], "F: top level is not an object"),
    (_doc(schema=2), "F: unknown status schema 2"),
    (_doc(overlay="magic", notes={}), "F: unknown overlay 'magic'; F: notes is not a list of strings"),
    (_doc(extensions={}), "F: extensions is not a list"),
    (_doc(ext_id=3, ext_index="0", ext_phase="running", ext_compatibility=[]),
     "F: extensions[0]: id is not a string; F: extensions[0]: index is not an integer; "
     "F: extensions[0]: unknown phase 'running'; F: extensions[0]: compatibility is not an "
     "object"),
])
def test_bad_status_files_name_every_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             doc: Any, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    Path("F").write_text(json.dumps(doc))
    with pytest.raises(StatusError) as exc:
        read_status("F")
    assert str(exc.value) == message


def test_unreadable_json_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("{")
    with pytest.raises(StatusError, match=r"s.json: not valid JSON \(Expecting"):
        read_status(str(path))


def test_get_on_a_system_booted_without_the_agent(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "status.json"
    assert main(["get", "extensions", "--status", str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"overlay-agent: error: {missing}: not found: this system did not boot "
                   "through overlay-agent\n")


@pytest.mark.parametrize("fmt", ["table", "yaml", "json"])
def test_get_prints_from_the_status_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         fmt: str) -> None:
    path = tmp_path / "status.json"
    write_status(str(path), ONE_FAILED)
    assert main(["get", "extensions", "-o", fmt, "--status", str(path)]) == 0
    node = os.uname().nodename
    render = {"table": render_table, "yaml": render_yaml, "json": render_json}[fmt]
    # no overlay at / on this host: the active layer shows as gone (livecheck)
    live = with_live_phases(ONE_FAILED)
    assert [e.phase for e in live.extensions] == ["gone", "failed"]
    assert live.extensions[0].reason == "no overlay mounted at / any more"
    assert capsys.readouterr().out == render(live, node)


@pytest.mark.parametrize(("cmdline", "expected"), [
    ("root=/dev/vda ro quiet", ActivationSettings()),
    ("overlay_agent.disable", ActivationSettings(disable=True)),
    ("overlay_agent.disable=0 overlay_agent.strict=1", ActivationSettings(strict=True)),
    ("overlay_agent.skip=a,b overlay_agent.skip=c,", ActivationSettings(
        skip=frozenset({"a", "b", "c"}))),
    ("init=/bin/sh -- overlay_agent.strict", ActivationSettings()),
    ("root=ZFS=rpool/root overlay_agent.skip=a", ActivationSettings(skip=frozenset({"a"}))),
    ("overlay_agent.strict=maybe overlay_agent.disable=0", ActivationSettings(
        problem="overlay_agent.strict=maybe: not a yes/no value")),
    ("overlay_agent.upper=tmpfs:1g rootdelay=4", ActivationSettings(
        upper=UpperSpec(size="1g"), upper_wait=4.0)),
    ("overlay_agent.upper=LABEL=u:/x rootwait", ActivationSettings(     # never forever
        upper=UpperSpec(RootSpec(RootKind.LABEL, "u"), "/x"), upper_wait=DEFAULT_ROOT_WAIT)),
    ("overlay_agent.upper=sdb", ActivationSettings(
        problem="overlay_agent.upper=sdb: unknown syntax (expected /dev/NAME, UUID=, LABEL=, "
                "PARTUUID= or PARTLABEL=)")),
])
def test_settings_from_the_one_cmdline_parser(cmdline: str,
                                              expected: ActivationSettings) -> None:
    """Hook mode ignores keys another initramfs owns; a bad key of ours activates nothing."""
    assert settings_from_params(scan_cmdline(cmdline)) == expected


@pytest.mark.parametrize("value", [
    {"b": [1, -2.5, None, True, False, "é\"\\\n\u2028"], "a": {"x": {}, "y": []}},
    [], "text", 0,
])
def test_lightjson_matches_json(value: Any) -> None:
    text = lightjson.dumps(value)
    assert text == json.dumps(value, sort_keys=True, separators=(",", ":"))
    assert lightjson.loads(f" \n{json.dumps(value, indent=2)}\n") == value


@pytest.mark.parametrize(("text", "message"), [
    ("", "Expecting value at char 0"),
    ("  {} x", "Extra data at char 4"),
    ("{'a': 1}", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
])
def test_lightjson_rejects_what_json_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        lightjson.loads(text)
    assert str(exc.value) == message
    with pytest.raises(ValueError):
        json.loads(text)


def test_activation_settings_behave_like_a_frozen_dataclass() -> None:
    settings = ActivationSettings(skip=frozenset({"a"}))
    with pytest.raises(AttributeError, match="frozen"):
        settings.strict = True  # type: ignore[misc]
    assert settings.replace(strict=True) == ActivationSettings(skip=frozenset({"a"}), strict=True)
    assert settings.replace(strict=True) != settings
    assert len({settings, ActivationSettings(skip=frozenset({"a"}))}) == 1


def test_get_prints_boot_notes_on_stderr(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "status.json"
    note = "/extensions.yaml: unknown schema version 7 (this agent reads version 1)"
    write_status(str(path), BootStatus(notes=(note,)))
    assert main(["get", "extensions", "-o", "json", "--status", str(path)]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"overlay-agent: {note}\n")


FELL_BACK = ("overlay_agent.upper=LABEL=data: device did not appear within 30 s; a tmpfs upper "
             "serves instead")
WRITABLE = BootStatus(
    extensions=(GVISOR,), root="/sysroot", overlay=API_MOUNT, notes=(FELL_BACK,),
    activated=STAMP, root_mode=ROOT_VOLATILE,
    upper=UpperStatus(requested="LABEL=data", source="tmpfs", size_bytes=1 << 30,
                      used_bytes=4096, fallback=FELL_BACK))
SHADOWED = BootStatus(
    root="/sysroot", overlay=API_MOUNT, root_mode=ROOT_PERSISTENT,
    upper=UpperStatus(requested="/dev/vdb:/u", source="/dev/vdb", dir="/u",
                      size_bytes=1 << 30, used_bytes=1 << 20, repaired="work: emptied",
                      shadowed_count=7, shadowed=("/usr/bin/a", "/usr/bin/b")))

ROOT_YAML = """\
node: n1
metadata:
    namespace: runtime
    type: RootStatuses.runtime.overlay-agent
    id: root
    version: 1
    owner: overlay-agent.boot
    phase: running
    created: 2022-02-10T18:25:04Z
    updated: 2022-02-10T18:25:04Z
spec:
    mode: volatile
    requested: LABEL=data
    source: tmpfs
    dir: ''
    size_bytes: 1073741824
    used_bytes: 4096
    fallback: 'overlay_agent.upper=LABEL=data: device did not appear within 30 s;
        a tmpfs upper serves instead'
    repaired: ''
    shadowed_count: 0
    shadowed: []
"""


def test_writable_root_round_trips_and_an_old_file_reads_as_read_only(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    for status in (WRITABLE, SHADOWED):
        write_status(str(path), status)
        assert read_status(str(path)) == status
    doc = status_to_dict(ALL_ACTIVE)
    del doc["root_mode"], doc["upper"]           # written by an agent before writable roots
    path.write_text(json.dumps(doc))
    assert read_status(str(path)) == ALL_ACTIVE


def test_yaml_and_json_add_the_writable_root_after_the_extensions() -> None:
    docs = render_yaml(WRITABLE, "n1").split("---\n")
    assert len(docs) == 2 and docs[1] == ROOT_YAML
    objects = [json.loads(line) for line in render_json(WRITABLE, "n1").splitlines()]
    assert [o["metadata"]["id"] for o in objects] == [GVISOR.id, "root"]
    assert objects[1]["spec"] == {**yaml.safe_load(ROOT_YAML)["spec"]}
    assert render_json(ALL_ACTIVE, "n1").count("\n") == 1     # read-only: talosctl's shape


@pytest.mark.parametrize(("status", "err"), [
    (WRITABLE, f"overlay-agent: {FELL_BACK}\n"),
    (SHADOWED, "overlay-agent: 7 file(s) in the upper hide files the extensions ship: "
               "/usr/bin/a, /usr/bin/b, ...\n"),
])
def test_table_says_fallback_and_shadows_on_stderr(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   status: BootStatus, err: str) -> None:
    path = tmp_path / "status.json"
    write_status(str(path), status)
    assert main(["get", "extensions", "--status", str(path)]) == 0
    out, got = capsys.readouterr()
    assert got == err
    assert out == render_table(with_live_phases(status), os.uname().nodename)


@pytest.mark.parametrize(("changes", "message"), [
    ({"root_mode": "rw"}, "F: unknown root_mode 'rw'"),
    ({"upper": []}, "F: upper: not an object"),
    ({"upper": {"requested": 1, "source": "tmpfs", "dir": "", "fallback": "", "repaired": "",
                "size_bytes": "1", "used_bytes": 0, "shadowed_count": 0, "shadowed": [3]}},
     "F: upper: requested is not a string; F: upper: size_bytes is not an integer; "
     "F: upper: shadowed is not a list of strings"),
])
def test_bad_upper_records_name_every_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              changes: dict[str, Any], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    Path("F").write_text(json.dumps({**status_to_dict(ALL_ACTIVE), **changes}))
    with pytest.raises(StatusError) as exc:
        read_status("F")
    assert str(exc.value) == message


VERITY_OK = GVISOR.replace(check="verity", device="oa-layer-000")
VERITY_BAD = BROKEN.replace(phase=ACTIVE, reason="", check="verity", device="oa-layer-001")
CHECKED = BootStatus(extensions=(VERITY_OK, VERITY_BAD,
                                 BROKEN.replace(index=2, id="002-b", image="002-b.sqsh", check="sha256")),
                     root="/sysroot", overlay=API_MOUNT)

TABLE_CHECKED = """\
NODE   NAMESPACE   TYPE              ID                                         VERSION   NAME     VERSION             CHECK    PHASE       REASON
n1     runtime     ExtensionStatus   000.ghcr.io-talos-systems-gvisor-54b831d   1         gvisor   20220117.0-v1.0.0   verity   active
n1     runtime     ExtensionStatus   001-broken                                 1         broken   2.0                 verity   corrupted   dm-verity: a block failed its hash check (see the kernel log)
n1     runtime     ExtensionStatus   002-b                                      1         broken   2.0                 sha256   failed      /extensions/001-broken.sqsh: size 1 bytes, the list says 2
"""


def test_check_and_device_round_trip_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    doc = status_to_dict(CHECKED)
    for raw, ext in zip(doc["extensions"], CHECKED.extensions, strict=True):
        raw.update(check=ext.check, device=ext.device)
    write_json_atomic(str(path), doc)
    assert read_status(str(path)) == CHECKED


def test_a_status_without_checks_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    doc = status_to_dict(ALL_ACTIVE)
    for raw in doc["extensions"]:
        del raw["check"], raw["device"]
    write_json_atomic(str(path), doc)
    assert [e.check for e in read_status(str(path)).extensions] == ["none"]


def test_an_unknown_check_is_named(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    doc = status_to_dict(ALL_ACTIVE)
    doc["extensions"][0]["check"] = "crc32"
    write_json_atomic(str(path), doc)
    with pytest.raises(StatusError) as exc:
        read_status(str(path))
    assert str(exc.value) == f"{path}: extensions[0]: unknown check 'crc32'"


def test_table_shows_the_check_and_a_corrupted_verity_layer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.boot import verity
    from agent.livecheck import mark_corrupted

    # the fault: device-mapper status 'C' for one device (the VM tier makes it for real)
    monkeypatch.setattr(verity, "device_state",
                        lambda name: "C" if name == "oa-layer-001" else "V")
    assert render_table(mark_corrupted(CHECKED), "n1") == TABLE_CHECKED
    doc = json.loads(render_json(mark_corrupted(CHECKED), "n1").splitlines()[1])
    assert (doc["metadata"]["phase"], doc["spec"]["check"]) == ("corrupted", "verity")
