"""`overlay-agent inspect` on Debian-style initrds (early microcode cpio + compressed main)
with extensions appended, and on lists whose images do not match."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from bake_support import archive, debian_style_initrd, make_extension, overlay_agent

from agent import cpio, listfile


@pytest.mark.parametrize("main", ["zstd", "gzip", "xz"])
def test_inspect_debian_initrd_with_baked_extension(tmp_path: Path, main: str) -> None:
    initrd = debian_style_initrd(tmp_path / "initrd.img", main=main)
    ext = make_extension(tmp_path / "exts", "gvisor", {"usr/local/bin/runsc": b"\0" * 5000},
                         version="20220117.0-v1.0.0")
    out = tmp_path / "out.img"
    overlay_agent("build", "--extension", f"dir:{ext}", "--os-version", "v1.7.0",
                  "--initramfs", initrd, "-o", out, "--compression", "xz")
    report = json.loads(overlay_agent("inspect", out, "-o", "json").stdout)
    assert [(s["format"], s["offset"]) for s in report["segments"]] == [
        ("cpio", 0), (main, report["segments"][1]["offset"]),
        ("xz", initrd.stat().st_size + (-initrd.stat().st_size % 4))]
    assert report["segments"][0]["members"] == 4      # kernel/x86/microcode/AuthenticAMD.bin
    (row,) = report["extensions"]
    assert {k: row[k] for k in ("index", "name", "version", "image", "kind",
                                "image_matches")} == {
        "index": 0, "name": "gvisor", "version": "20220117.0-v1.0.0",
        "image": "000-gvisor.sqsh", "kind": "extension", "image_matches": "ok"}
    assert row["sha256"] == row["actual_sha256"] and row["size"] == row["actual_size"]
    table = overlay_agent("inspect", out).stdout.splitlines()
    assert table[0] == f"{out}: {out.stat().st_size} bytes, 3 segment(s)"
    assert table[-2].split() == ["INDEX", "NAME", "VERSION", "IMAGE", "SIZE", "SHA256", "MATCH"]
    assert table[-1].split() == ["000", "gvisor", "20220117.0-v1.0.0", "000-gvisor.sqsh",
                                 str(row["size"]), row["sha256"][:12], "ok"]
    assert yaml.safe_load(overlay_agent("inspect", out, "-o", "yaml").stdout) == report


def test_inspect_flags_images_that_do_not_match(tmp_path: Path) -> None:
    good, bad = b"hsqs" + b"1" * 60, b"hsqs" + b"2" * 60
    meta = listfile.Metadata("a", "1")
    layers = (
        listfile.Layer("000-a.sqsh", meta, hashlib.sha256(good).hexdigest(), len(good)),
        listfile.Layer("001-b.sqsh", meta, hashlib.sha256(good).hexdigest(), len(good)),
        listfile.Layer("002-c.sqsh", meta, hashlib.sha256(good).hexdigest(), len(good)),
        listfile.Layer("003-talos.sqsh", meta))       # a Talos-written entry: no sha256
    listing = listfile.dump_list(layers).encode()
    img = tmp_path / "img"
    img.write_bytes(cpio.compress(archive([
        cpio.regular("extensions.yaml", listing), cpio.regular("extensions/000-a.sqsh", good),
        cpio.regular("extensions/001-b.sqsh", bad),
        cpio.regular("extensions/003-talos.sqsh", good)]), "gzip"))
    proc = overlay_agent("inspect", img, "-o", "json", check=False)
    assert proc.returncode == 1
    assert [e["image_matches"] for e in json.loads(proc.stdout)["extensions"]] == [
        "ok", "mismatch", "missing", "unchecked"]


def test_inspect_without_list_and_on_garbage(tmp_path: Path) -> None:
    img = debian_style_initrd(tmp_path / "initrd.img")
    proc = overlay_agent("inspect", img)
    assert proc.stdout.splitlines()[-1] == "no /extensions.yaml: no extensions baked in"
    junk = tmp_path / "junk"
    junk.write_bytes(b"MZ" + b"\0" * 100)
    proc = overlay_agent("inspect", junk, check=False)
    assert (proc.returncode, proc.stderr) == (1, f"overlay-agent: error: {junk}: unknown data at "
                                              f"offset 0 (not cpio, gzip, xz, lzma, bzip2, zstd "
                                              f"or lz4)\n")
