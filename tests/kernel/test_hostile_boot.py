"""Hostile lists and images at boot, in PID 1's two halves and in hook mode (`boot --root`).

Every case is generated here (no stored binaries) from three good layers 0, 1, 2. Each
ends in a booted system: the bad layer (or, for an unusable list, every layer) skipped or
failed and recorded with its exact reason, the rest active, no staging mount and no loop
device of a refused image left behind, nothing raised.
"""

# ruff: noqa: F811 - the fixtures env and image_cache come from test_activate
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import listfile, syscalls
from agent.boot import loop, overlay, store
from agent.boot.activate import finish_activation, start_activation
from agent.boot.modules import load_modules
from agent.cli import main
from agent.listfile import Layer
from agent.statusfile import ACTIVE, FAILED, SKIPPED, read_status
from agent.tools import run
from tests.hostile import alias_bomb_lines, chardev, mkdir, mkfifo, sparse, symlink_to, unix_socket
from tests.kernel.test_activate import (  # noqa: F401 - fixtures
    SHARE,
    Env,
    env,
    image_cache,
    mounts_under,
    still_attached,
)

A, F, S = ACTIVE, FAILED, SKIPPED


@dataclass
class Case:
    spoil: Callable[[Env, list[Layer]], None]
    phases: list[str]                 # per list entry recorded, in order
    line: str                         # the first reported line ({L} list, {img} layer 1)
    bare: bool = False                # the bare root boots (no layer active)
    extra: Callable[[Env], None] | None = None   # more checks on the booted root
    lines: int = -1                   # how many lines, when not one per non-active layer


