"""PID 1 helpers that need no kernel: error lines, fallback params, module list, timing."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from agent.boot.cmdline import BootParams, scan_cmdline
from agent.boot.console import fatal_line, format_traceback
from agent.boot.main import StepTimer, describe
from agent.boot.modules import load_module, read_module_list
from agent.errors import BootError
from agent.values import Undo


@pytest.mark.parametrize(("exc", "line"), [
    (BootError("root=/dev/x: device did not appear within 3 s"),
     "root=/dev/x: device did not appear within 3 s"),
    (OSError(errno.ENOENT, "No such file or directory", "/x"), "/x: No such file or directory"),
    (OSError(errno.EIO, "Input/output error"), "Input/output error"),
    (KeyError("k"), "unexpected KeyError: 'k'"),
    (KeyboardInterrupt(), "unexpected KeyboardInterrupt"),
])
def test_describe(exc: BaseException, line: str) -> None:
    assert describe(exc) == line


def test_fatal_line_is_one_line() -> None:
    assert fatal_line("a") == "overlay-agent: fatal: a"


@pytest.mark.parametrize(("raw", "panic", "debug", "problems"), [
    ("root=bad panic=5", 5, False, ("root=bad: unknown syntax (expected /dev/NAME, UUID=, "
                                    "LABEL=, PARTUUID= or PARTLABEL=)",)),
    ("panic=x overlay_agent.debug root=/dev/vda", 0, True, ("panic=x: not an integer",)),
    ("", 0, False, ()),
])
def test_the_fatal_path_keeps_panic_and_debug_of_a_bad_line(
        raw: str, panic: int, debug: bool, problems: tuple[str, ...]) -> None:
    params = scan_cmdline(raw)
    assert (params.panic, params.debug, params.problems) == (panic, debug, problems)


def test_step_timer_wraps_unexpected_errors() -> None:
    timer = StepTimer()

    def broken() -> None:
        raise ValueError("bad value")

    with pytest.raises(BootError) as info:
        timer.run("modules", broken)
    assert str(info.value) == "modules: unexpected ValueError: bad value"
    assert timer.run("cmdline", lambda: 7) == 7
    assert [name for name, _ in timer.steps] == ["modules", "cmdline"]


def test_module_list(tmp_path: Path) -> None:
    listing = tmp_path / "modules.load"
    listing.write_text("# deps first\n/lib/modules/k/a.ko\n\n/lib/modules/k/b.ko.xz\n")
    assert read_module_list(str(listing)) == ["/lib/modules/k/a.ko", "/lib/modules/k/b.ko.xz"]
    assert read_module_list(str(tmp_path / "missing")) == []


def test_missing_module_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BootError) as info:
        load_module(str(tmp_path / "loop.ko.zst"))
    assert str(info.value) == f"kernel module {tmp_path}/loop.ko.zst: No such file or directory"


def test_value_is_frozen_and_compares_by_field() -> None:
    params = BootParams(panic=3)
    assert params == BootParams(panic=3) != BootParams(panic=4)
    assert hash(params) == hash(BootParams(panic=3))
    assert "panic=3" in repr(params)
    with pytest.raises(AttributeError):
        params.panic = 5  # type: ignore[misc]


def test_undo_runs_in_reverse_and_pop_all_keeps() -> None:
    done: list[str] = []
    with Undo() as undo:
        undo.callback(done.append, "first")
        undo.callback(done.append, "second")
    assert done == ["second", "first"]
    with Undo() as undo:
        undo.callback(done.append, "kept")
        undo.pop_all()
    assert done == ["second", "first"]


def test_debug_traceback_text() -> None:
    try:
        raise ValueError("deep")
    except ValueError as exc:
        text = format_traceback(exc)
    assert text.startswith("Traceback (most recent call last):")
    assert text.rstrip().endswith("ValueError: deep")
