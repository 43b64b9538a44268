"""The store setting the initramfs hooks read (/etc/overlay-agent/store.conf): one parser,
every problem named by file and line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.bake.store import read_setting, setting_store
from agent.errors import UsageError


@pytest.mark.parametrize(("text", "values"), [
    ("", {}),
    ("# nothing set\nSTORE=\n", {}),
    ("STORE=/srv/oa\n", {"STORE": "/srv/oa"}),
    ('  STORE = "/srv/o a"  \n# c\n\nSTORE_UUID=\'0BAD-CAFE\'\nSTORE_PATH=oa\n',
     {"STORE": "/srv/o a", "STORE_UUID": "0BAD-CAFE", "STORE_PATH": "oa"}),
])
def test_settings_read(tmp_path: Path, text: str, values: dict[str, str]) -> None:
    path = tmp_path / "store.conf"
    path.write_text(text)
    assert read_setting(path) == values


def test_a_missing_file_is_no_store(tmp_path: Path) -> None:
    assert read_setting(tmp_path / "none.conf") == {}
    assert setting_store(tmp_path / "none.conf") is None


@pytest.mark.parametrize(("text", "message"), [
    ("STORE /srv\n", "{p}:1: 'STORE /srv': not KEY=VALUE with KEY one of STORE, STORE_UUID, "
                     "STORE_PATH"),
    ("STORE=/a\nstore=/b\nSTORE=/c\n",
     "{p}:2: 'store=/b': not KEY=VALUE with KEY one of STORE, STORE_UUID, STORE_PATH; "
     "{p}:3: STORE set twice"),
    ("STORE=\nSTORE_UUID=0BAD-CAFE\n", "{p}: STORE_UUID and STORE_PATH need STORE=DIR"),
    ("STORE=/nonexistent/oa\n", "{p}: --store /nonexistent/oa: not a folder"),
    ("STORE=var/oa\n", "{p}: STORE='var/oa': not an absolute path"),
])
def test_problems_are_one_line_naming_the_file(tmp_path: Path, text: str,
                                               message: str) -> None:
    path = tmp_path / "store.conf"
    path.write_text(text)
    with pytest.raises(UsageError) as exc:
        setting_store(path)
    assert str(exc.value) == message.format(p=path)


def test_a_folder_with_uuid_and_path_needs_no_findmnt(tmp_path: Path) -> None:
    path = tmp_path / "store.conf"
    path.write_text(f"STORE={tmp_path}\nSTORE_UUID=0BAD-CAFE\nSTORE_PATH=/boot/oa/\n")
    store = setting_store(path)
    assert store is not None
    assert (store.folder, store.uuid, store.prefix) == (tmp_path, "0BAD-CAFE", "boot/oa")


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: os.mkfifo(p), "{p}: cannot read: a fifo, not a regular file"),
    (lambda p: p.symlink_to("/dev/zero"), "{p}: cannot read: a character device, not a "
                                          "regular file"),
    (lambda p: os.truncate(p, (64 << 10) + 1) if p.touch() is None else None,
     "{p}: cannot read: 65537 bytes, over the limit of 65536"),
])
def test_hostile_setting_files_are_one_line(tmp_path: Path, make: object,
                                            message: str) -> None:
    """Never a hang on a fifo, never an endless read of /dev/zero: one line, no store."""
    path = tmp_path / "store.conf"
    make(path)  # type: ignore[operator]
    with pytest.raises(UsageError) as exc:
        setting_store(path)
    assert str(exc.value) == message.format(p=path)
