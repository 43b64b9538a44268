"""Fuzzing the archive readers: cpio/newc, initramfs segments, layer tars."""

from __future__ import annotations

import functools
import gzip
import io
import lzma
import os
import stat
import tarfile
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from agent import cpio
from agent.bake.segments import kernel_name, merged_members, split_segments
from agent.errors import AgentError, BuildError, UnpackError
from agent.image.unpack import apply_dir_modes, unpack_layer
from tests.fuzz.strategies import NASTY_TEXT, mutated


def archive(*entries: cpio.Entry) -> bytes:
    buf = io.BytesIO()
    cpio.write(entries, buf)
    return buf.getvalue()


VALID_CPIO = archive(cpio.directory("etc"), cpio.regular("etc/a", b"hello" * 20),
                     cpio.symlink("lib", "usr/lib"), cpio.chardev("dev/null", 1, 3),
                     cpio.regular("extensions.yaml", b'{"version": 1, "layers": []}'))


@functools.cache
def compressed() -> dict[str, bytes]:
    return {"gzip": gzip.compress(VALID_CPIO, mtime=0),
            "xz": lzma.compress(VALID_CPIO, check=lzma.CHECK_CRC32),
            "zstd": cpio.compress(VALID_CPIO, "zstd", 3)}


@given(st.binary(max_size=600) | mutated(VALID_CPIO))
def test_cpio_read_returns_members_or_build_error(blob: bytes) -> None:
    try:
        entries, end = cpio.read(blob)
    except BuildError as exc:
        assert "\n" not in str(exc)
        return
    assert 0 < end <= len(blob) + 3 and end % 4 == 0
    for entry in entries:
        assert entry.size == len(entry.data)


@given(st.sampled_from(["plain", "gzip", "xz", "zstd"]).flatmap(
    lambda fmt: mutated(VALID_CPIO if fmt == "plain" else compressed()[fmt])),
    st.binary(max_size=8))
def test_segments_return_segments_or_typed_error(blob: bytes, prefix: bytes) -> None:
    for data in (blob, prefix + blob):
        try:
            segments = split_segments(data, "fuzz")
        except AgentError as exc:    # BuildError, or the tool's UnpackError/ToolError
            assert str(exc).startswith("fuzz") and "\n" not in str(exc)
            continue
        tree = merged_members(segments)
        assert all(not name.startswith("/") and ".." not in name.split("/") for name in tree)


@given(st.lists(st.tuples(st.sampled_from(["dir", "file", "link"]),
                          st.lists(st.sampled_from(["a", "b", "..", ".", "", "extensions.yaml"]),
                                   min_size=1, max_size=5),
                          st.sampled_from(["/", "a", "..", "../..", "a/b", "b/../.."])),
                max_size=8))
def test_kernel_names_stay_inside_the_root(members: list[tuple[str, list[str], str]]) -> None:
    tree: dict[str, cpio.Entry] = {}
    for kind, parts, target in members:
        name = "/".join(parts)
        entry = (cpio.directory(name) if kind == "dir" else cpio.regular(name, b"")
                 if kind == "file" else cpio.symlink(name, target))
        where = kernel_name(name, tree)
        assert not where.startswith("/") and ".." not in where.split("/")
        assert "//" not in where
        tree[where] = entry


MEMBER = st.tuples(
    st.sampled_from(["file", "dir", "sym", "link", "chr", "fifo", "whiteout", "opaque"]),
    st.lists(st.sampled_from(["a", "b", "..", ".", "", "c d", "é"]), min_size=1, max_size=4)
    .map("/".join) | NASTY_TEXT,
    st.sampled_from(["a", "/", "..", "../x", "a/b", "/etc/passwd", ""]))


def tar_of(members: list[tuple[str, str, str]]) -> bytes:
    buf = io.BytesIO()
    types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
             "link": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for kind, name, target in members:
            name = name.encode("utf-8", "replace").decode("utf-8")  # tar: UTF-8 names
            if kind in ("whiteout", "opaque"):
                head = name.rpartition("/")[0]
                name = f"{head}/.wh.{target}" if kind == "whiteout" else f"{head}/.wh..wh..opq"
                kind = "file"
            info = tarfile.TarInfo(name)
            info.type = types[kind]
            info.linkname = target
            info.size = 3 if kind == "file" else 0
            tf.addfile(info, io.BytesIO(b"abc") if kind == "file" else None)
    return buf.getvalue()


def snapshot(top: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(top)), p.lstat().st_mode) for p in top.rglob("*"))


@given(st.lists(MEMBER, max_size=8), st.booleans())
def test_layer_unpack_returns_or_refuses_and_stays_inside(members: list[tuple[str, str, str]],
                                                          gz: bool) -> None:
    data = tar_of(members)
    data = gzip.compress(data, mtime=0) if gz else data
    with tempfile.TemporaryDirectory(prefix="oa-fuzz-") as tmp:
        top = Path(tmp)
        outside = top / "outside"
        outside.mkdir()
        (outside / "secret").write_text("s")
        staging = top / "staging"
        staging.mkdir()
        before = snapshot(outside)
        try:
            apply_dir_modes(unpack_layer(io.BytesIO(data), staging, "fuzz", 1 << 20))
        except UnpackError as exc:
            assert str(exc).startswith("fuzz") and "\n" not in str(exc)
        assert snapshot(outside) == before
        for path in staging.rglob("*"):
            mode = path.lstat().st_mode
            assert not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode))
            if path.is_symlink():
                continue
            assert os.path.realpath(path).startswith(str(staging))
