"""The end-of-run check of `make test` and `make demo`: what appeared since the snapshot
before is reported, one line each, and fails the run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from devtools.leftovers import State, find_listeners, find_temp, left_behind, main
from tests.unit.image.registry import serve


def test_only_what_appeared_is_reported() -> None:
    before = State(units=frozenset({"docker-registry.service enabled"}),   # the admin's
                   loops=frozenset({"/dev/loop0 on /srv/theirs.img"}))
    after = State(listeners=frozenset({"docker-registry (pid 7) on 0.0.0.0:5000"}),
                  units=frozenset({"docker-registry.service enabled",
                                   "overlay-agent-status.service enabled"}),
                  temp=frozenset({"/tmp/overlay-agent-build.x1\n"}),
                  mounts=frozenset({"/mnt/x (squashfs from /dev/loop3)"}),
                  loops=frozenset({"/dev/loop0 on /srv/theirs.img",
                                   "/dev/loop3 on /tmp/a.sqsh (deleted)"}))
    assert left_behind(before, after) == [
        "socket listening: docker-registry (pid 7) on 0.0.0.0:5000",
        "unit: overlay-agent-status.service enabled",
        "in the temporary folder: /tmp/overlay-agent-build.x1\\x0a",
        "mount: /mnt/x (squashfs from /dev/loop3)",
        "loop device: /dev/loop3 on /tmp/a.sqsh (deleted)",
    ]
    assert left_behind(after, after) == []


@pytest.mark.registry
def test_a_registry_we_started_is_seen_listening_until_stopped(tmp_path: Path) -> None:
    server = serve(tmp_path)
    registry = next(server)
    try:
        seen = [x for x in find_listeners() if x.endswith(f" on {registry.host}")]
        assert len(seen) == 1 and seen[0].startswith("docker-registry (pid "), seen
    finally:
        server.close()          # runs serve's finally: the server stops
    assert not [x for x in find_listeners() if x.endswith(f" on {registry.host}")]


def test_check_fails_on_a_temporary_folder_left_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    (temp / "overlay-agent-validate-old").mkdir()       # there before: not this run's
    snap = tmp_path / "before.json"
    assert main(["snapshot", str(snap)]) == 0
    assert main(["check", str(snap)]) == 0
    assert main(["snapshot", str(snap)]) == 0
    (temp / "overlay-agent-build.abc").mkdir()
    (temp / "unrelated").mkdir()
    assert find_temp() == {str(temp / "overlay-agent-build.abc"),
                           str(temp / "overlay-agent-validate-old")}
    assert main(["check", str(snap)]) == 1
    err = capsys.readouterr().err
    assert err == f"leftovers: left behind: in the temporary folder: {temp}/overlay-agent-build.abc\n"
    assert not snap.exists()
    assert main(["check", str(snap)]) == 1           # no snapshot: a failure, not a pass
    assert "no usable snapshot" in capsys.readouterr().err
