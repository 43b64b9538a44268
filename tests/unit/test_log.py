"""Build-side logging: structlog events as console lines or JSON lines (--log-format)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from agent import log
from agent.cli import build_parser
from agent.tools import run


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_format_gives_one_object_per_event(restore_logging: None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    log.setup(1, "json")
    run(["true", "a b"])
    lines = capsys.readouterr().err.splitlines()
    events = [json.loads(line) for line in lines]
    assert [(e["event"], e["command"], e["level"], e["logger"]) for e in events] == [
        ("run", "true 'a b'", "info", "overlay_agent.tools")]
    assert events[0]["timestamp"].endswith("Z")


def test_console_format_is_one_line_per_event(restore_logging: None,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    log.setup(1, "console")
    run(["true"])
    (line,) = capsys.readouterr().err.splitlines()
    assert "run" in line and "command=true" in line and not line.startswith("{")


def test_without_verbose_info_events_are_not_shown(restore_logging: None,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    log.setup(0, "json")
    run(["true"])
    assert capsys.readouterr().err == ""


def test_log_format_is_a_global_option() -> None:
    args = build_parser().parse_args(["--log-format", "json", "get", "extensions"])
    assert args.log_format == "json"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--log-format", "xml", "get", "extensions"])
