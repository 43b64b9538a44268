"""Hostile and careless inputs on the build side and `get`: validate, pack, build, inspect,
get (metrics, gc and initramfs-hook: test_hostile_runtime.py).

Each case is generated here (no stored binaries) and run through the real command line in
a child process under resource limits (tests/hostile_cli.py). Each asserts the exact exit
status, standard output and error, and that no traceback appeared.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import cpio
from agent.statusfile import boot_doc, extension_doc
from devtools.layers import M, layer
from tests.hostile import alias_bomb_lines, mkfifo, put, sparse, symlink_to, unix_socket
from tests.hostile_cli import HANG_GUARD, MAX_CPU, RUNNER, Case, check
from tests.unit.image.images import VALID, read_index, unpacked_layout, write_blob

# ---------------------------------------------------------------- generators

def ext_dir(tmp: Path, manifest: bytes | None = None, name: str = "ext") -> Path:
    """A copy of the valid fixture extension, its manifest replaced when given."""
    folder = tmp / name
    shutil.copytree(VALID, folder, symlinks=True)
    if manifest is not None:
        (folder / "manifest.yaml").write_bytes(manifest)
    return folder


def manifest_with(extra: str = "", version: str = '">= v1.0.0"', name: str = "talos-valid",
                  mversion: str = "1.0.0") -> bytes:
    return (f"version: v1alpha1\nmetadata:\n  name: {name}\n  version: {mversion}\n"
            f"  author: a\n  description: d\n  compatibility:\n    talos:\n"
            f"      version: {version}\n{extra}").encode()


def deep_yaml(depth: int, key: str = "a") -> bytes:
    return f"{key}: ".encode() + b"[" * depth + b"]" * depth + b"\n"


def alias_bomb_yaml(key: str = "bomb") -> bytes:
    lines = alias_bomb_lines()
    return ("\n".join(lines) + f"\n{key}: *a8\n").encode()


def validate_manifest(data: bytes | Callable[[Path], None]) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        folder = ext_dir(tmp)
        if callable(data):
            (folder / "manifest.yaml").unlink()
            data(folder / "manifest.yaml")
        else:
            (folder / "manifest.yaml").write_bytes(data)
        return ["validate", f"dir:{folder}"]
    return make


def validate_file(rel: bytes, kind: str = "file") -> Callable[[Path], list[str]]:
    """A file (or fifo, or socket) with a hostile name under rootfs."""
    def make(tmp: Path) -> list[str]:
        folder = ext_dir(tmp)
        path = os.path.join(os.fsencode(folder / "rootfs"), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if kind == "fifo":
            os.mkfifo(path)
        else:
            with open(path, "wb") as f:
                f.write(b"x")
        return ["validate", f"dir:{folder}"]
    return make


def oci(change: Callable[[Path], None], transport: str = "oci") -> Callable[[Path], list[str]]:
    """The valid fixture packed into an OCI layout, then spoiled by `change(layout)`."""
    def make(tmp: Path) -> list[str]:
        layout = unpacked_layout(tmp)
        change(layout)
        return ["validate", f"{transport}:{layout}"]
    return make


def set_index(data: bytes) -> Callable[[Path], None]:
    return lambda layout: (layout / "index.json").write_bytes(data)


def manifest_desc(layout: Path) -> tuple[Path, dict[str, object]]:
    digest = read_index(layout)["manifests"][0]["digest"].split(":")[1]
    path = layout / "blobs" / "sha256" / digest
    return path, json.loads(path.read_bytes())


def replace_layer_blob(make_blob: Callable[[Path], None]) -> Callable[[Path], None]:
    """The layer blob file replaced by something made by make_blob(path)."""
    def change(layout: Path) -> None:
        _, manifest = manifest_desc(layout)
        digest = manifest["layers"][0]["digest"].split(":")[1]  # type: ignore[index]
        path = layout / "blobs" / "sha256" / digest
        path.unlink()
        make_blob(path)
    return change


def with_layer(data: bytes, diff_id: str | None = None) -> Callable[[Path], None]:
    """The image's only layer replaced by `data` (config and manifest kept consistent)."""
    def change(layout: Path) -> None:
        mpath, manifest = manifest_desc(layout)
        config_digest = manifest["config"]["digest"].split(":")[1]  # type: ignore[index]
        config = json.loads((layout / "blobs" / "sha256" / config_digest).read_bytes())
        raw = diff_id or "sha256:" + hashlib.sha256(
            gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).hexdigest()
        config["rootfs"]["diff_ids"] = [raw]
        cdesc = write_blob(layout, json.dumps(config).encode())
        ldesc = write_blob(layout, data)
        manifest["config"] = {**manifest["config"], **cdesc}  # type: ignore[dict-item]
        manifest["layers"] = [{**manifest["layers"][0], **ldesc}]  # type: ignore[index]
        mdesc = write_blob(layout, json.dumps(manifest).encode())
        index = read_index(layout)
        index["manifests"][0].update(mdesc)
        (layout / "index.json").write_text(json.dumps(index))
        mpath.unlink()
    return change


