"""ELF dependency closure of the host's Python, resolved like the dynamic loader."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from agent.errors import BuildError
from agent.initramfs.elfdeps import Lookup, missing_in_tree, read_elf, resolve_closure, walk_links

PYTHON = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))


def test_host_python_closure_holds_libc_and_the_loader() -> None:
    closure = resolve_closure([PYTHON])
    names = {os.path.basename(f) for f in closure.files}
    assert str(PYTHON) in closure.files
    assert {"libc.so.6", "ld-linux-x86-64.so.2"} <= names
    interp = read_elf(PYTHON).interpreter
    assert interp == "/lib64/ld-linux-x86-64.so.2"
    # every symlink met on the way to the loader is recorded, so an image can rebuild the path
    real, links = walk_links(interp)
    assert real in closure.files
    assert set(links) <= set(closure.links)


def test_closure_reports_every_missing_library() -> None:
    with pytest.raises(BuildError) as exc:
        resolve_closure([PYTHON], dirs=["/nonexistent"])
    assert str(exc.value).startswith("shared libraries not found: ")
    assert f"libc.so.6 (needed by {PYTHON})" in str(exc.value)


def test_walk_links_follows_relative_and_absolute_links(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/libx.so.1.2").write_bytes(b"")
    (tmp_path / "lib").symlink_to("usr/lib")
    (tmp_path / "usr/lib/libx.so.1").symlink_to("libx.so.1.2")
    real, links = walk_links("/lib/libx.so.1", root=str(tmp_path))
    assert real == "/usr/lib/libx.so.1.2"
    assert links == [("/lib", "usr/lib"), ("/usr/lib/libx.so.1", "libx.so.1.2")]


def test_image_check_finds_a_library_left_out() -> None:
    data = PYTHON.read_bytes()
    members = {"/usr": (0o40755, b""), "/usr/bin": (0o40755, b""),
               "/usr/bin/python3": (0o100755, data)}
    problems = missing_in_tree(["/usr/bin/python3"], Lookup(members))
    assert "/usr/bin/python3: interpreter /lib64/ld-linux-x86-64.so.2 missing" in problems
    assert "/usr/bin/python3: libc.so.6 missing" in problems
