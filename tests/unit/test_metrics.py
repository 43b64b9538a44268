"""`overlay-agent metrics`: node_exporter textfile metrics of the boot status."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent import statusfile
from agent.cli import main
from agent.livecheck import with_live_phases
from agent.metrics import render
from agent.statusfile import read_status


def ext(index: int, image: str, name: str, version: str, phase: str,
        reason: str = "") -> dict[str, object]:
    return statusfile.extension_doc(index=index, image=image, kind="extension", name=name,
                                    version=version, phase=phase, reason=reason, author="t",
                                    description="", compatibility={}, created="", updated="")


def write_status(path: Path, exts: list[dict[str, object]], duration_ms: float = 78.5) -> str:
    path.write_text(json.dumps(statusfile.boot_doc(
        extensions=exts, root="/sysroot", overlay="mount", notes=[], disabled=False,
        strict=False, list_path="/extensions.yaml", activated="", duration_ms=duration_ms)))
    return str(path)


def part(mountpoint: str, fstype: str, opts: str) -> SimpleNamespace:
    return SimpleNamespace(device="x", mountpoint=mountpoint, fstype=fstype, opts=opts)


TWO = [ext(0, "000-hello.sqsh", "hello", "1.0.0", "active"),
       ext(1, "001-fw.sqsh", "fw", "2", "failed", "sha256 mismatch")]

EXPECTED = """\
# HELP overlay_agent_extension_info An extension of the boot's list, with its phase (1 per extension).
# TYPE overlay_agent_extension_info gauge
overlay_agent_extension_info{id="000-hello",name="hello",version="1.0.0",phase="active"} 1
overlay_agent_extension_info{id="001-fw",name="fw",version="2",phase="failed"} 1
# HELP overlay_agent_activation_duration_seconds Time the agent spent activating extensions at boot.
# TYPE overlay_agent_activation_duration_seconds gauge
overlay_agent_activation_duration_seconds 0.0785
# HELP overlay_agent_layer_mounted 1 while the extension's layer is part of the root overlay.
# TYPE overlay_agent_layer_mounted gauge
overlay_agent_layer_mounted{id="000-hello",name="hello"} 1
overlay_agent_layer_mounted{id="001-fw",name="fw"} 0
"""


def test_render_exact(tmp_path: Path) -> None:
    status = read_status(write_status(tmp_path / "s.json", TWO))
    assert render(status) == EXPECTED


def test_label_values_are_escaped(tmp_path: Path) -> None:
    """Quote and backslash as the format wants; a newline, an escape sequence or an
    undecodable byte as everywhere else (agent.escape), so the value reads `a\\nb`."""
    status = read_status(write_status(tmp_path / "s.json", [
        ext(0, "000-x.sqsh", 'a"b\\c\nd\x1b[2J\udcff', "1", "active")]))
    text = render(status)
    assert 'name="a\\"b\\\\c\\\\nd\\\\x1b[2J\\\\xff"' in text
    assert all(line.startswith(("#", "overlay_agent_")) for line in text.splitlines())


@pytest.mark.parametrize(("ms", "shown"), [(float("nan"), "NaN"), (float("inf"), "+Inf"),
                                           (-float("inf"), "-Inf"), (1e300, "1e+297")])
def test_special_durations_as_the_format_spells_them(tmp_path: Path, ms: float,
                                                     shown: str) -> None:
    status = read_status(write_status(tmp_path / "s.json", TWO, ms))
    assert f"overlay_agent_activation_duration_seconds {shown}\n" in render(status)


@pytest.mark.parametrize("opts,live", [
    ("ro,relatime,lowerdir=/run/oa/l:/run/oa/0:/run/oa/base", {0: True, 1: False}),
    ("ro,lowerdir+=/run/oa/l,lowerdir+=/run/oa/0,lowerdir+=/run/oa/base", {0: True, 1: False}),
    ("ro,lowerdir=/run/oa/10:/run/oa/base", {0: False, 1: False}),   # 10 is not 0 or 1
])
def test_live_layers_from_the_root_overlay(tmp_path: Path, opts: str, live: dict[int, bool]
                                           ) -> None:
    status = read_status(write_status(tmp_path / "s.json", TWO))
    parts = [part("/", "overlay", opts), part("/x", "overlay", "lowerdir=/run/oa/1:/b")]
    checked = with_live_phases(status, staging="/run/oa", partitions=parts)
    assert {e.index: e.phase == "active" for e in checked.extensions} == live
    text = render(checked)
    assert all(f'overlay_agent_layer_mounted{{id="{e.id}",name="{e.name}"}} {int(live[e.index])}'
               in text for e in checked.extensions)
    if not live[0]:     # the reason says which mount left the overlay
        assert checked.extensions[0].phase == "gone"
        assert checked.extensions[0].reason == ("/run/oa/0 is not a layer of the overlay at / "
                                                "any more")


def test_a_failed_layer_is_never_live(tmp_path: Path) -> None:
    status = read_status(write_status(tmp_path / "s.json", TWO))
    parts = [part("/", "overlay", "lowerdir=/run/oa/0:/run/oa/1:/b")]
    checked = with_live_phases(status, staging="/run/oa", partitions=parts)
    assert [e.phase for e in checked.extensions] == ["active", "failed"]


def test_no_overlay_at_root_means_nothing_is_live(tmp_path: Path) -> None:
    status = read_status(write_status(tmp_path / "s.json", TWO))
    checked = with_live_phases(status, staging="/run/oa",
                               partitions=[part("/", "ext4", "rw")])
    assert [e.phase for e in checked.extensions] == ["gone", "failed"]
    assert 'overlay_agent_layer_mounted{id="000-hello",name="hello"} 0' in render(checked)


def test_command_writes_the_file_atomically(tmp_path: Path) -> None:
    status = write_status(tmp_path / "s.json", TWO)
    out = tmp_path / "prom" / "overlay_agent.prom"
    out.parent.mkdir()
    out.write_text("old\n")
    assert main(["metrics", "--status", status, "-o", str(out)]) == 0
    text = out.read_text()
    # this machine's / is no overlay of /run/oa layers: nothing live
    assert 'overlay_agent_layer_mounted{id="000-hello",name="hello"} 0' in text
    assert text.startswith("# HELP overlay_agent_extension_info")
    assert os.listdir(out.parent) == ["overlay_agent.prom"]
    assert out.stat().st_mode & 0o777 == 0o644


def test_command_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = write_status(tmp_path / "s.json", TWO)
    assert main(["metrics", "--status", status, "-o", str(tmp_path / "no/dir/x.prom")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("overlay-agent: error: ")
    assert main(["metrics", "--status", str(tmp_path / "none.json"), "-o",
                 str(tmp_path / "x.prom")]) == 1
    assert capsys.readouterr().err == (f"overlay-agent: error: {tmp_path}/none.json: not found: "
                                       "this system did not boot through overlay-agent\n")
    assert not (tmp_path / "x.prom").exists()
