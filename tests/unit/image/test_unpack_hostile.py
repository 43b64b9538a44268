"""Hostile layers: every refusal names the member, and nothing appears outside staging."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent.errors import UnpackError
from agent.image.unpack import apply_dir_modes, unpack_layer
from devtools.layers import LIMIT, M, bombs, hostile_cases, layer


def snapshot(top: Path, skip: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry under `top` except `skip`: mode and content (or link target)."""
    out: dict[str, tuple[int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            body = (os.readlink(p).encode() if stat.S_ISLNK(st.st_mode)
                    else hashlib.sha256(p.read_bytes()).digest() if stat.S_ISREG(st.st_mode)
                    else b"")
            out[str(p.relative_to(top))] = (st.st_mode, body)
    return out


@pytest.fixture
def arena(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(staging, outside): outside holds a secret; afterwards nothing outside staging changed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    staging = tmp_path / "staging"
    staging.mkdir()
    before = snapshot(tmp_path, staging)
    yield staging, outside
    assert snapshot(tmp_path, staging) == before


def unpack(staging: Path, *layers: bytes, limit: int = LIMIT) -> None:
    modes: dict[str, int] = {}
    for i, data in enumerate(layers):
        modes.update(unpack_layer(io.BytesIO(data), staging, f"src: layer {i}", limit))
    apply_dir_modes(modes)


CASE_NAMES = [c[0] for c in hostile_cases(Path("/x"))]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_layer_is_refused(arena: tuple[Path, Path], name: str) -> None:
    staging, outside = arena
    _, layers, message = next(c for c in hostile_cases(outside) if c[0] == name)
    with pytest.raises(UnpackError) as exc:
        unpack(staging, *layers)
    assert message in str(exc.value)
    assert str(exc.value).startswith("src: layer ")
    assert "\n" not in str(exc.value)


def test_header_bomb_counts_headers_not_only_sizes(arena: tuple[Path, Path]) -> None:
    staging, _ = arena
    with pytest.raises(UnpackError, match="more than the limit"):
        unpack(staging, bombs()[1], limit=4096)
    assert len(os.listdir(staging)) < 200


def test_symlink_replaced_by_file_is_not_written_through(arena: tuple[Path, Path]) -> None:
    staging, outside = arena
    unpack(staging, layer(M("x", "sym", link=str(outside / "secret")), M("d", "sym",
                                                                          link=str(outside))),
           layer(M("x", data=b"new"), M("d", "dir"), M("d/f", data=b"inside")))
    assert (staging / "x").read_bytes() == b"new"
    assert not (staging / "x").is_symlink()
    assert (staging / "d" / "f").read_bytes() == b"inside"
    assert (outside / "secret").read_text() == "secret"


def test_whiteouts(arena: tuple[Path, Path]) -> None:
    staging, _ = arena
    unpack(staging,
           layer(M("a", "dir"), M("a/x"), M("a/y"), M("b", "dir"), M("b/z"), M("c", "dir"),
                 M("c/old"), M("c/sub", "dir"), M("c/sub/deep")),
           layer(M("a/.wh.x"), M(".wh.b"), M("c/new"), M("c/.wh..wh..opq"),
                 M(".wh.never-existed")))
    tree = sorted(str(p.relative_to(staging)) for p in staging.rglob("*"))
    assert tree == ["a", "a/y", "c", "c/new"]


def test_symlinks_inside_staging_are_followed(arena: tuple[Path, Path]) -> None:
    staging, _ = arena
    unpack(staging, layer(M("usr", "dir"), M("usr/lib", "dir"), M("lib", "sym", link="usr/lib"),
                          M("lib/firmware/x", data=b"fw"), M("abs", "sym", link="/usr/lib")),
           layer(M("usr/lib/firmware/.wh.x")))
    assert (staging / "lib").is_symlink()
    assert not (staging / "usr" / "lib" / "firmware" / "x").exists()
    assert (staging / "usr" / "lib" / "firmware").is_dir()


def test_hard_links_modes_and_gzip(arena: tuple[Path, Path]) -> None:
    staging, _ = arena
    unpack(staging, layer(M("ro", "dir", mode=0o555), M("ro/f", data=b"data", mode=0o640),
                          M("ro/h", "link", link="ro/f"), M("exe", data=b"#!", mode=0o4755),
                          gz=True))
    assert (staging / "ro" / "h").stat().st_ino == (staging / "ro" / "f").stat().st_ino
    assert stat.S_IMODE((staging / "ro").stat().st_mode) == 0o555
    assert stat.S_IMODE((staging / "ro" / "f").stat().st_mode) == 0o640
    assert stat.S_IMODE((staging / "exe").stat().st_mode) == 0o4755   # validation judges it
    (staging / "ro").chmod(0o755)


def test_diff_id_mismatch_is_refused(arena: tuple[Path, Path]) -> None:
    staging, _ = arena
    data = layer(M("f"))
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    unpack_layer(io.BytesIO(gzip_of(data)), staging, "src: layer 0", LIMIT, good)
    with pytest.raises(UnpackError) as exc:
        unpack_layer(io.BytesIO(data), staging, "src: layer 0", LIMIT, "sha256:" + "0" * 64)
    assert str(exc.value) == ("src: layer 0: uncompressed content does not match its diff_id "
                              "sha256:" + "0" * 64)


def zstd_of(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True,
                          check=True).stdout


def test_zstd_layer_unpacks_as_gzip_does(tmp_path: Path) -> None:
    members = (M("etc", "dir"), M("etc/a", data=b"alpha"), M("etc/l", "sym", link="a"))
    trees = {}
    for name, data in (("gzip", layer(*members, gz=True)), ("zstd", zstd_of(layer(*members)))):
        (tmp_path / name).mkdir()
        unpack(tmp_path / name, data)
        trees[name] = snapshot(tmp_path / name, tmp_path / "none")
    assert trees["zstd"] == trees["gzip"] and "etc/a" in trees["zstd"]


def test_zstd_bomb_stops_at_the_limit_and_reaps_zstd(arena: tuple[Path, Path]) -> None:
    staging, _ = arena
    with pytest.raises(UnpackError) as exc:
        unpack(staging, zstd_of(layer(M("zeros", data=bytes(8 * LIMIT)))))
    assert str(exc.value) == f"src: layer 0: unpacks to more than the limit of {LIMIT} bytes " \
        "(see --max-layer-size)"
    assert not [p for p in psutil.Process().children() if p.name() == "zstd"]


def test_bad_zstd_and_garbage_are_one_line(arena: tuple[Path, Path]) -> None:
    staging, _ = arena
    for bad in (b"\x28\xb5\x2f\xfd" + bytes(100), zstd_of(layer(M("f")))[:-9]):
        with pytest.raises(UnpackError) as exc:
            unpack(staging, bad)
        message = str(exc.value)
        assert message.startswith("src: layer 0: not a valid zstd stream: ")
        assert "\n" not in message and len(message) > len("src: layer 0: not a valid zstd stream: ")
    with pytest.raises(UnpackError) as exc:
        unpack(staging, b"not a tar at all" * 100)
    assert str(exc.value).startswith("src: layer 0: not a valid tar layer: ")


def gzip_of(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, mtime=0)


def bytes_written() -> int:
    """What this process has passed to write(2) so far, every thread (/proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_a_layer_past_the_limit_is_refused_before_anything_is_written(
        arena: tuple[Path, Path], compress: str) -> None:
    """Five members of 1 MiB under a 4 MiB limit: each alone fits, the fifth passes the
    limit. The layer is measured before unpacking, so not even the first four are written.
    A reaped child's writes count as ours (zstd's output into its pipe, once): unpacking
    the four would add 4 MiB on top."""
    staging, _ = arena
    data = layer(*(M(f"m{i}", data=bytes(1 << 20)) for i in range(5)))
    blob = gzip_of(data) if compress == "gzip" else zstd_of(data)
    before = bytes_written()
    with pytest.raises(UnpackError) as exc:
        unpack(staging, blob, limit=4 << 20)
    written = bytes_written() - before
    assert str(exc.value) == ("src: layer 0: unpacks to more than the limit of 4194304 bytes "
                              "(see --max-layer-size)")
    assert os.listdir(staging) == []
    tool_output = len(data) if compress == "zstd" else 0
    assert written <= tool_output + len(blob) + 65536, written
    unpack(staging, blob, limit=8 << 20)      # the same layer under a higher limit: written
    assert sorted(os.listdir(staging)) == [f"m{i}" for i in range(5)]


def test_a_wrong_diff_id_is_refused_before_anything_is_written(arena: tuple[Path, Path]) -> None:
    staging, _ = arena
    data = layer(M("big", data=bytes(1 << 20)))
    before = bytes_written()
    with pytest.raises(UnpackError, match="does not match its diff_id"):
        unpack_layer(io.BytesIO(gzip_of(data)), staging, "src: layer 0", LIMIT,
                     "sha256:" + "0" * 64)
    assert os.listdir(staging) == [] and bytes_written() - before < 4096


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME])
def test_an_extended_header_is_bounded_before_it_is_read(arena: tuple[Path, Path],
                                                         kind: bytes) -> None:
    """A 300 MiB PAX header or GNU long name (a 300 KiB gzip) would be read into memory
    whole by tarfile: it is refused from its declared size."""
    staging, _ = arena
    info = tarfile.TarInfo("././@LongLink" if kind == tarfile.GNUTYPE_LONGNAME else "pax")
    info.type, info.size = kind, 300 << 20
    head = info.tobuf(tarfile.USTAR_FORMAT if kind == tarfile.XHDTYPE else tarfile.GNU_FORMAT)
    blob = gzip_of(head + bytes(info.size) + layer(M("f")))
    with pytest.raises(UnpackError) as exc:
        unpack(staging, blob, limit=1 << 30)
    assert str(exc.value) == ("src: layer 0: not a valid tar layer: an extended header of "
                              "314572800 bytes, over the limit of 1048576")
    assert os.listdir(staging) == []


def test_a_folder_whose_parent_became_a_file_is_skipped_by_the_modes(
        arena: tuple[Path, Path]) -> None:
    """`a/a` a folder, then `a` a file (found by fuzzing): the folder is gone, its mode is
    not applied, and no NotADirectoryError escapes."""
    staging, _ = arena
    unpack(staging, layer(M("a/a", "dir"), M("a")))
    assert (staging / "a").is_file()
