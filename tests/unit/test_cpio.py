from __future__ import annotations

import io
import shutil
import stat
import subprocess

import pytest

from agent import cpio
from agent.errors import BuildError


def _archive(entries: list[cpio.Entry]) -> bytes:
    buf = io.BytesIO()
    cpio.write(cpio.with_parents(entries), buf)
    return buf.getvalue()


def test_round_trip_keeps_every_kind_of_member() -> None:
    blob = _archive([
        cpio.regular("usr/bin/tool", b"#!/bin/sh\n", 0o755),
        cpio.symlink("bin", "usr/bin"),
        cpio.chardev("dev/console", 5, 1),
        cpio.regular("odd", b"abc"),
    ])
    entries, end = cpio.read(blob)
    assert end == len(blob)
    by = {e.name: e for e in entries}
    assert set(by) == {"bin", "dev", "dev/console", "odd", "usr", "usr/bin", "usr/bin/tool"}
    assert by["usr/bin/tool"].data == b"#!/bin/sh\n"
    assert stat.S_IMODE(by["usr/bin/tool"].mode) == 0o755
    assert by["bin"].data == b"usr/bin" and stat.S_ISLNK(by["bin"].mode)
    assert by["dev/console"].rdev == (5, 1) and stat.S_ISCHR(by["dev/console"].mode)
    assert [e.name for e in entries] == sorted(by)


def test_same_members_same_bytes_in_any_input_order() -> None:
    a = [cpio.regular("b", b"1"), cpio.regular("a/x", b"2")]
    assert _archive(a) == _archive(list(reversed(a)))


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_gnu_cpio_lists_what_we_wrote() -> None:
    blob = _archive([cpio.regular("etc/hello", b"hi"), cpio.chardev("dev/null", 1, 3)])
    out = subprocess.run(["cpio", "-t", "--quiet"], input=blob, capture_output=True, check=True)
    assert out.stdout.decode().split() == ["dev", "dev/null", "etc", "etc/hello"]


def test_parent_escape_is_refused() -> None:
    with pytest.raises(BuildError, match="bad member name"):
        cpio.with_parents([cpio.regular("a/../../etc/passwd", b"")])


def test_concatenated_archives_are_read_in_turn() -> None:
    blob = _archive([cpio.regular("one", b"1")]) + b"\0" * 512 + _archive([cpio.regular("two", b"")])
    names = [[e.name for e in arch] for arch in cpio.iter_archives(blob)]
    assert names == [["one"], ["two"]]