def deep_layer(depth: int) -> bytes:
    members = [M("manifest.yaml", data=(VALID / "manifest.yaml").read_bytes())]
    names = ["rootfs", "usr", "local"] + ["d"] * depth
    members += [M("/".join(names[:i]), "dir") for i in range(1, len(names) + 1)]
    members.append(M("/".join(names) + "/f"))
    return layer(*members, gz=True)


def members_layer(count: int, size: int) -> bytes:
    """`count` members of `size` zero bytes: each alone under a limit, together over it."""
    return layer(M("manifest.yaml", data=(VALID / "manifest.yaml").read_bytes()),
                 *(M(f"rootfs/usr/local/z{i}", data=bytes(size)) for i in range(count)), gz=True)


def pax_bomb_layer(size: int) -> tuple[bytes, str]:
    """A PAX header of `size` bytes (tarfile reads one whole) before a small layer, gzipped
    as a stream; and its diff_id."""
    info = tarfile.TarInfo("pax")
    info.type, info.size = tarfile.XHDTYPE, size
    parts = [info.tobuf(tarfile.USTAR_FORMAT), *[bytes(1 << 20)] * (size >> 20),
             layer(M("manifest.yaml"))]
    digest, packer = hashlib.sha256(), zlib.compressobj(1, wbits=31)
    out = []
    for part in parts:
        digest.update(part)
        out.append(packer.compress(part))
    return b"".join(out) + packer.flush(), "sha256:" + digest.hexdigest()


def bomb_layer() -> bytes:
    return layer(M("manifest.yaml", data=(VALID / "manifest.yaml").read_bytes()),
                 M("rootfs/usr/local/zeros", data=bytes(64 << 20)), gz=True)










# ---------------------------------------------------------------- initramfs generators

def archive(*entries: cpio.Entry) -> bytes:
    buf = io.BytesIO()
    cpio.write(entries, buf)
    return buf.getvalue()


BASE = (cpio.directory("etc"), cpio.regular("init", b"#!/bin/sh\n", 0o755))