def doc_of(env: Env) -> dict[str, object]:
    loaded = json.loads((env.work / "extensions.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def write_doc(env: Env, doc: object) -> None:
    (env.work / "extensions.yaml").write_text(json.dumps(doc))


def set_field(index: int, key: str, value: object, meta: bool = False) -> Callable[[Env, list[Layer]], None]:
    def spoil(env: Env, layers: list[Layer]) -> None:
        doc = doc_of(env)
        entry = doc["layers"][index]  # type: ignore[index]
        (entry["metadata"] if meta else entry)[key] = value
        write_doc(env, doc)
    return spoil


def set_fields(index: int, **fields: object) -> Callable[[Env, list[Layer]], None]:
    def spoil(env: Env, layers: list[Layer]) -> None:
        doc = doc_of(env)
        doc["layers"][index].update(fields)  # type: ignore[index]
        write_doc(env, doc)
    return spoil


# a hash tree that passes the field checks (the images are 4096 bytes: no room for it)
TREE = {"root_hash": "0" * 64, "salt": "", "data_size": 4096, "hash_offset": 4096}


def in_store(**fields: object) -> Callable[[Env, list[Layer]], None]:
    """Layer 1 named as an image of a store, its fields spoiled by `fields`."""
    return set_fields(1, **{"store": "0A1B-2C3D", "path": "oa/x.sqsh", "verity": TREE,
                            **fields})


def write_raw(data: bytes | Callable[[Env], bytes]) -> Callable[[Env, list[Layer]], None]:
    def spoil(env: Env, layers: list[Layer]) -> None:
        (env.work / "extensions.yaml").write_bytes(data(env) if callable(data) else data)
    return spoil


def replace_path(make: Callable[[Path], None], which: str = "image") -> Callable[[Env, list[Layer]], None]:
    """Replace the list file or image 1 by something else made by `make(path)`."""
    def spoil(env: Env, layers: list[Layer]) -> None:
        path = env.work / "extensions.yaml" if which == "list" else env.images / layers[1].image
        path.unlink()
        make(path)
    return spoil














def yaml_list(env: Env, body: str) -> bytes:
    return body.encode()


def alias_bomb(env: Env) -> bytes:
    lines = ["version: 1", *alias_bomb_lines()]
    lines += ["layers:", "- image: 000-ext0.sqsh", "  metadata:", "    name: ext0",
              "    version: '1'", "    compatibility: {bomb: *a8}"]
    return "\n".join(lines).encode() + b"\n"


def nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth):
        value = {"k": value}
    return value


def replace_image_bytes(data: Callable[[bytes], bytes]) -> Callable[[Env, list[Layer]], None]:
    """Image 1 gets other bytes, and the list describes them truthfully."""
    def spoil(env: Env, layers: list[Layer]) -> None:
        path = env.images / layers[1].image
        new = data(path.read_bytes())
        path.write_bytes(new)
        doc = doc_of(env)
        doc["layers"][1].update(sha256=hashlib.sha256(new).hexdigest(),  # type: ignore[index]
                                size=len(new))
        write_doc(env, doc)
    return spoil


def squashfs_with(pseudo: list[str]) -> Callable[[Env, list[Layer]], None]:
    """Image 1 rebuilt with mksquashfs pseudo files (device nodes) under usr/local/share."""
    def spoil(env: Env, layers: list[Layer]) -> None:
        src = env.work / "src"
        (src / SHARE).mkdir(parents=True)
        (src / SHARE / "only-1").write_text("from 1")
        image = env.images / layers[1].image
        image.unlink()
        argv: list[str | Path] = ["mksquashfs", src, image, "-quiet", "-no-progress",
                                  "-noappend", "-all-root"]
        for line in pseudo:
            argv += ["-p", line]
        run(argv)
        replace_image_bytes(lambda data: data)(env, layers)
    return spoil


def device_does_not_open(env: Env) -> None:
    node = env.target / SHARE / "null"
    assert stat.S_ISCHR(node.lstat().st_mode)          # the node is there ...
    with pytest.raises(PermissionError):                # ... but nodev: it does not open
        node.open("rb")
    assert "nodev" in [m for m in Path("/proc/self/mountinfo").read_text().splitlines()
                       if f" {env.target} " in m][-1].split()[5]


def whiteout_hides_base(env: Env) -> None:
    assert not (env.target / SHARE / "layer").exists() or \
        (env.target / SHARE / "layer").read_text() == "2"
    assert (env.target / SHARE / "only-1").read_text() == "from 1"


def list_shown(env: Env) -> None:
    """The list layer holds the list's bytes, however large the reader lets it be."""
    shown = (env.target / "etc/extensions.yaml").read_bytes()
    assert shown == (env.work / "extensions.yaml").read_bytes() and len(shown) > 1 << 20


def summary_line(env: Env, more: int) -> None:
    """Past 20 lines the console gets one line; the status keeps every record."""
    assert env.lines[-1] == (f"{more} more extensions not active, not shown here: see "
                             f"{env.settings.status_path}")


def too_many_layers(env: Env, layers: list[Layer]) -> None:
    doc = doc_of(env)
    doc["layers"] = doc["layers"] * 334  # type: ignore[operator]  # 1002 entries
    write_doc(env, doc)


L = "{L}: "
NO_EXT = "; no extension activated"
CTRL = "holds a control character or an undecodable byte"

LIST_CASES: dict[str, Case] = {
    "not-utf8": Case(write_raw(b"\xff\xfe{}"), [], L + "not UTF-8 (byte 0)" + NO_EXT, True),
    "nul-in-image": Case(set_field(1, "image", "001-ext1.sqsh\0x"), [S, S],
                         "extension 000-ext0: skipped: " + L + "layers[1]: image "
                         "'001-ext1.sqsh\\x00x' " + CTRL, True),
    "deep-json": Case(write_raw(b"[" * 100_000), [], L + "JSON nested too deeply" + NO_EXT, True),
    "yaml-alias-bomb": Case(write_raw(alias_bomb), [],
                            L + "uses a YAML alias at line 3 (aliases are not supported)" +
                            NO_EXT, True),
    "fifo": Case(replace_path(mkfifo, "list"), [],
                 L + "cannot read: a fifo, not a regular file" + NO_EXT, True),
    "symlink-to-dev-zero": Case(replace_path(symlink_to("/dev/zero"), "list"), [],
                                L + "cannot read: a symbolic link, not a regular file" + NO_EXT,
                                True),
    "directory": Case(replace_path(mkdir, "list"), [],
                      L + "cannot read: a directory, not a regular file" + NO_EXT, True),
    "char-device": Case(replace_path(chardev, "list"), [],
                        L + "cannot read: a character device, not a regular file" + NO_EXT,
                        True),
    "socket": Case(replace_path(unix_socket, "list"), [],
                   L + "cannot read: a socket, not a regular file" + NO_EXT, True),
    "over-4-MiB": Case(replace_path(sparse(listfile.MAX_LIST_BYTES + 1), "list"), [],
                       L + f"cannot read: {listfile.MAX_LIST_BYTES + 1} bytes, over the limit "
                       f"of {listfile.MAX_LIST_BYTES}" + NO_EXT, True),
    "empty": Case(write_raw(b""), [], "", True, lines=0),
    "top-level-array": Case(write_raw(b"[]"), [], L + "top level is not a mapping" + NO_EXT,
                            True),
    "layers-a-mapping": Case(write_raw(b'{"version": 1, "layers": {"a": 1}}'), [],
                             L + "layers is not a list" + NO_EXT, True),
    "schema-a-string": Case(write_raw(lambda env: (env.work / "extensions.yaml").read_bytes()
                                      .replace(b'"version": 1', b'"version": "1"', 1)),
                            [S, S, S], "extension 000-ext0: skipped: " + L + "unknown schema "
                            "version '1' (this agent reads version 1)", True),
    "image-dotdot": Case(set_field(1, "image", "../001-ext1.sqsh"), [S, S],
                         "extension 000-ext0: skipped: " + L + "layers[1]: image "
                         "'../001-ext1.sqsh' is not a plain file name", True),
    "image-newline": Case(set_field(1, "image", "001-ext1\n.sqsh"), [S, S],
                          "extension 000-ext0: skipped: " + L + "layers[1]: image "
                          "'001-ext1\\n.sqsh' " + CTRL, True),
    "image-escape-sequence": Case(set_field(1, "image", "\x1b[2J001.sqsh"), [S, S],
                                  "extension 000-ext0: skipped: " + L + "layers[1]: image "
                                  "'\\x1b[2J001.sqsh' " + CTRL, True),
    "image-300-chars": Case(set_field(1, "image", "x" * 300), [S, S],
                            "extension 000-ext0: skipped: " + L + "layers[1]: image name is "
                            "over 255 bytes", True),
    "image-lone-surrogate": Case(set_field(1, "image", "\ud800.sqsh"), [S, S],
                                 "extension 000-ext0: skipped: " + L + "layers[1]: image "
                                 "'\\ud800.sqsh' " + CTRL, True),
    "image-a-number": Case(set_field(1, "image", 7), [S, S],
                           "extension 000-ext0: skipped: " + L + "layers[1]: needs an image "
                           "name", True),
    "sha256-not-hex": Case(set_field(1, "sha256", "z" * 64), [S, S, S],
                           "extension 000-ext0: skipped: " + L + "layers[1]: sha256 '" +
                           "z" * 64 + "' is not 64 hex digits", True),
    "sha256-a-list": Case(set_field(1, "sha256", [1]), [S, S, S],
                          "extension 000-ext0: skipped: " + L + "layers[1]: sha256 '[1]' is "
                          "not 64 hex digits", True),
    "size-a-string": Case(set_field(1, "size", "4096"), [S, S, S],
                          "extension 000-ext0: skipped: " + L + "layers[1]: size '4096' is "
                          "not a size in bytes", True),
    "size-negative": Case(set_field(1, "size", -5), [S, S, S],
                          "extension 000-ext0: skipped: " + L + "layers[1]: size '-5' is not "
                          "a size in bytes", True),
    "size-true": Case(set_field(1, "size", True), [S, S, S],
                      "extension 000-ext0: skipped: " + L + "layers[1]: size 'True' is not a "
                      "size in bytes", True),
    "size-2**70": Case(set_field(1, "size", 2**70), [S, S, S],
                       "extension 000-ext0: skipped: " + L + f"layers[1]: size '{2**70}' is "
                       "not a size in bytes", True),
    "size-nan": Case(write_raw(lambda env: (env.work / "extensions.yaml").read_bytes()
                               .replace(b'"size": 4096', b'"size": NaN', 1)), [S, S, S],
                     "extension 000-ext0: skipped: " + L + "layers[0]: size 'nan' is not a "
                     "size in bytes", True),
    "kind-unknown": Case(set_field(1, "kind", "rootkit"), [S, S, S],
                         "extension 000-ext0: skipped: " + L + "layers[1]: unknown kind "
                         "'rootkit'", True),
    "kind-a-mapping": Case(set_field(1, "kind", {"a": 1}), [S, S, S],
                           "extension 000-ext0: skipped: " + L + "layers[1]: unknown kind "
                           "\"{{'a': 1}}\"", True),
    "metadata-a-list": Case(set_field(1, "metadata", [1]), [S, S, S],
                            "extension 000-ext0: skipped: " + L + "layers[1]: metadata is not "
                            "a mapping", True),
    "name-a-mapping": Case(set_field(1, "name", {"a": 1}, meta=True), [S, S, S],
                           "extension 000-ext0: skipped: " + L + "layers[1]: metadata name is "
                           "not a string", True),
    "version-a-list": Case(set_field(1, "version", ["1"], meta=True), [S, S, S],
                           "extension 000-ext0: skipped: " + L + "layers[1]: metadata version "
                           "is not a string", True),
    "description-20-KiB": Case(set_field(1, "description", "d" * 20_000, meta=True),
                               [S, S, S], "extension 000-ext0: skipped: " + L + "layers[1]: "
                               "metadata description is over 16384 characters", True),
    "compatibility-20-deep": Case(set_field(1, "compatibility", nested(20), meta=True),
                                  [S, S, S], "extension 000-ext0: skipped: " + L + "layers[1]: "
                                  "metadata compatibility is larger than 256 values or deeper "
                                  "than 8 levels", True),
    "compatibility-300-wide": Case(set_field(1, "compatibility",
                                             {str(i): i for i in range(300)}, meta=True),
                                   [S, S, S], "extension 000-ext0: skipped: " + L + "layers[1]: "
                                   "metadata compatibility is larger than 256 values or deeper "
                                   "than 8 levels", True),
    "compatibility-a-string": Case(set_field(1, "compatibility", "talos", meta=True),
                                   [S, S, S], "extension 000-ext0: skipped: " + L + "layers[1]: "
                                   "metadata compatibility is not a mapping", True),
    "1002-layers": Case(too_many_layers, [S] * 1000, "extension 000-ext0: skipped: " + L +
                        "1002 layers, over the limit of 1000", True, lines=21,
                        extra=lambda env: summary_line(env, 980)),
    "yaml-100-deep": Case(write_raw(b"layers:\n" + b"".join(b"  " * i + b"- \n"
                                                              for i in range(1, 100))), [],
                          L + "nested deeper than 64 levels at line 65" + NO_EXT, True),
    "yaml-5000-digit-size": Case(write_raw(b"layers:\n- image: 000-ext0.sqsh\n  size: " +
                                           b"9" * 5000 + b"\n"), [],
                                 L + "not valid YAML: Exceeds the limit (4300 digits) for "
                                 "integer string conversion" + NO_EXT, True),
    "yaml-over-64-KiB": Case(write_raw(b"layers: []\n" + b"#" * (64 << 10) + b"\n"), [],
                              L + "not JSON, and over the limit of 65536 bytes for YAML" +
                              NO_EXT, True),
    "json-trailing-garbage": Case(write_raw(lambda env: (env.work / "extensions.yaml")
                                            .read_bytes() + b"}"), [],
                                  L + "not valid YAML at line 42" + NO_EXT, True),
    # store and dm-verity fields
    "store-not-a-uuid": Case(in_store(store="../../dev/sda"), [S, S, S],
                             "extension 000-ext0: skipped: " + L + "layers[1]: store "
                             "'../../dev/sda' is not a filesystem UUID", True),
    "store-only-dashes": Case(in_store(store="----"), [S, S, S],
                              "extension 000-ext0: skipped: " + L + "layers[1]: store '----' "
                              "is not a filesystem UUID", True),
    "store-uuid-5000-chars": Case(in_store(store="a" * 5000), [S, S, S],
                                  "extension 000-ext0: skipped: " + L + "layers[1]: store '" +
                                  "a" * 36 + "... is not a filesystem UUID", True),
    "store-a-list": Case(in_store(store=[1]), [S, S, S],
                         "extension 000-ext0: skipped: " + L + "layers[1]: store [1] is not a "
                         "filesystem UUID", True),
    "store-without-verity": Case(in_store(verity=None), [S, S, S],
                                 "extension 000-ext0: skipped: " + L + "layers[1]: a store "
                                 "image needs verity (its root hash is what vouches for it)",
                                 True),
    "store-path-dotdot": Case(in_store(path="../../etc/shadow"), [S, S, S],
                              "extension 000-ext0: skipped: " + L + "layers[1]: store path "
                              "'../../etc/shadow' has an empty, . or .. part", True),
    "store-path-absolute": Case(in_store(path="/dev/zero"), [S, S, S],
                                "extension 000-ext0: skipped: " + L + "layers[1]: store path "
                                "'/dev/zero' is not a relative path", True),
    "store-path-newline": Case(in_store(path="oa/x\nFAKE.sqsh"), [S, S, S],
                               "extension 000-ext0: skipped: " + L + "layers[1]: store path "
                               "'oa/x\\nFAKE.sqsh' holds a control character or an "
                               "undecodable byte", True),
    "store-path-5000-bytes": Case(in_store(path="a/" * 2500 + "x"), [S, S, S],
                                  "extension 000-ext0: skipped: " + L + "layers[1]: store path "
                                  "is over 4095 bytes or has a part over 255", True),
    "verity-a-string": Case(set_fields(1, verity="on"), [S, S, S],
                            "extension 000-ext0: skipped: " + L + "layers[1]: verity is not a "
                            "mapping", True),
    "verity-root-hash-not-hex": Case(set_fields(1, verity={**TREE, "root_hash": "z" * 64}),
                                     [S, S, S], "extension 000-ext0: skipped: " + L +
                                     "layers[1]: verity root_hash is not 64 lowercase hex "
                                     "digits", True),
    "verity-salt-odd": Case(set_fields(1, verity={**TREE, "salt": "abc"}), [S, S, S],
                            "extension 000-ext0: skipped: " + L + "layers[1]: verity salt is "
                            "not lowercase hex of at most 256 bytes", True),
    "verity-data-size-2**80": Case(set_fields(1, verity={**TREE, "data_size": 2**80,
                                                         "hash_offset": 2**80}), [S, S, S],
                                   "extension 000-ext0: skipped: " + L + "layers[1]: verity "
                                   "data_size is over the limit of 4611686018427387904 bytes",
                                   True),
    "verity-offset-negative": Case(set_fields(1, verity={**TREE, "hash_offset": -4096}),
                                   [S, S, S], "extension 000-ext0: skipped: " + L + "layers[1]: "
                                   "verity hash_offset -4096 is not a positive multiple of "
                                   "4096", True),
    "verity-offset-inside-data": Case(set_fields(1, verity={**TREE, "data_size": 8192}),
                                      [S, S, S], "extension 000-ext0: skipped: " + L +
                                      "layers[1]: verity hash_offset 4096 is inside the data "
                                      "(8192 bytes)", True),
    "verity-offset-past-the-end": Case(set_fields(1, verity=TREE), [S, S, S],
                                       "extension 000-ext0: skipped: " + L + "layers[1]: "
                                       "verity hash_offset 4096 is past the image's end (4096 "
                                       "bytes)", True),
    # handled, not refused: a byte-order mark, odd but plain image names, a Talos list
    "utf8-bom": Case(write_raw(lambda env: b"\xef\xbb\xbf" + (env.work / "extensions.yaml")
                               .read_bytes()), [A, A, A], ""),
    "image-space-colon-comma": Case(lambda env, layers: (
        os.rename(env.images / layers[1].image, env.images / "001 a:b,c.sqsh"),
        set_field(1, "image", "001 a:b,c.sqsh")(env, layers)), [A, A, A], ""),
    "sha256-upper-case": Case(lambda env, layers: set_field(1, "sha256",
                                                            layers[1].sha256.upper())(env, layers),
                              [A, A, A], ""),
    "valid-but-1.6-MiB": Case(set_field(1, "compatibility", {str(i): "c" * 16_000
                                                             for i in range(100)}, meta=True),
                              [A, A, A], "", extra=lambda env: list_shown(env)),
    "talos-yaml-unchecked": Case(write_raw(
        b"layers:\n" + b"".join(b"  - image: %03d-ext%d.sqsh\n    metadata:\n      name: ext%d\n"
                                b"      version: 1.%d\n" % (i, i, i, i) for i in range(3))),
        [A, A, A], ""),
}

IMAGE_CASES: dict[str, Case] = {
    "fifo": Case(replace_path(mkfifo), [A, F, A],
                 "extension 001-ext1: failed: {img}: a fifo, not a regular file"),
    "symlink-to-dev-zero": Case(replace_path(symlink_to("/dev/zero")), [A, F, A],
                                "extension 001-ext1: failed: {img}: a symbolic link, not a "
                                "regular file"),
    "symlink-to-a-good-image": Case(lambda env, layers: replace_path(symlink_to(
        str(env.images / layers[0].image)))(env, layers), [A, F, A],
        "extension 001-ext1: failed: {img}: a symbolic link, not a regular file"),
    "directory": Case(replace_path(mkdir), [A, F, A],
                      "extension 001-ext1: failed: {img}: a directory, not a regular file"),
    "char-device": Case(replace_path(chardev), [A, F, A],
                        "extension 001-ext1: failed: {img}: a character device, not a regular "
                        "file"),
    "socket": Case(replace_path(unix_socket), [A, F, A],
                   "extension 001-ext1: failed: {img}: a socket, not a regular file"),
    "longer-than-listed": Case(lambda env, layers: (env.images / layers[1].image).open("ab")
                               .write(b"x"), [A, F, A],
                               "extension 001-ext1: failed: {img}: size 4097 bytes, the list "
                               "says 4096"),
    "sparse-1-TiB": Case(replace_path(sparse(1 << 40)), [A, F, A],
                         "extension 001-ext1: failed: {img}: size 1099511627776 bytes, the "
                         "list says 4096"),
    "empty-and-listed-so": Case(replace_image_bytes(lambda data: b""), [A, F, A],
                                "extension 001-ext1: failed: mount squashfs {img} from "
                                "/dev/loop*: Input/output error"),
    "garbage-and-listed-so": Case(replace_image_bytes(lambda data: b"hsqs" + bytes(4092)),
                                  [A, F, A], "extension 001-ext1: failed: mount squashfs {img} "
                                  "from /dev/loop*: Invalid argument"),
    "device-node-inside": Case(squashfs_with([f"{SHARE}/null c 666 root root 1 3"]),
                               [A, A, A], "", extra=device_does_not_open),
    "whiteout-inside": Case(squashfs_with([f"{SHARE}/layer c 000 root root 0 0"]),
                            [A, A, A], "", extra=whiteout_hides_base),
}


def matches(line: str, pattern: str) -> bool:
    """`pattern` with one `*` standing for a device number."""
    head, star, tail = pattern.partition("*")
    if not star:
        return line == pattern
    return (line.startswith(head) and line.endswith(tail)
            and line[len(head):len(line) - len(tail)].isdigit())


def boot(env: Env, mode: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Activate as PID 1 does (two halves) or as the hook does; return the root booted."""
    s = env.settings
    if mode == "pid1":
        return finish_activation(start_activation(s), str(env.base), str(env.target))
    syscalls.mount(str(env.base), str(env.target), None, syscalls.MS_BIND)
    cmdline = env.work / "cmdline"
    cmdline.write_text("root=/dev/sda1 ro quiet\n")
    assert main(["boot", "--root", str(env.target), "--list", s.list_path, "--images",
                 s.images_dir, "--status", s.status_path, "--staging", s.staging_dir,
                 "--cmdline", str(cmdline)]) == 0
    assert capsys.readouterr().err == ""
    return read_status(s.status_path).root


def check_booted(env: Env, case: Case, root: str, refused: list[Path]) -> None:
    status = read_status(env.settings.status_path)
    assert [e.phase for e in status.extensions] == case.phases
    subst = {"L": env.settings.list_path, "img": str(env.images / "001-ext1.sqsh")}
    expected = case.line.format(**subst)
    if case.lines < 0:
        count = sum(p != ACTIVE for p in case.phases) or (1 if case.line else 0)
    else:
        count = case.lines
    assert len(env.lines) == count, env.lines[:3]
    if expected:
        assert matches(env.lines[0], expected), (env.lines[0], expected)
    recorded = [e.reason for e in status.extensions if e.phase != ACTIVE] + list(status.notes)
    if expected:   # the line's reason is what the status keeps
        assert any(env.lines[0] == r or env.lines[0].endswith(": " + r)
                   for r in recorded), (env.lines[0], recorded)
    assert (root == str(env.target)) == (not case.bare)
    assert [m for m in mounts_under(str(env.work / "s")) if not m.endswith("/s/base")] == []
    assert still_attached(refused, wait=10) == []   # detaching is asynchronous under load
    if case.extra is not None:
        case.extra(env)


CASES = {**{f"list-{k}": v for k, v in LIST_CASES.items()},
         **{f"image-{k}": v for k, v in IMAGE_CASES.items()}}


@pytest.mark.parametrize("mode", ["pid1", "hook"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_boots(env: Env, image_cache: Callable[[int], Path],
                             capsys: pytest.CaptureFixture[str], name: str, mode: str) -> None:
    case = CASES[name]
    layers = env.add(image_cache, [0, 1, 2])
    case.spoil(env, layers)
    root = boot(env, mode, capsys)
    refused = [env.images / layers[1].image] if name.startswith("image-") and \
        case.phases[1] != ACTIVE else []
    check_booted(env, case, root, refused)


# ---------------------------------------------------------------- faults at boot

def ioctl_fails(request: int, code: int, times: int) -> Callable[[Env, pytest.MonkeyPatch], None]:
    """agent.syscalls.ioctl raises `code` for `request`, the first `times` times."""
    def inject(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
        real = syscalls.ioctl
        left = [times]

        def faulty(fd: int, req: int, arg: int | bytes | bytearray = 0,
                   path: str | None = None) -> int:
            if req == request and left[0] > 0:
                left[0] -= 1
                raise OSError(code, os.strerror(code), path)
            return real(fd, req, arg, path)

        monkeypatch.setattr(syscalls, "ioctl", faulty)
    return inject


def overlay_refuses(api: str) -> Callable[[Env, pytest.MonkeyPatch], None]:
    """The overlay refuses its option string (EINVAL), through mount(2) or fsconfig."""
    def inject(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(overlay, "MOUNT_DATA_LIMIT", 4096 if api == "mount" else 0)
        name = "mount" if api == "mount" else "fsconfig"
        real = getattr(syscalls, name)

        def refuse(*args: object) -> object:
            if (name == "mount" and args[2] == "overlay") or \
                    (name == "fsconfig" and args[2] == "lowerdir+"):
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(args[1]))
            return real(*args)

        monkeypatch.setattr(syscalls, name, refuse)
    return inject


def run_full(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """/run is a tiny tmpfs, filled up before the status is written (for real)."""
    run_dir = env.work / "run"
    run_dir.mkdir()
    syscalls.mount("oa-run", str(run_dir), "tmpfs", 0, "size=16k")
    with (run_dir / "filler").open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def run_read_only(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = env.work / "run"
    run_dir.mkdir()
    syscalls.mount("oa-run", str(run_dir), "tmpfs", syscalls.MS_RDONLY, "size=16k")


def no_loop_control(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "LOOP_CONTROL", str(env.work / "no-loop-control"))


def staging_is_a_file(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    Path(env.settings.staging_dir).write_text("not a folder")


STATUS = "{status}: cannot write the status: "
EACH = "extension 000-ext0: failed: "
LOOP_CTL_GET_FREE = 0x4C82
FAULTS: dict[str, tuple[Callable[[Env, pytest.MonkeyPatch], None], list[str], str, bool]] = {
    "run-full": (run_full, [A, A, A], STATUS + "No space left on device", False),
    "run-read-only": (run_read_only, [A, A, A], STATUS + "Read-only file system", False),
    "no-free-loop-device": (ioctl_fails(LOOP_CTL_GET_FREE, errno.ENOSPC, 99), [F, F, F],
                           EACH + "loop device for {img0}: No space left on device", True),
    "no-loop-control": (no_loop_control, [F, F, F],
                        EACH + "loop device for {img0}: No such file or directory", True),
    "loop-control-eintr-once": (ioctl_fails(LOOP_CTL_GET_FREE, errno.EINTR, 1), [A, A, A], "",
                                False),
    "loop-control-eagain-once": (ioctl_fails(LOOP_CTL_GET_FREE, errno.EAGAIN, 1), [A, A, A],
                                 "", False),
    "loop-control-eintr-always": (ioctl_fails(LOOP_CTL_GET_FREE, errno.EINTR, 10**6),
                                  [F, F, F], EACH + "loop device for {img0}: no loop device "
                                  "after 64 tries (Interrupted system call)", True),
    "overlay-refuses-options-mount": (overlay_refuses("mount"), [F, F, F],
                                      "overlay at {target}: Invalid argument; booting the bare "
                                      "root", True),
    "overlay-refuses-options-fsconfig": (overlay_refuses("fsconfig"), [F, F, F],
                                         "overlay at {target}: this kernel has no overlayfs "
                                         "lowerdir+ (Linux 6.8+) and the layer paths exceed one "
                                         "page; booting the bare root", True),
    "staging-is-a-file": (staging_is_a_file, [F, F, F],
                          EACH + "mount squashfs {img0} from /dev/loop*: Not a directory", True),
}


@pytest.mark.parametrize("mode", ["pid1", "hook"])
@pytest.mark.parametrize("name", sorted(FAULTS))
def test_boot_fault_ends_booted_with_the_reason(env: Env, image_cache: Callable[[int], Path],
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str], name: str,
                                                mode: str) -> None:
    inject, phases, line, bare = FAULTS[name]
    env.add(image_cache, [0, 1, 2])
    inject(env, monkeypatch)
    s = env.settings
    if mode == "pid1":
        root = finish_activation(start_activation(s), str(env.base), str(env.target))
    else:
        syscalls.mount(str(env.base), str(env.target), None, syscalls.MS_BIND)
        (env.work / "cmdline").write_text("quiet\n")
        assert main(["boot", "--root", str(env.target), "--list", s.list_path, "--images",
                     s.images_dir, "--status", s.status_path, "--staging", s.staging_dir,
                     "--cmdline", str(env.work / "cmdline")]) == 0
        moved = os.path.join(s.staging_dir, "base")
        if name == "staging-is-a-file":   # no room to move the root aside: it stays
            assert capsys.readouterr().err == (f"overlay-agent: {moved}: Not a directory; "
                                               "booting the bare root\n")
            assert not os.path.exists(s.status_path) and not os.path.ismount(moved)
            return
        assert capsys.readouterr().err == ""
        root = str(env.target) if os.path.ismount(moved) else str(env.base)
    monkeypatch.undo()
    expected = line.format(status=s.status_path, target=env.target,
                           img0=env.images / "000-ext0.sqsh")
    assert (root == str(env.target)) == (not bare)
    if expected:
        assert matches(env.lines[0] if not name.startswith("run") else env.lines[-1],
                       expected), env.lines
    else:
        assert env.lines == []
    if name.startswith("run"):
        # nothing half-written: no status, no temp file; the layers are up all the same
        assert sorted(p.name for p in (env.work / "run").iterdir()) == \
            ([] if name == "run-read-only" else ["filler"])
        assert (env.target / SHARE / "layer").read_text() == "2"
    else:
        assert [e.phase for e in read_status(s.status_path).extensions] == phases
    assert [m for m in mounts_under(str(env.work / "s")) if not m.endswith("/s/base")] == []
    if bare:
        assert still_attached(sorted(env.images.iterdir()), wait=10) == []


def test_modules_missing_or_refused_are_recorded_and_boot_goes_on(
        env: Env, image_cache: Callable[[int], Path]) -> None:
    """PID 1's order (agent.boot.main): checks, modules, root, overlay. A module missing or
    refused by the kernel (a real finit_module of a file that is not a module) is one line
    each, a note in the status, and the extensions still activate."""
    env.add(image_cache, [0, 1])
    bad = env.work / "bad.ko"
    bad.write_bytes(b"not an ELF module\n")
    listing = env.work / "modules.load"
    listing.write_text(f"{env.work}/gone.ko\n{bad}\n")
    checks = start_activation(env.settings)
    report = load_modules(str(listing))
    for problem in report.failed:
        checks.note(problem)
    assert finish_activation(checks, str(env.base), str(env.target)) == str(env.target)
    # the kernel's reason for the bad file varies (ENOEXEC; ENOSYS without module support)
    why = next((os.strerror(err) for err in (errno.ENOEXEC, errno.ENOSYS, errno.EPERM)
                if report.failed[-1].endswith(os.strerror(err))), "?")
    expected = [f"kernel module {env.work}/gone.ko: No such file or directory",
                f"kernel module {bad}: {why}"]
    assert list(report.failed) == expected == env.lines
    status = read_status(env.settings.status_path)
    assert list(status.notes) == expected
    assert [e.phase for e in status.extensions] == [A, A]


def test_many_absent_stores_share_one_wait(env: Env, image_cache: Callable[[int], Path],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A list naming 20 stores that never appear: the first 8 share one wait (STORE_WAIT in
    all, not each), the rest are over the limit; the inline layer boots. Waiting per store
    would take at least 8 waits."""
    monkeypatch.setattr(store, "STORE_WAIT", 0.3)
    env.add(image_cache, [0])
    doc = doc_of(env)
    entry = doc["layers"][0]  # type: ignore[index]
    doc["layers"] = [entry] + [  # type: ignore[operator]
        {**entry, "image": f"{i:03d}-s.sqsh", "store": f"0BAD-{i:04X}", "path": "oa/x.sqsh",
         "verity": TREE, "size": 8192} for i in range(1, 21)]
    write_doc(env, doc)
    root = finish_activation(start_activation(env.settings), str(env.base), str(env.target))
    assert root == str(env.target)
    status = read_status(env.settings.status_path)
    assert [e.phase for e in status.extensions] == [A] + [F] * 20
    reasons = [e.reason for e in status.extensions[1:]]
    assert reasons == [f"store UUID=0BAD-{i:04X}: no such filesystem appeared within 0.3 s"
                       for i in range(1, 9)] + \
        [f"store UUID=0BAD-{i:04X}: over the limit of 8 stores in one list"
         for i in range(9, 21)]
    assert status.duration_ms < 8 * 300
    assert mounts_under(str(env.work / "s" / "store0")) == []


CMDLINE_RULE = ("the folder must be a printable absolute path of at most 4095 bytes without "
                "'.', '..', ',', ':' or '\\'")
UPPER_CASES = {
    "folder-escape": ("/dev/vdb:/a\x1b[2Jb", f"/dev/vdb:/a\x1b[2Jb: {CMDLINE_RULE}"),
    "uuid-40": ("UUID=" + "a" * 40, "UUID=" + "a" * 40 + ": UUID is longer than 36 characters"),
    "tmpfs-19-digits": ("tmpfs:" + "9" * 19 + "g", "tmpfs:" + "9" * 19 + "g: size must be a "
                        "number with an optional k, m, g or % (as tmpfs's size=)"),
}


@pytest.mark.parametrize("name", sorted(UPPER_CASES))
def test_hostile_upper_value_boots_the_bare_root_in_hook_mode(
        env: Env, image_cache: Callable[[int], Path], name: str) -> None:
    """Hook mode acts on its own keys only: an unusable overlay_agent.upper= is one line
    and a status note, nothing activates, the root the initramfs mounted boots."""
    value, why = UPPER_CASES[name]
    env.add(image_cache, [0, 1])
    s = env.settings
    syscalls.mount(str(env.base), str(env.target), None, syscalls.MS_BIND)
    (env.work / "cmdline").write_text(f"root=/dev/sda1 ro overlay_agent.upper={value}\n")
    assert main(["boot", "--root", str(env.target), "--list", s.list_path, "--images",
                 s.images_dir, "--status", s.status_path, "--staging", s.staging_dir,
                 "--cmdline", str(env.work / "cmdline")]) == 0
    line = f"kernel command line: overlay_agent.upper={why}; no extension activated"
    assert env.lines == [line]
    status = read_status(s.status_path)
    assert list(status.notes) == [line] and status.upper is None
    assert [e.phase for e in status.extensions] == []
    assert status.root != str(env.target)       # the bare root, as every bare case here
    assert not os.path.ismount(s.staging_dir + "/upper")
    assert [m for m in mounts_under(str(env.work / "s")) if not m.endswith("/s/base")] == []
