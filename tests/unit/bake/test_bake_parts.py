from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

import pytest

from agent import cpio
from agent.bake.build import (
    BuildRequest,
    bake_initramfs,
    check_output,
    check_size,
    gather_sources,
    read_input,
    write_output,
)
from agent.bake.firmware import firmware_entries, resolve_in_tree
from agent.bake.squash import plan_parallelism
from agent.commands.options import parse_size
from agent.errors import BuildError, UsageError, ValidationFailed
from agent.files import open_buffer
from agent.output import write_atomically


@pytest.mark.parametrize("members,path,expected", [
    ({}, "lib/firmware", "lib/firmware"),
    ({"lib": cpio.symlink("lib", "usr/lib")}, "lib/firmware", "usr/lib/firmware"),
    ({"lib": cpio.symlink("lib", "/usr/lib")}, "lib/firmware", "usr/lib/firmware"),
    ({"lib": cpio.symlink("lib", "usr/lib"),
      "usr/lib/firmware": cpio.symlink("usr/lib/firmware", "../../fw")}, "lib/firmware", "fw"),
    ({"lib": cpio.directory("lib")}, "lib/firmware", "lib/firmware"),
])
def test_firmware_folder_follows_the_input_symlinks(members: dict[str, cpio.Entry], path: str,
                                                    expected: str) -> None:
    assert resolve_in_tree(members, path) == expected


def test_symlink_loop_is_refused() -> None:
    loop = {"a": cpio.symlink("a", "b"), "b": cpio.symlink("b", "a")}
    with pytest.raises(BuildError, match=r"^initramfs: too many symlinks resolving /a/x$"):
        resolve_in_tree(loop, "a/x")