def zstd_stream(head: bytes, zeros: int) -> bytes:
    """`head` and `zeros` zero bytes, zstd-compressed without holding them in memory."""
    proc = subprocess.Popen(["zstd", "-q", "-3", "-c"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    out: list[bytes] = []
    import threading
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    proc.stdin.write(head)
    chunk = bytes(1 << 22)
    for _ in range(zeros // len(chunk)):
        proc.stdin.write(chunk)
    proc.stdin.close()
    reader.join()
    proc.wait()
    return out[0]


def incompressible_zstd(size: int) -> bytes:
    """An archive with a member of `size` random bytes, zstd-compressed: a frame as long
    as its content (read by slices, never copied whole)."""
    data = archive(*BASE, cpio.regular("big", random.Random(1).randbytes(size)))
    return subprocess.run(["zstd", "-q", "-1", "-c"], input=data, capture_output=True,
                          check=True).stdout


def declared_member(name: str, size: int) -> bytes:
    """A newc header announcing `size` bytes that follow as zeros (up to the compressor)."""
    return cpio._header(1, cpio.regular(name, b""), size, 1) + b"\0\0"


def initramfs(data: bytes | Callable[[], bytes] | Callable[[Path], None]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / "initrd.img"
        if callable(data):
            try:
                made = data()   # type: ignore[call-arg]
            except TypeError:
                data(path)      # type: ignore[call-arg]
                return path
            path.write_bytes(made)   # type: ignore[arg-type]
        else:
            path.write_bytes(data)
        return path
    return make


def baked_under(name: str, *extra: cpio.Entry) -> bytes:
    return archive(*BASE, *extra, cpio.regular(name, b'{"version": 1, "layers": []}'))


def non_hex_header() -> bytes:
    blob = bytearray(archive(*BASE))
    blob[6:14] = b" 0000001"     # int() would take it, the kernel does not
    return bytes(blob)


def corrupt_zstd() -> bytes:
    blob = bytearray(cpio.compress(archive(*BASE, cpio.regular("a", os.urandom(4096))), "zstd"))
    blob[20:40] = bytes(b ^ 0x5A for b in blob[20:40])
    return bytes(blob)


def build(config: bytes | Callable[[Path], None] | None = None,
          image: Callable[[Path], Path] | None = None) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        argv = ["build", "--initramfs", str((image or initramfs(archive(*BASE)))(tmp)),
                "-o", str(tmp / "out.img")]
        if config is None:
            argv += ["--extension", f"dir:{ext_dir(tmp)}"]
        else:
            path = tmp / "machine.yaml"
            if callable(config):
                config(path)
            else:
                path.write_bytes(config)
            argv += ["--config", str(path)]
        return argv
    return make


def inspect(image: Callable[[Path], Path], *more: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["inspect", str(image(tmp)), *more]


def with_list(text: bytes, *extra: cpio.Entry) -> Callable[[], bytes]:
    return lambda: archive(*BASE, *extra, cpio.directory("extensions"),
                           cpio.regular("extensions.yaml", text))


def listed(name: str = "x", version: str = "1", image: str = "000-x.sqsh") -> bytes:
    return json.dumps({"version": 1, "layers": [
        {"image": image, "kind": "extension", "sha256": "", "size": -1,
         "metadata": {"name": name, "version": version}}]}).encode()


# ---------------------------------------------------------------- status generators

def status(**changes: object) -> bytes:
    ext = extension_doc(index=0, image="000-x.sqsh", kind="extension", name="x", version="1",
                        phase="active", reason="", author="", description="",
                        compatibility={}, created="2024-01-01T00:00:00Z",
                        updated="2024-01-01T00:00:00Z")
    top = {k: v for k, v in changes.items() if not k.startswith("ext_")}
    ext.update({k[4:]: v for k, v in changes.items() if k.startswith("ext_")})
    doc = boot_doc(extensions=[ext], root="/sysroot", overlay="none", notes=[],  # no live overlay here
                   disabled=False, strict=False, list_path="/extensions.yaml",
                   activated="2024-01-01T00:00:00Z", duration_ms=1.0)
    doc.update(top)
    return json.dumps(doc).encode()


def get(data: bytes | Callable[[Path], None], *more: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        path = put(tmp / "status.json", data)
        return ["get", "extensions", "--status", str(path), *more]
    return make


NODE = os.uname().nodename
E = "overlay-agent: error: "
V = "{tmp}/ext"


def failed(*problems: str) -> str:
    return E + f"{len(problems)} problem(s) found:\n" + "".join(p + "\n" for p in problems)


def row(*cells: str) -> str:
    """One `get extensions` row as the table pads it (for the one-extension status)."""
    widths = [max(len(NODE), 4) + 3, 12, 18, 14, 10, 7]
    return "".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + cells[-1]


CASES: dict[str, Case] = {
    # ------------------------------------------------ validate: manifest.yaml
    "validate-manifest-deep-yaml": Case(validate_manifest(deep_yaml(1000)), 1,
                                        "", f"dir:{V}: manifest.yaml: nested deeper than 64 "
                                        "levels at line 1\n"),
    "validate-manifest-alias-bomb": Case(validate_manifest(alias_bomb_yaml()), 1, "",
                                         f"dir:{V}: manifest.yaml: uses a YAML alias at line 2 "
                                         "(aliases are not supported)\n"),
    "validate-manifest-not-utf8": Case(validate_manifest(b"version: v1alpha1\n\xff\xfe\n"), 1,
                                       "", f"dir:{V}: manifest.yaml: cannot read: not UTF-8 "
                                       "text\n"),
    "validate-manifest-fifo": Case(validate_manifest(mkfifo), 1, "",
                                   f"dir:{V}: manifest.yaml: not a regular file\n"),
    "validate-manifest-symlink-dev-zero": Case(validate_manifest(symlink_to("/dev/zero")), 1,
                                               "", f"dir:{V}: manifest.yaml: not a regular "
                                               "file\n"),
    "validate-manifest-2-MiB": Case(validate_manifest(b"#" * (2 << 20)), 1, "",
                                    f"dir:{V}: manifest.yaml: larger than 1048576 bytes\n"),
    "validate-range-5000-digits": Case(validate_manifest(manifest_with(
        version='">= ' + "9" * 5000 + '"')), 1, "",
        f"dir:{V}: manifest.yaml: metadata.compatibility.talos.version: bad version range "
        "'>= " + "9" * 74 + "...': "
        "a number has more than 18 digits\n"),
    "validate-int-5000-digits": Case(validate_manifest(manifest_with(mversion="9" * 5000)), 1,
                                     "", f"dir:{V}: manifest.yaml: not valid YAML: Exceeds the "
                                     "limit (4300 digits) for integer string conversion\n"),
    "validate-bad-date": Case(validate_manifest(manifest_with(mversion="2022-13-45")), 1, "",
                              f"dir:{V}: manifest.yaml: not valid YAML: month must be in "
                              "1..12\n"),
    "validate-name-with-newline": Case(validate_manifest(manifest_with(
        name='"evil\\nname"')), 1, "", f"dir:{V}: manifest.yaml: metadata.name: "
        "'evil\\nname' may hold only lowercase letters, digits, '-', '_' and '.'\n"),
    "validate-name-with-escape": Case(validate_manifest(manifest_with(
        name='"\\e[2Jx"')), 1, "", f"dir:{V}: manifest.yaml: metadata.name: "
        "'\\x1b[2Jx' may hold only lowercase letters, digits, '-', '_' and '.'\n"),
    "validate-description-20-KiB": Case(validate_manifest(manifest_with().replace(
        b"description: d", b"description: " + b"d" * 20_000)), 1, "",
        f"dir:{V}: manifest.yaml: metadata.description: over 16384 characters\n"),
    "validate-top-level-list": Case(validate_manifest(b"- 1\n"), 1, "",
                                    f"dir:{V}: manifest.yaml: top level is not a mapping\n"),
    "validate-two-documents": Case(validate_manifest(b"a: 1\n---\nb: 2\n"), 1, "",
                                   f"dir:{V}: manifest.yaml: holds 2 YAML documents, expected "
                                   "one\n"),
    "validate-python-tag": Case(validate_manifest(b"x: !!python/object/apply:os.system [id]\n"),
                                1, "", f"dir:{V}: manifest.yaml: not valid YAML at line 1\n"),
    # ------------------------------------------------ validate: file names and kinds
    "validate-file-name-newline": Case(validate_file(b"etc/evil\nname"), 1, "",
                                       f"dir:{V}: rootfs/etc/evil\\nname: not under an allowed "
                                       "path\n"),
    "validate-file-name-not-utf8": Case(validate_file(b"etc/bad\xff\xfe"), 1, "",
                                        f"dir:{V}: rootfs/etc/bad\\xff\\xfe: not under an allowed "
                                        "path\n"),
    "validate-file-name-escape": Case(validate_file(b"etc/\x1b[31mred"), 1, "",
                                      f"dir:{V}: rootfs/etc/\\x1b[31mred: not under an allowed "
                                      "path\n"),
    "validate-file-name-crlf-forged-line": Case(
        validate_file(b"etc/x\r\ndir:fake: /usr/local/ok: looks fine"), 1, "",
        f"dir:{V}: rootfs/etc/x\\r\\ndir:fake: /usr/local/ok: looks fine: not under an allowed "
        "path\n"),
    "validate-fifo-in-rootfs": Case(validate_file(b"usr/local/pipe", "fifo"), 1, "",
                                    f"dir:{V}: rootfs/usr/local/pipe: special files are not "
                                    "allowed (fifo)\n"),
    "validate-source-with-newline": Case(lambda tmp: ["validate", "dir:/no\nsuch"], 1, "",
                                         "dir:/no\\nsuch: /no\\nsuch does not exist\n"),
    "validate-json-alias-bomb": Case(lambda tmp: [*validate_manifest(alias_bomb_yaml(
        "metadata"))(tmp), "-o", "json"], 1, "", json.dumps({
            "ok": False, "extensions": [{"source": "dir:{tmp}/ext", "digest": None,
                                         "metadata": None}],
            "problems": [{"source": "dir:{tmp}/ext", "path": "manifest.yaml",
                          "reason": "uses a YAML alias at line 2 (aliases are not "
                                    "supported)"}]}, indent=2) + "\n"),
    # ------------------------------------------------ validate: OCI layouts and archives
    "oci-index-deep-json": Case(oci(set_index(b"[" * 100_000)), 1, "",
                                "oci:{tmp}/layout: index.json is not valid JSON\n"),
    "oci-index-5-MiB": Case(oci(set_index(b" " * (5 << 20) + b"{}")), 1, "",
                            "oci:{tmp}/layout: index.json is too large\n"),
    "oci-index-not-utf8": Case(oci(set_index(b"\xff\xfe{}")), 1, "",
                               "oci:{tmp}/layout: index.json is not valid JSON\n"),
    "oci-index-fifo": Case(oci(lambda layout: ((layout / "index.json").unlink(),
                                               os.mkfifo(layout / "index.json"))), 1, "",
                           "oci:{tmp}/layout: cannot read index.json: a fifo, not a regular "
                           "file\n"),
    "oci-blob-fifo": Case(oci(replace_layer_blob(mkfifo)), 1, "",
                          "oci:{tmp}/layout: cannot read blobs/sha256/*: a fifo, not a regular "
                          "file\n"),
    "oci-blob-symlink-dev-zero": Case(oci(replace_layer_blob(symlink_to("/dev/zero"))), 1, "",
                                      "oci:{tmp}/layout: cannot read blobs/sha256/*: a "
                                      "character device, not a regular file\n"),
    "oci-blob-socket": Case(oci(replace_layer_blob(unix_socket)), 1, "",
                            "oci:{tmp}/layout: cannot read blobs/sha256/*: a socket, not a "
                            "regular file\n"),
    "oci-blob-sparse-1-TiB": Case(oci(replace_layer_blob(sparse(1 << 40))), 1, "",
                                  "oci:{tmp}/layout: blob sha256:* does not match its digest "
                                  "(got sha256:*, * bytes)\n"),
    "oci-digest-malformed": Case(oci(set_index(json.dumps({"manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json",
         "digest": "sha256:../../etc/passwd", "size": 1}]}).encode())), 1, "",
        "oci:{tmp}/layout: unsupported or malformed digest 'sha256:../../etc/passwd'\n"),
    "oci-layer-300-deep": Case(oci(with_layer(deep_layer(300))), 1, "",
                               "oci:{tmp}/layout: layer 0 (sha256:*): member 'rootfs/usr/local/"
                               + "d/" * 90 + "...': deeper than 256 levels\n"),
    "oci-layer-250-deep": Case(oci(with_layer(deep_layer(250))), 0,
                               "", "1 extension(s) valid\n"),
    "oci-layer-gzip-bomb": Case(lambda tmp: [*oci(with_layer(bomb_layer()))(tmp),
                                             "--max-layer-size", str(1 << 20)], 1, "",
                                "oci:{tmp}/layout: layer 0 (sha256:*): unpacks to more than "
                                "the limit of 1048576 bytes (see --max-layer-size)\n"),
    "oci-layer-gzip-members-past-limit": Case(lambda tmp: [
        *oci(with_layer(members_layer(5, 16 << 20)))(tmp), "--max-layer-size", str(64 << 20)],
        1, "", "oci:{tmp}/layout: layer 0 (sha256:*): unpacks to more than the limit of "
        "67108864 bytes (see --max-layer-size)\n"),
    "oci-layer-pax-header-300-MiB": Case(oci(with_layer(*pax_bomb_layer(300 << 20))), 1, "",
                                         "oci:{tmp}/layout: layer 0 (sha256:*): not a valid "
                                         "tar layer: an extended header of 314572800 bytes, "
                                         "over the limit of 1048576\n"),
    "oci-layer-folder-then-file": Case(oci(with_layer(layer(
        M("manifest.yaml", data=(VALID / "manifest.yaml").read_bytes()),
        M("rootfs/usr/local/a/a", "dir"), M("rootfs/usr/local/a"), gz=True))), 0, "",
        "1 extension(s) valid\n"),
    "oci-layer-zstd-corrupt": Case(oci(with_layer(b"\x28\xb5\x2f\xfd" + os.urandom(64),
                                                  "sha256:" + "0" * 64)), 1, "",
                                   "oci:{tmp}/layout: layer 0 (sha256:*): not a valid zstd "
                                   "stream: *\n"),
    "oci-layer-not-tar": Case(oci(with_layer(b"garbage" * 100)), 1, "",
                              "oci:{tmp}/layout: layer 0 (sha256:*): not a valid tar layer: *\n"),
    "oci-archive-not-tar": Case(lambda tmp: ((tmp / "a.tar").write_bytes(b"not a tar" * 99),
                                             ["validate", f"oci-archive:{tmp}/a.tar"])[1], 1,
                                "", "oci-archive:{tmp}/a.tar: {tmp}/a.tar is not a readable tar "
                                "archive: *\n"),
    "docker-archive-deep-manifest": Case(lambda tmp: docker_archive(tmp, b"[" * 100_000), 1,
                                         "", "docker-archive:{tmp}/d.tar: manifest.json is not "
                                         "valid JSON\n"),
    # ------------------------------------------------ pack
    "pack-alias-bomb": Case(lambda tmp: ["pack", str(ext_dir(tmp, alias_bomb_yaml())),
                                         "-o", str(tmp / "o.tar")], 1,
                            failed(f"dir:{V}: manifest.yaml: uses a YAML alias at line 2 "
                                   "(aliases are not supported)")),
    "pack-file-name-newline": Case(lambda tmp: ["pack", validate_file(b"etc/a\nb")(tmp)[1][4:],
                                                "-o", str(tmp / "o.tar")], 1,
                                   failed(f"dir:{V}: rootfs/etc/a\\nb: not under an allowed path")),
    "pack-policy-fifo": Case(lambda tmp: (os.mkfifo(tmp / "p.yaml"),
                                          ["pack", str(ext_dir(tmp)), "-o", str(tmp / "o.tar"),
                                           "--policy", str(tmp / "p.yaml")])[1], 2,
                             E + "{tmp}/p.yaml: cannot read policy file: a fifo, not a regular "
                             "file\n"),
    "pack-policy-deep": Case(lambda tmp: ((tmp / "p.yaml").write_bytes(deep_yaml(500)),
                                          ["pack", str(ext_dir(tmp)), "-o", str(tmp / "o.tar"),
                                           "--policy", str(tmp / "p.yaml")])[1], 2,
                             E + "{tmp}/p.yaml: policy file: nested deeper than 64 levels at "
                             "line 1\n"),
    "pack-policy-not-utf8": Case(lambda tmp: ((tmp / "p.yaml").write_bytes(b"\xff"),
                                              ["pack", str(ext_dir(tmp)), "-o",
                                               str(tmp / "o.tar"), "--policy",
                                               str(tmp / "p.yaml")])[1], 2,
                                 E + "{tmp}/p.yaml: policy file is not UTF-8 text (byte 0)\n"),
    "pack-unencodable-path-ascii-terminal": Case(
        lambda tmp: ["pack", str(ext_dir(tmp, name="é")), "-o", str(tmp / "o.tar")], 0, "",
        "{tmp}/o.tar: sha256:*\n", env={"PYTHONIOENCODING": "ascii"}),
    # ------------------------------------------------ build: machine config
    "build-config-not-utf8": Case(build(b"machine:\n  \xff\n"), 1,
                                  failed("{tmp}/machine.yaml: not UTF-8 text (byte 11)")),
    "build-config-deep-yaml": Case(build(deep_yaml(2000, "machine")), 1,
                                   failed("{tmp}/machine.yaml: nested deeper than 64 levels at "
                                          "line 1")),
    "build-config-alias-bomb": Case(build(alias_bomb_yaml("machine")), 1,
                                    failed("{tmp}/machine.yaml: uses a YAML alias at line 2 "
                                           "(aliases are not supported)")),
    "build-config-fifo": Case(build(mkfifo), 1,
                              failed("{tmp}/machine.yaml: cannot read: a fifo, not a regular "
                                     "file")),
    "build-config-dev-zero": Case(build(symlink_to("/dev/zero")), 1,
                                  failed("{tmp}/machine.yaml: cannot read: a character device, "
                                         "not a regular file")),
    "build-config-17-MiB": Case(build(sparse(17 << 20)), 1,
                                failed("{tmp}/machine.yaml: cannot read: 17825792 bytes, over "
                                       "the limit of 16777216")),
    "build-config-5000-digits": Case(build(b"machine:\n  x: " + b"9" * 5000 + b"\n"), 1,
                                     failed("{tmp}/machine.yaml: not valid YAML: Exceeds the "
                                            "limit (4300 digits) for integer string "
                                            "conversion")),
    "build-config-image-a-number": Case(build(b"machine:\n  install:\n    extensions:\n"
                                              b"      - image: 7\n"), 1,
                                        failed("{tmp}/machine.yaml: machine.install."
                                               "extensions[0]: needs an image (a non-empty "
                                               "string)")),
    "build-config-image-newline": Case(build(b"machine:\n  install:\n    extensions:\n"
                                             b"      - image: \"dir:/x\\nfake\"\n"), 1,
                                       failed("dir:/x\\nfake: /x\\nfake does not exist")),
    # ------------------------------------------------ build: input initramfs
    "build-initramfs-fifo": Case(build(image=initramfs(mkfifo)), 1,
                                 failed("{tmp}/initrd.img: cannot read: a fifo, not a regular "
                                        "file")),
    "build-initramfs-dev-zero": Case(build(image=initramfs(symlink_to("/dev/zero"))), 1,
                                     failed("{tmp}/initrd.img: cannot read: a character "
                                            "device, not a regular file")),
    "build-initramfs-empty": Case(build(image=initramfs(b"")), 1,
                                  failed("{tmp}/initrd.img: holds no archive")),
    "build-initramfs-non-hex": Case(build(image=initramfs(non_hex_header)), 1,
                                    failed("{tmp}/initrd.img: segment 0 at offset 0: cpio: "
                                           "header at offset 0 has a field that is not 8 hex "
                                           "digits (the input must end on a complete "
                                           "archive)")),
    "build-baked-dotdot": Case(build(image=initramfs(baked_under(
        "extensions/../extensions.yaml", cpio.directory("extensions")))), 1,
        failed("{tmp}/initrd.img: already has extensions baked in (/extensions.yaml): start "
               "from the initramfs without them")),
    "build-baked-dot-slash": Case(build(image=initramfs(baked_under("./extensions.yaml"))), 1,
                                  failed("{tmp}/initrd.img: already has extensions baked in "
                                         "(/extensions.yaml): start from the initramfs "
                                         "without them")),
    "build-baked-double-slash": Case(build(image=initramfs(baked_under("etc//../extensions.yaml"))),
                                     1, failed("{tmp}/initrd.img: already has extensions baked "
                                               "in (/extensions.yaml): start from the "
                                               "initramfs without them")),
    "build-baked-through-symlink": Case(build(image=initramfs(baked_under(
        "up/extensions.yaml", cpio.symlink("up", "/")))), 1,
        failed("{tmp}/initrd.img: already has extensions baked in (/extensions.yaml): start "
               "from the initramfs without them")),
    "build-initramfs-truncated-xz": Case(build(image=initramfs(
        lzma.compress(archive(*BASE), check=lzma.CHECK_CRC32)[:-20])), 1,
        failed("{tmp}/initrd.img: xz stream at offset 0 is truncated (the input must end on a "
               "complete archive)")),
    "build-initramfs-zstd-corrupt": Case(build(image=initramfs(corrupt_zstd)), 1,
                                         failed("{tmp}/initrd.img: segment 0 at offset 0: not "
                                                "a valid zstd stream: * (the input must end on "
                                                "a complete archive)")),
    "build-initramfs-junk": Case(build(image=initramfs(archive(*BASE) + b"junk")), 1,
                                 failed("{tmp}/initrd.img: unknown data at offset 368 (not "
                                        "cpio, gzip, xz, lzma, bzip2, zstd or lz4) (the input "
                                        "must end on a complete archive)")),
    "build-initramfs-zstd-bomb": Case(build(image=initramfs(
        lambda: zstd_stream(declared_member("big", 3 << 30), 3 << 30))), 1,
        failed("{tmp}/initrd.img: segment 0 at offset 0: unpacks to more than 1073741824 "
               "bytes (the input must end on a complete archive)")),
    # ------------------------------------------------ inspect
    "inspect-zstd-bomb": Case(inspect(initramfs(
        lambda: zstd_stream(declared_member("big", 3 << 30), 3 << 30))), 1,
        E + "{tmp}/initrd.img: segment 0 at offset 0: unpacks to more than 1073741824 bytes\n"),
    "inspect-zero-bomb": Case(inspect(initramfs(lambda: zstd_stream(archive(*BASE), 2 << 30))),
                              1, E + "{tmp}/initrd.img: segment 0 at offset 0: unpacks to more "
                              "than 1073741824 bytes\n"),
    "inspect-gzip-bomb": Case(inspect(initramfs(lambda: gzip.compress(
        declared_member("big", 1 << 30) + bytes(1 << 30), 1))), 1,
        E + "{tmp}/initrd.img: segment 0 at offset 0: unpacks to more than 1073741824 bytes\n"),
    "inspect-zstd-frame-110-MiB": Case(inspect(initramfs(lambda: incompressible_zstd(
        110 << 20))), 0, "", "{tmp}/initrd.img: * bytes, 1 segment(s)\nSEGMENT  OFFSET  "
        "LENGTH     FORMAT  UNPACKED   MEMBERS\n0        0       *  zstd    115343844  3\n\n"
        "no /extensions.yaml: no extensions baked in\n"),
    "inspect-zstd-corrupt": Case(inspect(initramfs(corrupt_zstd)), 1,
                                 E + "{tmp}/initrd.img: segment 0 at offset 0: not a valid zstd "
                                 "stream: *\n"),
    "inspect-non-hex": Case(inspect(initramfs(non_hex_header)), 1,
                            E + "{tmp}/initrd.img: segment 0 at offset 0: cpio: header at "
                            "offset 0 has a field that is not 8 hex digits\n"),
    "inspect-truncated-member": Case(inspect(initramfs(declared_member("big", 1 << 30))), 1,
                                     E + "{tmp}/initrd.img: segment 0 at offset 0: cpio: member "
                                     "'big' is truncated\n"),
    "inspect-fifo": Case(inspect(initramfs(mkfifo)), 1,
                         E + "{tmp}/initrd.img: cannot read: a fifo, not a regular file\n"),
    "inspect-dev-zero": Case(inspect(initramfs(symlink_to("/dev/zero"))), 1,
                             E + "{tmp}/initrd.img: cannot read: a character device, not a "
                             "regular file\n"),
    "inspect-directory": Case(lambda tmp: ["inspect", str(tmp)], 1,
                              E + "{tmp}: cannot read: a directory, not a regular file\n"),
    "inspect-list-not-utf8": Case(inspect(initramfs(with_list(b"\xff{}"))), 1,
                                  E + "{tmp}/initrd.img: /extensions.yaml: not UTF-8 (byte 0)\n"),
    "inspect-list-deep-json": Case(inspect(initramfs(with_list(b"[" * 100_000))), 1,
                                   E + "{tmp}/initrd.img: /extensions.yaml: JSON nested too "
                                   "deeply\n"),
    "inspect-list-alias": Case(inspect(initramfs(with_list(b"version: 1\n" +
                                                           alias_bomb_yaml("layers")))), 1,
                               E + "{tmp}/initrd.img: /extensions.yaml: uses a YAML alias at "
                               "line 3 (aliases are not supported)\n"),
    "inspect-list-newline-version": Case(inspect(initramfs(with_list(listed(
        version="1\n999  evil  9.9  000-fake.sqsh  0  -  ok")))), 1, "",
        "**\n000    x     1\\n999  evil  9.9  000-fake.sqsh  0  -  ok  000-x.sqsh  -1    -  "
        "     missing\n", lines=6),
    "inspect-list-escape-name": Case(inspect(initramfs(with_list(listed(name="\x1b[2Jx")))),
                                     1, "", "**\n000    \\x1b[2Jx  1        000-x.sqsh  -1    "
                                     "-       missing\n", lines=6),
    "inspect-list-via-dotdot": Case(inspect(initramfs(lambda: archive(
        *BASE, cpio.directory("extensions"),
        cpio.regular("extensions/../extensions.yaml", listed())))), 1, "",
        "**\n000    x     1        000-x.sqsh  -1    -       missing\n", lines=6),
    # ------------------------------------------------ get extensions
    "get-fifo": Case(get(mkfifo), 1, E + "{tmp}/status.json: cannot read: a fifo, not a "
                     "regular file\n"),
    "get-dev-zero": Case(get(symlink_to("/dev/zero")), 1, E + "{tmp}/status.json: cannot "
                         "read: a character device, not a regular file\n"),
    "get-directory": Case(lambda tmp: ["get", "extensions", "--status", str(tmp)], 1,
                          E + "{tmp}: cannot read: a directory, not a regular file\n"),
    "get-17-MiB": Case(get(sparse(17 << 20)), 1, E + "{tmp}/status.json: cannot read: 17825792 "
                       "bytes, over the limit of 16777216\n"),
    "get-not-utf8": Case(get(b'{"schema": 1, "x": "\xff"}'), 1,
                         E + "{tmp}/status.json: not UTF-8 (byte 20)\n"),
    "get-deep-json": Case(get(b"[" * 100_000), 1,
                          E + "{tmp}/status.json: not valid JSON (nested too deeply)\n"),
    "get-index-a-string": Case(get(status(ext_index="0")), 1,
                               E + "{tmp}/status.json: extensions[0]: index is not an "
                               "integer\n"),
    "get-index-true": Case(get(status(ext_index=True)), 1,
                           E + "{tmp}/status.json: extensions[0]: index is not an integer\n"),
    "get-duration-a-string": Case(get(status(duration_ms="fast")), 1,
                                  E + "{tmp}/status.json: duration_ms is not a number\n"),
    "get-schema-true": Case(get(status(schema=True)), 1,
                            E + "{tmp}/status.json: unknown status schema True\n"),
    "get-notes-not-strings": Case(get(status(notes=[1])), 1,
                                  E + "{tmp}/status.json: notes is not a list of strings\n"),
    "get-loop-nul": Case(get(status(ext_loop="/dev/loop\x000")), 1,
                         E + "{tmp}/status.json: extensions[0]: loop is not a printable "
                         "string\n"),
    "get-device-escape": Case(get(status(ext_check="verity", ext_device="oa\x1b[2J")), 1,
                              E + "{tmp}/status.json: extensions[0]: device is not a printable "
                              "string\n"),
    "get-phase-a-list": Case(get(status(ext_phase=["active"])), 1,
                             E + "{tmp}/status.json: extensions[0]: unknown phase <list>\n"),
    "get-compatibility-30-deep": Case(get(status(ext_compatibility=json.loads(
        "{\"a\":" * 30 + "1" + "}" * 30))), 1,
        E + "{tmp}/status.json: extensions[0]: compatibility is nested deeper than 16 levels\n"),
    "get-version-newline-forges-no-row": Case(get(status(ext_version="1\nnode9  runtime  x")),
                                              0, "", "**   1\\nnode9  runtime  x\n", lines=2),
    "get-name-escape-sequence": Case(get(status(ext_name="\x1b[2J\x1b[31mx")), 0, "",
                                     "**   \\x1b[2J\\x1b[31mx   1\n", lines=2),
    "get-reason-newline": Case(get(status(ext_phase="failed", ext_reason="bad\nFAKE ROW")), 0,
                               "", "**   failed   bad\\nFAKE ROW\n", lines=2),
    "get-undecodable-byte": Case(get(status(ext_name="x\udcff")), 0, "", "**   x\\xff   1\n", lines=2),
    "get-note-newline": Case(get(status(notes=["list unusable\nFAKE"])), 0,
                             "overlay-agent: list unusable\\nFAKE\n", "**", lines=2),
    "get-json-control": Case(get(status(ext_name="a\nb"), "-o", "json"), 0, "",
                             '*"name": "a\\nb"*'),
    "get-yaml-control": Case(get(status(ext_name="a\x1bb"), "-o", "yaml"), 0, "",
                             '**    metadata:\n        name: "a\\eb"\n**'),
}


def docker_archive(tmp: Path, manifest: bytes) -> list[str]:
    path = tmp / "d.tar"
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tf.addfile(info, io.BytesIO(manifest))
    return ["validate", f"docker-archive:{path}"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_one_line_within_limits(tmp_path: Path, name: str) -> None:
    check(CASES[name], tmp_path)


def test_the_limits_bite() -> None:
    """The resource limits are real: a child that wants more gets refused or killed."""
    eat = subprocess.run([sys.executable, "-c", RUNNER.split("from agent")[0] +
                          "b = bytearray(300 << 20)\n"], capture_output=True, text=True,
                         timeout=HANG_GUARD)
    assert "MemoryError" in eat.stderr
    spin = subprocess.run([sys.executable, "-c", RUNNER.split("from agent")[0].replace(
        f"({MAX_CPU}, {MAX_CPU})", "(1, 1)") + "while True: pass\n"], capture_output=True,
        timeout=HANG_GUARD)
    assert spin.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
