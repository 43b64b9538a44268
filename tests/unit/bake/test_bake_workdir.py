"""The build's work folder: locked while its build lives, removed by the next build once
nothing holds it (a build killed with SIGKILL cannot remove its own)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent.bake.workdir import LOCK, PREFIX, UNLOCKED_AGE, remove_stale, work_folder

ROOT = Path(__file__).resolve().parents[3]
HOLDER = """
import sys, time
from agent.bake.workdir import work_folder
with work_folder() as work:
    print(work, flush=True)
    time.sleep(600)
"""


def start_holder(tmp: Path) -> tuple[subprocess.Popen[str], Path]:
    """Another process in the middle of a build: it holds its work folder under `tmp`."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, env=dict(os.environ, TMPDIR=str(tmp)))
    assert proc.stdout is not None
    work = Path(proc.stdout.readline().strip())
    assert work.parent == tmp and (work / LOCK).exists(), work
    return proc, work


def test_a_live_build_keeps_its_folder_and_a_killed_one_loses_it(tmp_path: Path) -> None:
    proc, work = start_holder(tmp_path)
    try:
        assert remove_stale(tmp_path) == []
        assert work.is_dir()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert work.is_dir()                 # SIGKILL: the build could not clean up
    assert remove_stale(tmp_path) == [work]
    assert not work.exists()


def test_a_folder_without_a_lock_is_removed_only_once_old(tmp_path: Path) -> None:
    young = tmp_path / f"{PREFIX}young"
    setting_up = tmp_path / f"{PREFIX}setup"      # lock file created, not yet locked + named
    old = tmp_path / f"{PREFIX}old"
    for folder in (young, setting_up, old):
        (folder / "staging").mkdir(parents=True)
    (setting_up / f"{LOCK}.new").touch()
    then = os.stat(old).st_mtime - UNLOCKED_AGE - 60
    os.utime(old, (then, then))
    assert remove_stale(tmp_path) == [old]
    assert young.is_dir() and setting_up.is_dir() and not old.exists()


def test_only_own_folders_are_judged(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "keep").mkdir(parents=True)
    link = tmp_path / f"{PREFIX}link"
    link.symlink_to(elsewhere)                  # a symlink is never followed nor removed
    plain = tmp_path / f"{PREFIX}file"
    plain.write_text("not a folder")
    other = tmp_path / "other-build.x"          # another program's prefix
    other.mkdir()
    (other / LOCK).touch()
    assert remove_stale(tmp_path) == []
    assert link.is_symlink() and (elsewhere / "keep").is_dir()
    assert plain.exists() and other.is_dir()


def test_work_folder_cleans_up_before_and_after(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    proc, stale = start_holder(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with work_folder() as work:
        assert not stale.exists()
        assert work.parent == tmp_path and (work / LOCK).is_file()
        assert remove_stale(tmp_path) == []      # our own lock holds
        (work / "data").write_bytes(b"x" * 100)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_temp_folder_is_no_error(tmp_path: Path) -> None:
    assert remove_stale(tmp_path / "missing") == []


def test_a_removal_cut_short_is_finished_by_the_next_build(tmp_path: Path) -> None:
    """The lock file goes last, so a folder a killed cleanup left still shows it is free."""
    half = tmp_path / f"{PREFIX}half"
    (half / "staging" / "000").mkdir(parents=True)
    (half / LOCK).touch()
    assert remove_stale(tmp_path) == [half]
    assert not half.exists()
