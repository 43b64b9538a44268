"""Pack -> read back through every local transport; digests, platforms, tags, CLI."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from agent.cli import main
from agent.errors import SourceError, ValidationFailed
from agent.image import FetchOptions, fetch_extension
from agent.image.pack import PackFormat, PackOptions, pack_extension
from tests.unit.image.images import FIXTURES, VALID, make_multi_platform, unpacked_layout


def tree(root: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        body = (os.readlink(p).encode() if p.is_symlink()
                else p.read_bytes() if p.is_file() else b"")
        mode = st.st_mode if not p.is_symlink() else stat.S_IFLNK
        out[str(p.relative_to(root))] = (mode, body)
    return out


def packed(tmp_path: Path, fmt: PackFormat = PackFormat.OCI_ARCHIVE, mtime: int = 0,
           name: str = "ext.tar", tag: str | None = None) -> tuple[Path, str]:
    out = tmp_path / name
    return out, pack_extension(VALID, out, PackOptions(fmt, tag=tag, mtime=mtime))


def test_pack_is_reproducible(tmp_path: Path) -> None:
    a, digest_a = packed(tmp_path, name="a.tar")
    work = tmp_path / "copy"
    shutil.copytree(VALID, work, symlinks=True)
    for p in work.rglob("*"):
        os.utime(p, (12345, 12345), follow_symlinks=False)
    b = tmp_path / "b.tar"
    assert pack_extension(work, b, PackOptions()) == digest_a
    assert a.read_bytes() == b.read_bytes()
    c, digest_c = packed(tmp_path, mtime=1700000000, name="c.tar")
    assert digest_c != digest_a
    with tarfile.open(c) as tf:
        members = tf.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == \
        {(0, 0, "", "", 1700000000)}
    assert not list(tmp_path.glob(".*"))     # no temporary files left beside the output


@pytest.mark.parametrize("fmt", list(PackFormat))
def test_skopeo_accepts_packed_images(tmp_path: Path, fmt: PackFormat) -> None:
    out, digest = packed(tmp_path, fmt)
    proc = subprocess.run(["skopeo", "inspect", f"{fmt.value}:{out}"], capture_output=True,
                          text=True, check=True)
    info = json.loads(proc.stdout)
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    assert len(info["Layers"]) == 1
    if fmt is PackFormat.OCI_ARCHIVE:
        assert info["Digest"] == digest


@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive", "oci"])
def test_fetch_round_trip(tmp_path: Path, transport: str) -> None:
    fmt = PackFormat.DOCKER_ARCHIVE if transport == "docker-archive" else PackFormat.OCI_ARCHIVE
    out, digest = packed(tmp_path, fmt)
    source = f"{transport}:{out}"
    if transport == "oci":
        subprocess.run(["skopeo", "copy", "--quiet", f"oci-archive:{out}",
                        f"oci:{tmp_path}/layout:v1"], check=True)
        source = f"oci:{tmp_path}/layout:v1"
    ext = fetch_extension(source, tmp_path / "staging", FetchOptions())
    assert ext.source == source
    assert ext.root.is_relative_to(tmp_path / "staging")
    assert tree(ext.root) == tree(VALID)
    assert ext.metadata is not None and ext.metadata.name == "talos-valid"
    if transport == "docker-archive":
        assert ext.digest is not None and ext.digest.startswith("sha256:")
    else:
        assert ext.digest == digest


def test_fetch_zstd_layers_as_skopeo_writes_them(tmp_path: Path) -> None:
    """podman and skopeo can push `tar+zstd` layers; they unpack as the gzip ones do."""
    out, _ = packed(tmp_path)
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-compress-format", "zstd",
                    "--dest-compress", f"oci-archive:{out}", f"oci:{tmp_path}/layout:z"],
                   check=True)
    manifest = json.loads((tmp_path / "layout/index.json").read_text())["manifests"][0]
    blob = tmp_path / "layout/blobs" / manifest["digest"].replace(":", "/")
    layers = json.loads(blob.read_text())["layers"]
    assert [la["mediaType"] for la in layers] == ["application/vnd.oci.image.layer.v1.tar+zstd"]
    ext = fetch_extension(f"oci:{tmp_path}/layout:z", tmp_path / "staging", FetchOptions())
    assert tree(ext.root) == tree(VALID)


def test_pack_refuses_invalid_folder(tmp_path: Path) -> None:
    out = tmp_path / "bad.tar"
    with pytest.raises(ValidationFailed) as exc:
        pack_extension(FIXTURES / "talos-invalid" / "image", out, PackOptions())
    src = f"dir:{FIXTURES / 'talos-invalid' / 'image'}"
    assert exc.value.problems == [f"{src}: rootfs/boot/vmlinuz: not under an allowed path",
                                  f"{src}: rootfs/usr/lib64/a.so: not under an allowed path"]
    assert not out.exists()


def test_corrupted_blob_is_refused(tmp_path: Path) -> None:
    layout = unpacked_layout(tmp_path)
    index = json.loads((layout / "index.json").read_text())
    manifest_hex = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_hex).read_text())
    layer = layout / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]
    data = layer.read_bytes()
    layer.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(SourceError) as exc:
        fetch_extension(f"oci:{layout}", tmp_path / "staging", FetchOptions())
    assert str(exc.value).startswith(f"oci:{layout}: blob {manifest['layers'][0]['digest'][:19]}"
                                     " does not match its digest (got sha256:")
    assert not list((tmp_path / "staging").iterdir())    # the half-unpacked work is gone


def test_platform_is_picked_from_an_index(tmp_path: Path) -> None:
    layout = unpacked_layout(tmp_path)
    _, amd64 = make_multi_platform(layout, "sha256:" + "0" * 64)
    ext = fetch_extension(f"oci:{layout}", tmp_path / "staging", FetchOptions())
    assert ext.digest == amd64
    with pytest.raises(SourceError) as exc:
        fetch_extension(f"oci:{layout}", tmp_path / "staging", FetchOptions(arch="riscv64"))
    assert str(exc.value) == (f"oci:{layout}: no image for linux/riscv64 "
                              "(has: linux/arm64, linux/amd64)")


def test_tags_in_a_layout(tmp_path: Path) -> None:
    layout = unpacked_layout(tmp_path)
    index = json.loads((layout / "index.json").read_text())
    second = {**index["manifests"][0],
              "annotations": {"org.opencontainers.image.ref.name": "ext:v2"}}
    index["manifests"].append(second)
    (layout / "index.json").write_text(json.dumps(index))
    assert fetch_extension(f"oci:{layout}:ext:v2", tmp_path / "s", FetchOptions()).metadata
    cases = {f"oci:{layout}": f"oci:{layout}: holds 2 images; name one with :TAG "
                              "(tags: ext:v1, ext:v2)",
             f"oci:{layout}:nope": f"oci:{layout}:nope: no image tagged 'nope'"}
    for source, message in cases.items():
        with pytest.raises(SourceError) as exc:
            fetch_extension(source, tmp_path / "s", FetchOptions())
        assert str(exc.value) == message


@pytest.mark.parametrize(("source", "message"), [
    ("oci-archive:/nonexistent.tar", "oci-archive:/nonexistent.tar: /nonexistent.tar does not "
                                     "exist"),
    ("docker-archive:/nonexistent.tar", "docker-archive:/nonexistent.tar: /nonexistent.tar "
                                        "does not exist"),
    ("oci:/nonexistent", "oci:/nonexistent: /nonexistent is not an OCI layout folder"),
    ("dir:/nonexistent", "dir:/nonexistent: /nonexistent does not exist"),
])
def test_missing_files_are_one_line(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(SourceError) as exc:
        fetch_extension(source, tmp_path, FetchOptions())
    assert str(exc.value) == message


def test_not_a_tar_is_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tar"
    bogus.write_text("hello")
    with pytest.raises(SourceError) as exc:
        fetch_extension(f"oci-archive:{bogus}", tmp_path / "s", FetchOptions())
    assert str(exc.value).startswith(f"oci-archive:{bogus}: {bogus} is not a readable tar "
                                     "archive")


def test_cli_validate_and_pack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ext.tar"
    assert main(["pack", str(VALID), "-o", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: sha256:")
    assert main(["validate", f"oci-archive:{out}", f"dir:{VALID}"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"dir:{VALID}: manifest.yaml: metadata.name 'talos-valid' is also used " \
                       f"by oci-archive:{out}"
    assert main(["validate", f"oci-archive:{out}", "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["extensions"][0]["metadata"]["name"] == "talos-valid"
    assert main(["validate", "foo:bar", f"dir:{VALID}", "--os-version", "0.1"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "foo:bar: unknown transport 'foo' (known: docker, oci, oci-archive, docker-archive, "
        "dir; a registry image needs REGISTRY/REPO:TAG)",
        f"dir:{VALID}: manifest.yaml: metadata.compatibility.talos.version '>= v1.0.0' does "
        "not allow the target OS version 0.1"]


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", f"dir:{VALID}", "--policy", str(tmp_path / "no.yaml")]) == 2
    err = capsys.readouterr().err
    assert err == (f"overlay-agent: error: {tmp_path}/no.yaml: cannot read policy file: "
                   "No such file or directory\n")
    assert main(["validate", f"dir:{VALID}", "--os-version", "latest"]) == 2
    assert capsys.readouterr().err == ("overlay-agent: error: --os-version: 'latest' is not a "
                                       "version\n")
    assert main(["pack", str(FIXTURES / "boundary" / "image"), "-o",
                 str(tmp_path / "x.tar")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("overlay-agent: error: 3 problem(s) found:\n")
    assert "Traceback" not in err
    assert not (tmp_path / "x.tar").exists()


@pytest.mark.parametrize(("argv", "code", "err"), [
    (["validate", f"dir:{VALID}", "--base-root", "/nonexistent"], 2,
     "/nonexistent: cannot read base root: No such file or directory"),
    (["validate", f"dir:{VALID}", "--base-root", str(VALID / "manifest.yaml")], 2,
     f"{VALID}/manifest.yaml: base root is neither a folder nor a squashfs file"),
    (["validate", f"dir:{VALID}", "--max-layer-size", "0"], 2,
     "--max-layer-size '0': must be positive"),
    (["pack", str(VALID), "-o", "/nonexistent/x.tar"], 2,
     "/nonexistent/x.tar: folder /nonexistent does not exist"),
    (["pack", str(VALID), "-o", "/tmp/x.tar", "--tag", "Bad Tag"], 2,
     "Bad Tag: not a valid NAME:TAG image tag (give one with --tag)"),
])
def test_cli_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], code: int,
                          err: str) -> None:
    assert main(argv) == code
    assert capsys.readouterr().err == f"overlay-agent: error: {err}\n"