def test_firmware_from_both_layouts_later_extension_wins(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    (one / "lib/firmware/vendor").mkdir(parents=True)
    (one / "lib/firmware/vendor/a.bin").write_bytes(b"old")
    (one / "lib/firmware/vendor/b.bin").write_bytes(b"b")
    (two / "usr/lib/firmware/vendor").mkdir(parents=True)
    (two / "usr/lib/firmware/vendor/a.bin").write_bytes(b"new")
    (two / "usr/lib/firmware/vendor/c.bin").symlink_to("a.bin")
    (two / "usr/lib/firmware/alias").symlink_to("vendor")
    entries = firmware_entries([one, two], "usr/lib/firmware")
    got = {e.name: (stat.S_IFMT(e.mode), e.content()) for e in entries}
    assert got == {"usr/lib/firmware/alias": (stat.S_IFLNK, b"vendor"),
                   "usr/lib/firmware/vendor/a.bin": (stat.S_IFREG, b"new"),
                   "usr/lib/firmware/vendor/b.bin": (stat.S_IFREG, b"b"),
                   "usr/lib/firmware/vendor/c.bin": (stat.S_IFLNK, b"a.bin")}


@pytest.mark.parametrize("text,size", [("123", 123), ("64M", 64 << 20), ("64MiB", 64 << 20),
                                       ("1.5g", 3 << 29), ("2k", 2048), ("10 MB", 10 << 20)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(("text", "flag", "message"), [
    ("big", "--max-size", "--max-size 'big': not a size (e.g. 64M, 1G, 123456)"),
    ("0", "--max-layer-size", "--max-layer-size '0': must be positive"),
    ("-5M", "--max-layer-size", "--max-layer-size '-5M': not a size (e.g. 64M, 1G, 123456)"),
])
def test_parse_size_refuses(text: str, flag: str, message: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_size(text, flag)
    assert str(exc.value) == message


def test_build_and_validate_share_the_fetch_options() -> None:
    from agent.cli import build_parser

    common = ["--insecure-registry", "r:5000", "--arch", "arm64", "--max-layer-size", "64M"]
    build = build_parser().parse_args(["build", "--initramfs", "i", "-o", "o", *common])
    check = build_parser().parse_args(["validate", "dir:x", *common])
    for args in (build, check):
        assert (args.insecure_registry, args.arch, args.max_layer_size) == (
            ["r:5000"], "arm64", 64 << 20)


def test_size_over_budget_names_every_size() -> None:
    req = BuildRequest(Path("in"), Path("out.img"), max_size=1000)
    assert check_size(req, 500, 500) == 1000
    with pytest.raises(BuildError) as err:
        check_size(req, 501, 500)
    assert str(err.value) == ("out.img: would be 1004 bytes, over --max-size 1000 "
                              "(input 501 + extensions 500); nothing written")


def test_atomic_write_replaces_whole(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.write_bytes(b"old")

    def write(f: BinaryIO) -> None:
        f.write(b"new" * 1000)

    write_atomically(dest, write)
    assert dest.read_bytes() == b"new" * 1000
    assert os.listdir(tmp_path) == ["out"]


def test_failed_writer_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.write_bytes(b"old")

    def fail(f: BinaryIO) -> None:
        f.write(b"partial")
        raise BuildError("boom")

    with pytest.raises(BuildError, match=r"^boom$"):
        write_atomically(dest, fail)
    assert dest.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out"]


def test_too_many_layers_and_no_layers_are_problems() -> None:
    def request(count: int) -> BuildRequest:
        return BuildRequest(Path("in"), Path("out"),
                            extensions=tuple(f"dir:e{i}" for i in range(count)))
    assert gather_sources(request(499))[1] == []     # what boot can stack above the root
    assert gather_sources(request(500))[1] == [
        "500 extensions: an overlay stacks at most 499 above the root"]
    assert gather_sources(BuildRequest(Path("in"), Path("out")))[1] == [
        "no extensions: give --config with machine.install.extensions or --extension SOURCE"]


def test_build_config_paths_resolve_against_its_folder_extensions_against_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/m.yaml").write_text(
        "machine:\n  install:\n    extensions:\n      - image: oci-archive:a.tar\n")
    monkeypatch.chdir(tmp_path)
    request = BuildRequest(Path("in"), Path("out"), config=Path("etc/m.yaml"),
                           extensions=("dir:b",))
    assert gather_sources(request) == ([f"oci-archive:{tmp_path}/etc/a.tar", "dir:b"], [])


def test_an_already_baked_input_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "in.img"
    buf = io.BytesIO()
    cpio.write(cpio.with_parents([cpio.regular("extensions.yaml", b"{}")]), buf)
    img.write_bytes(buf.getvalue())
    blob, _, problems = read_input(img)
    blob.close()
    assert problems == [f"{img}: already has extensions baked in (/extensions.yaml): "
                        f"start from the initramfs without them"]


def test_the_input_is_sliced_like_bytes(tmp_path: Path) -> None:
    data = os.urandom((3 << 20) + 5)
    (tmp_path / "in.img").write_bytes(data)
    with open_buffer(str(tmp_path / "in.img"), -1) as blob:
        assert len(blob) == len(data) and blob[7] == data[7] and blob[-1] == data[-1]
        for key in (slice(0, 110), slice(5, 5), slice(9, 2), slice(len(data) - 3, None),
                    slice(-10, None), slice(1 << 20, 3 << 20), slice(len(data), len(data) + 9)):
            assert blob[key] == data[key]
        with pytest.raises(IndexError):
            blob[len(data)]


def test_the_input_is_copied_by_slices_and_one_that_shrank_refused(tmp_path: Path) -> None:
    data = os.urandom((3 << 20) + 5)
    src, dest, archive = tmp_path / "in.img", tmp_path / "out.img", tmp_path / "ext.cpio"
    src.write_bytes(data)
    archive.write_bytes(b"ARCHIVE")
    with open_buffer(str(src), -1) as blob:
        write_output(dest, b"EARLY", blob, 7, archive, "in.img")
        assert dest.read_bytes() == b"EARLY" + data[7:] + b"\0" + b"ARCHIVE"
        os.truncate(src, 1 << 20)    # rewritten in place while the build ran
        with pytest.raises(BuildError, match=r"^in.img: changed while being read; "
                                             r"nothing written$"):
            write_output(dest, b"", blob, 0, archive, "in.img")
    assert dest.read_bytes() == b"EARLY" + data[7:] + b"\0" + b"ARCHIVE"
    assert sorted(os.listdir(tmp_path)) == ["ext.cpio", "in.img", "out.img"]


def test_named_temp_file_when_o_tmpfile_is_unsupported(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def no_tmpfile(path: str, flags: int, mode: int = 0o777, **kw: object) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "not supported")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", no_tmpfile)
    dest = tmp_path / "out"

    def write(f: BinaryIO) -> None:
        f.write(b"data")
        assert [p.name for p in tmp_path.iterdir()] == [f".out.tmp-{os.getpid()}-0"]

    write_atomically(dest, write)
    assert dest.read_bytes() == b"data"
    assert os.listdir(tmp_path) == ["out"]


@pytest.mark.parametrize("count,jobs,cores,plan", [
    (10, 0, 2, (2, 1)), (1, 0, 2, (1, 2)), (10, 1, 2, (1, 2)), (3, 0, 64, (3, 21)),
    (100, 0, 64, (64, 1)), (5, 0, 1, (1, 1))])
def test_parallelism_spreads_threads_over_images(count: int, jobs: int, cores: int,
                                                 plan: tuple[int, int]) -> None:
    assert plan_parallelism(count, jobs, cores) == plan


def test_output_folder_is_checked_first(tmp_path: Path) -> None:
    assert check_output(tmp_path / "out.img") == []
    assert check_output(tmp_path / "no" / "out.img") == [
        f"{tmp_path}/no/out.img: folder {tmp_path}/no does not exist"]
    assert check_output(tmp_path) == [f"{tmp_path}: is a folder, not a file name for the output"]


def test_an_input_over_budget_is_refused_before_any_work(tmp_path: Path) -> None:
    img = tmp_path / "in.img"
    with img.open("wb") as f:
        cpio.write([cpio.regular("init", b"x" * 100)], f)
    req = BuildRequest(img, tmp_path / "out.img", extensions=("dir:/nonexistent",),
                       max_size=100)
    with pytest.raises(ValidationFailed) as err:
        bake_initramfs(req)
    assert err.value.problems == [
        f"{img}: already {img.stat().st_size} bytes, over --max-size 100 before any extension",
        "dir:/nonexistent: /nonexistent does not exist"]
