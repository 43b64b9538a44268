"""Hostile and careless inputs on the commands of the installed system: `metrics` (the
status file in, a node_exporter textfile out), `gc --store` (a store folder and the
initramfs files that name its images) and `initramfs-hook` (what initramfs-tools and
dracut hand it).

Each case is generated here (no stored binaries) and run through the real command line in
a child under the corpus limits (tests/hostile_cli.py), with its exact exit status, output
and, where something is written or must stay, what is left under the case's folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import cpio
from tests.hostile import mkdir, mkfifo, put, sparse, symlink_to
from tests.hostile_cli import Case, check
from tests.unit.test_hostile_inputs import (
    BASE,
    archive,
    declared_member,
    initramfs,
    status,
    with_list,
    zstd_stream,
)

E = "overlay-agent: error: "


# ---------------------------------------------------------------- metrics

def metrics(data: bytes | Callable[[Path], None], out: str = "prom/m.prom",
            prepare: Callable[[Path], None] | None = None) -> Callable[[Path], list[str]]:
    """`metrics` of a status file made from `data`, into {tmp}/`out` (its folder made,
    unless `prepare` lays out something else there)."""
    def make(tmp: Path) -> list[str]:
        path = put(tmp / "status.json", data)
        if prepare is None:
            (tmp / "prom").mkdir()
        else:
            prepare(tmp)
        return ["metrics", "--status", str(path), "-o", str(tmp / out)]
    return make


HEAD = ("# HELP overlay_agent_extension_info An extension of the boot's list, with its phase "
        "(1 per extension).\n# TYPE overlay_agent_extension_info gauge\n")
DURATION = ("# HELP overlay_agent_activation_duration_seconds Time the agent spent activating "
            "extensions at boot.\n# TYPE overlay_agent_activation_duration_seconds gauge\n"
            "overlay_agent_activation_duration_seconds {seconds}\n")
MOUNTED = ("# HELP overlay_agent_layer_mounted 1 while the extension's layer is part of the "
           "root overlay.\n# TYPE overlay_agent_layer_mounted gauge\n")


def prom(name: str = "x", version: str = "1", phase: str = "gone", ident: str = "000-x",
         seconds: str = "0.001", mounted: int = 0) -> str:
    """The whole file for the one-extension status (label values as they must be written).
    Its layer is recorded active, but this machine's / is no overlay of it: gone, not live."""
    return (HEAD + f'overlay_agent_extension_info{{id="{ident}",name="{name}",'
            f'version="{version}",phase="{phase}"}} 1\n' + DURATION.format(seconds=seconds) +
            MOUNTED + f'overlay_agent_layer_mounted{{id="{ident}",name="{name}"}} {mounted}\n')


def written(expected: str, where: str = "prom/m.prom") -> Callable[[Path], None]:
    """The file is exactly `expected`, valid UTF-8, and its folder holds nothing else."""
    def after(tmp: Path) -> None:
        path = tmp / where
        assert path.read_bytes().decode("utf-8") == expected
        assert os.listdir(path.parent) == [path.name]
        assert all(line.startswith(("# HELP ", "# TYPE ", "overlay_agent_"))
                   for line in expected.splitlines())
    return after


def untouched(where: str, content: bytes | None) -> Callable[[Path], None]:
    """`where` still holds `content` (None: it does not exist), and no temporary file of
    the atomic write is left beside it."""
    def after(tmp: Path) -> None:
        path = tmp / where
        if content is None:
            assert not os.path.lexists(path)
        else:
            assert path.read_bytes() == content
        folder = path.parent if path.parent.is_dir() else tmp
        assert [p for p in os.listdir(folder) if ".tmp" in p] == []
    return after


def in_prom(make: Callable[[Path], None]) -> Callable[[Path], None]:
    def prepare(tmp: Path) -> None:
        (tmp / "prom").mkdir()
        make(tmp / "prom" / "m.prom")
    return prepare


def nan_status(path: Path) -> None:
    path.write_bytes(status().replace(b'"duration_ms": 1.0', b'"duration_ms": NaN'))


METRICS: dict[str, Case] = {
    # ------------------------------------------------ the status file
    "status-fifo": Case(metrics(mkfifo), 1, E + "{tmp}/status.json: cannot read: a fifo, not "
                        "a regular file\n", after=untouched("prom/m.prom", None)),
    "status-dev-zero": Case(metrics(symlink_to("/dev/zero")), 1, E + "{tmp}/status.json: "
                            "cannot read: a character device, not a regular file\n",
                            after=untouched("prom/m.prom", None)),
    "status-directory": Case(metrics(mkdir), 1, E + "{tmp}/status.json: cannot read: a "
                             "directory, not a regular file\n"),
    "status-missing": Case(metrics(lambda path: None), 1, E + "{tmp}/status.json: not found: "
                           "this system did not boot through overlay-agent\n"),
    "status-17-MiB": Case(metrics(sparse(17 << 20)), 1, E + "{tmp}/status.json: cannot read: "
                          "17825792 bytes, over the limit of 16777216\n"),
    "status-not-utf8": Case(metrics(b'{"schema": 1, "x": "\xff"}'), 1,
                            E + "{tmp}/status.json: not UTF-8 (byte 20)\n"),
    "status-deep-json": Case(metrics(b"[" * 100_000), 1,
                             E + "{tmp}/status.json: not valid JSON (nested too deeply)\n"),
    "status-not-json": Case(metrics(b"{schema: 1}"), 1, E + "{tmp}/status.json: not valid "
                            "JSON (Expecting property name enclosed in double quotes: line 1 "
                            "column 2 (char 1))\n"),
    "status-top-level-list": Case(metrics(b"[]"), 1,
                                  E + "{tmp}/status.json: top level is not an object\n"),
    "status-schema-2": Case(metrics(status(schema=2)), 1,
                            E + "{tmp}/status.json: unknown status schema 2\n"),
    "status-extensions-a-mapping": Case(metrics(status(extensions={})), 1,
                                        E + "{tmp}/status.json: extensions is not a list\n"),
    "status-index-a-string": Case(metrics(status(ext_index="0")), 1,
                                  E + "{tmp}/status.json: extensions[0]: index is not an "
                                  "integer\n"),
    "status-name-a-number": Case(metrics(status(ext_name=7)), 1,
                                 E + "{tmp}/status.json: extensions[0]: name is not a string\n"),
    "status-phase-unknown": Case(metrics(status(ext_phase="pwned")), 1,
                                 E + "{tmp}/status.json: extensions[0]: unknown phase "
                                 "'pwned'\n"),
    "status-loop-a-list": Case(metrics(status(ext_loop=["/dev/loop0"])), 1,
                               E + "{tmp}/status.json: extensions[0]: loop is not a printable "
                               "string\n"),
    "status-duration-a-string": Case(metrics(status(duration_ms="fast")), 1,
                                     E + "{tmp}/status.json: duration_ms is not a number\n"),
    "status-duration-true": Case(metrics(status(duration_ms=True)), 1,
                                 E + "{tmp}/status.json: duration_ms is not a number\n"),
    "status-duration-nan": Case(metrics(nan_status), 0, "", after=written(prom(seconds="NaN"))),
    "status-duration-huge": Case(metrics(status(duration_ms=1e308)), 0, "",
                                 after=written(prom(seconds="1e+305"))),
    "status-compatibility-30-deep": Case(metrics(status(ext_compatibility=json.loads(
        '{"a":' * 30 + "1" + "}" * 30))), 1, E + "{tmp}/status.json: extensions[0]: "
        "compatibility is nested deeper than 16 levels\n"),
    # ------------------------------------------------ label values
    "name-newline-forges-no-sample": Case(metrics(status(
        ext_name='x"} 1\noverlay_agent_layer_mounted{id="fake",name="fake"} 1\n#')), 0, "",
        after=written(prom(name='x\\"} 1\\\\noverlay_agent_layer_mounted{id=\\"fake\\",'
                                'name=\\"fake\\"} 1\\\\n#'))),
    "name-quote-backslash": Case(metrics(status(ext_name='a"b\\c')), 0, "",
                                 after=written(prom(name='a\\"b\\\\c'))),
    "name-escape-sequence": Case(metrics(status(ext_name="\x1b[2J\x1b[31mx")), 0, "",
                                 after=written(prom(name="\\\\x1b[2J\\\\x1b[31mx"))),
    "name-carriage-return": Case(metrics(status(ext_name="a\rb")), 0, "",
                                 after=written(prom(name="a\\\\rb"))),
    "name-8-bit-csi": Case(metrics(status(ext_name="a\x9b2Jb")), 0, "",
                           after=written(prom(name="a\\\\x9b2Jb"))),
    "name-line-separator": Case(metrics(status(ext_name="a\u2028b")), 0, "",
                                after=written(prom(name="a\\\\u2028b"))),
    "name-undecodable-byte": Case(metrics(status(ext_name="x\udcff")), 0, "",
                                  after=written(prom(name="x\\\\xff"))),
    "name-nul": Case(metrics(status(ext_name="a\x00b")), 0, "",
                     after=written(prom(name="a\\\\x00b"))),
    "version-newline": Case(metrics(status(ext_version="1\n2")), 0, "",
                            after=written(prom(version="1\\\\n2"))),
    "id-quote": Case(metrics(status(ext_id='0"0')), 0, "", after=written(prom(ident='0\\"0'))),
    "name-64-KiB": Case(metrics(status(ext_name="n" * 65536)), 0, "",
                        after=written(prom(name="n" * 65536))),
    # ------------------------------------------------ the output
    "output-folder-missing": Case(metrics(status(), "none/m.prom", lambda tmp: None), 1,
                                  E + "{tmp}/none/m.prom: cannot create a file in {tmp}/none: "
                                  "No such file or directory\n"),
    "output-folder-a-file": Case(metrics(status(), "f/m.prom",
                                         lambda tmp: (tmp / "f").write_bytes(b"keep")), 1,
                                 E + "{tmp}/f/m.prom: cannot create a file in {tmp}/f: Not a "
                                 "directory\n", after=untouched("f", b"keep")),
    "output-a-folder": Case(metrics(status(), "prom", lambda tmp: (tmp / "prom").mkdir()), 1,
                            E + "{tmp}/prom: cannot write: Is a directory\n",
                            after=lambda tmp: untouched("status.json", status())(tmp)),
    "output-a-symlink-elsewhere": Case(metrics(status(), prepare=lambda tmp: (
        (tmp / "precious").write_bytes(b"keep"), (tmp / "prom").mkdir(),
        (tmp / "prom" / "m.prom").symlink_to(tmp / "precious"))), 0, "",
        after=lambda tmp: (written(prom())(tmp), untouched("precious", b"keep")(tmp))),
    "output-a-dangling-symlink": Case(metrics(status(), prepare=in_prom(symlink_to(
        "/nonexistent/x"))), 0, "", after=written(prom())),
    "output-a-fifo": Case(metrics(status(), prepare=in_prom(mkfifo)), 0, "",
                          after=written(prom())),
    "output-on-sysfs": Case(lambda tmp: ["metrics", "--status", str((
        tmp / "status.json", (tmp / "status.json").write_bytes(status()))[0]),
        "-o", "/sys/oa-metrics.prom"], 1, E + "/sys/oa-metrics.prom: cannot create a file in "
        "/sys: *\n"),
}


# ---------------------------------------------------------------- gc --store

HEX = "c" * 64
KEPT = "d" * 64
TREE = {"root_hash": "0" * 64, "salt": "", "data_size": 4096, "hash_offset": 4096}


def store_list(*paths: str) -> bytes:
    """A list naming store images at `paths` (store 0A1B-2C3D)."""
    return json.dumps({"version": 1, "layers": [
        {"image": f"{i:03d}-x.sqsh", "kind": "extension", "sha256": KEPT, "size": 8192,
         "metadata": {"name": "x", "version": "1"}, "verity": TREE, "store": "0A1B-2C3D",
         "path": path} for i, path in enumerate(paths)]}).encode()


def gc(initrd: bytes | Callable[[], bytes] | Callable[[Path], None] = b"",
       store: Callable[[Path], None] | None = None,
       store_arg: str = "store") -> Callable[[Path], list[str]]:
    """`gc` of {tmp}/store (an orphan and a kept image in it, then `store(folder)`), with
    one --initramfs made from `initrd` (default: one that keeps KEPT)."""
    def make(tmp: Path) -> list[str]:
        folder = tmp / "store"
        folder.mkdir()
        (folder / f"{HEX}.sqsh").write_bytes(b"orphan")
        (folder / f"{KEPT}.sqsh").write_bytes(b"kept")
        if store is not None:
            store(folder)
        path = initramfs(initrd or with_list(store_list(f"oa/{KEPT}.sqsh")))(tmp)
        return ["gc", "--store", str(tmp / store_arg), "--initramfs", str(path)]
    return make


def left(*names: str) -> Callable[[Path], None]:
    """The store holds exactly `names` (and the lock file), each what it was."""
    def after(tmp: Path) -> None:
        got = sorted(n for n in os.listdir(tmp / "store") if n != ".overlay-agent.lock")
        assert got == sorted(names), got
        orphan = tmp / "store" / f"{HEX}.sqsh"
        if f"{HEX}.sqsh" in names and not orphan.is_symlink() and orphan.is_file():
            assert orphan.read_bytes() == b"orphan"
    return after


BOTH = (f"{HEX}.sqsh", f"{KEPT}.sqsh")
REMOVED = "removed {tmp}/store/" + HEX + ".sqsh\n{tmp}/store: 1 image(s) removed\n"
NONE_REMOVED = "{tmp}/store: 0 image(s) removed\n"
NOTHING = "; nothing removed\n"


def plant(name: str, make: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda folder: make(folder / name)


GC: dict[str, Case] = {
    # ------------------------------------------------ the store folder
    "orphan-removed": Case(gc(), 0, "", REMOVED, after=left(f"{KEPT}.sqsh")),
    "store-missing": Case(gc(store_arg="none"), 2, E + "--store {tmp}/none: not a folder\n",
                          after=left(*BOTH)),
    "store-a-file": Case(gc(store_arg="initrd.img"), 2,
                         E + "--store {tmp}/initrd.img: not a folder\n", after=left(*BOTH)),
    "store-a-fifo": Case(lambda tmp: (os.mkfifo(tmp / "p"), ["gc", "--store", str(tmp / "p"),
                                                            "--initramfs", "/dev/null"])[1],
                         2, E + "--store {tmp}/p: not a folder\n"),
    "image-name-a-symlink-out": Case(gc(store=lambda folder: (
        (folder / f"{HEX}.sqsh").unlink(), (folder.parent / "precious").write_bytes(b"keep"),
        (folder / f"{HEX}.sqsh").symlink_to(folder.parent / "precious"))), 0, "",
        NONE_REMOVED, after=lambda tmp: (left(*BOTH)(tmp),
                                         untouched("precious", b"keep")(tmp))),
    "image-name-a-fifo": Case(gc(store=lambda folder: (
        (folder / f"{HEX}.sqsh").unlink(), os.mkfifo(folder / f"{HEX}.sqsh"))), 0, "",
        NONE_REMOVED, after=left(*BOTH)),
    "image-name-a-folder": Case(gc(store=lambda folder: (
        (folder / f"{HEX}.sqsh").unlink(), (folder / f"{HEX}.sqsh").mkdir())), 0, "",
        NONE_REMOVED, after=left(*BOTH)),
    "names-not-content-names": Case(gc(store=lambda folder: [
        (folder / name).write_bytes(b"x") for name in (
            "C" * 64 + ".sqsh", "c" * 63 + ".sqsh", f"{HEX}.sqsh.tmp-1", f".{HEX}.sqsh",
            f"{HEX}.sqsh\n", "x\nremoved etc-passwd", "\x1b[2J.sqsh")]), 0, "", REMOVED,
        after=left(f"{KEPT}.sqsh", "C" * 64 + ".sqsh", "c" * 63 + ".sqsh", f"{HEX}.sqsh.tmp-1",
                   f".{HEX}.sqsh", f"{HEX}.sqsh\n", "x\nremoved etc-passwd", "\x1b[2J.sqsh")),
    "lock-a-symlink": Case(gc(store=lambda folder: (folder / ".overlay-agent.lock").symlink_to(
        folder.parent / "precious")), 1, E + "{tmp}/store/.overlay-agent.lock: cannot open "
        "the store lock: a symbolic link, not a regular file\n",
        after=lambda tmp: (left(*BOTH)(tmp),
                           untouched("precious", None)(tmp))),
    "lock-a-fifo": Case(gc(store=plant(".overlay-agent.lock", mkfifo)), 1,
                        E + "{tmp}/store/.overlay-agent.lock: cannot open the store lock: a "
                        "fifo, not a regular file\n"),
    # ------------------------------------------------ the initramfs naming what to keep
    "initramfs-fifo": Case(gc(mkfifo), 1, E + "{tmp}/initrd.img: cannot read: a fifo, not a "
                           "regular file" + NOTHING, after=left(*BOTH)),
    "initramfs-dev-zero": Case(gc(symlink_to("/dev/zero")), 1, E + "{tmp}/initrd.img: cannot "
                               "read: a character device, not a regular file" + NOTHING,
                               after=left(*BOTH)),
    "initramfs-directory": Case(gc(mkdir), 1, E + "{tmp}/initrd.img: cannot read: a "
                                "directory, not a regular file" + NOTHING, after=left(*BOTH)),
    "initramfs-junk": Case(gc(b"junk" * 100), 1, E + "{tmp}/initrd.img: unknown data at "
                           "offset 0 (not cpio, gzip, xz, lzma, bzip2, zstd or lz4)" + NOTHING,
                           after=left(*BOTH)),
    "initramfs-zstd-bomb": Case(gc(lambda: zstd_stream(declared_member("big", 3 << 30),
                                                       3 << 30)), 1,
                                E + "{tmp}/initrd.img: segment 0 at offset 0: unpacks to more "
                                "than 1073741824 bytes" + NOTHING, after=left(*BOTH)),
    "list-not-utf8": Case(gc(with_list(b"\xff{}")), 1, E + "{tmp}/initrd.img: /extensions.yaml:"
                          " not UTF-8 (byte 0)" + NOTHING, after=left(*BOTH)),
    "list-deep-json": Case(gc(with_list(b"[" * 100_000)), 1, E + "{tmp}/initrd.img: "
                           "/extensions.yaml: JSON nested too deeply" + NOTHING,
                           after=left(*BOTH)),
    "list-store-path-dotdot": Case(gc(with_list(store_list("../../etc/passwd"))), 1,
                                   E + "{tmp}/initrd.img: /extensions.yaml: layers[0]: store "
                                   "path '../../etc/passwd' has an empty, . or .. part" +
                                   NOTHING, after=left(*BOTH)),
    "list-over-4-MiB": Case(gc(with_list(b" " * (4 << 20) + b"{}")), 1,
                            E + "{tmp}/initrd.img: /extensions.yaml: 4194306 bytes, over the "
                            "limit of 4194304" + NOTHING, after=left(*BOTH)),
    "list-via-dotdot-still-read": Case(gc(lambda: archive(
        *BASE, cpio.directory("extensions"),
        cpio.regular("extensions/../extensions.yaml", store_list(f"oa/{KEPT}.sqsh")))), 0, "",
        REMOVED, after=left(f"{KEPT}.sqsh")),
    "list-names-orphan-too": Case(gc(with_list(store_list(f"oa/{KEPT}.sqsh", f"x/{HEX}.sqsh"))),
                                  0, "", NONE_REMOVED, after=left(*BOTH)),
}


# ---------------------------------------------------------------- initramfs-hook

def hook(*args: str, config: bytes | Callable[[Path], None] | None = None,
         destdir: Callable[[Path], None] | None = None) -> Callable[[Path], list[str]]:
    """`initramfs-hook` into {tmp}/tree (an empty folder unless `destdir` makes it), the
    machine config {tmp}/machine.yaml made from `config`; `args` override the rest."""
    def make(tmp: Path) -> list[str]:
        tree = tmp / "tree"
        (destdir or mkdir)(tree)
        path = tmp / "machine.yaml"
        if config is not None:
            put(path, config)
        base = {"--destdir": str(tree), "--kernel-release": "6.1.0-9-amd64",
                "--modules-dir": str(tmp / "modules"), "--config": str(path),
                "--cache": str(tmp / "cache")}
        base.update(dict(zip(args[::2], args[1::2], strict=True)))
        return ["initramfs-hook", *[x for kv in base.items() for x in kv]]
    return make


def tree_empty(tmp: Path) -> None:
    """Nothing was written into the tree, and no cache was made."""
    assert not (tmp / "tree").is_dir() or os.listdir(tmp / "tree") == []
    assert not (tmp / "cache").exists()


def release_refused(shown: str) -> str:
    return E + f"--kernel-release {shown}: not a kernel release\n"


def config_refused(*problems: str) -> str:
    return E + f"{len(problems)} problem(s) found:\n" + "".join(p + "\n" for p in problems)


C = "{tmp}/machine.yaml"

HOOK: dict[str, Case] = {
    # ------------------------------------------------ --kernel-release
    "release-slash": Case(hook("--kernel-release", "../../etc"), 2,
                          release_refused("'../../etc'"), after=tree_empty),
    "release-dots": Case(hook("--kernel-release", ".."), 2, release_refused("'..'"),
                         after=tree_empty),
    "release-empty": Case(hook("--kernel-release", ""), 2, release_refused("''"),
                          after=tree_empty),
    "release-newline": Case(hook("--kernel-release", "6.1\noverlay-agent: ok"), 2,
                            release_refused("'6.1\\noverlay-agent: ok'"), after=tree_empty),
    "release-escape": Case(hook("--kernel-release", "6.1\x1b[2J"), 2,
                           release_refused("'6.1\\x1b[2J'"), after=tree_empty),
    "release-undecodable": Case(hook("--kernel-release", "6.1\udcff"), 2,
                                release_refused("'6.1\\udcff'"), after=tree_empty),
    "release-300-chars": Case(hook("--kernel-release", "6" * 300), 2,
                              release_refused("'" + "6" * 76 + "..."), after=tree_empty),
    # ------------------------------------------------ --destdir
    "destdir-missing": Case(hook(destdir=lambda path: None), 1, E + "{tmp}/tree: not a folder "
                            "(the initramfs tree being built)\n", after=tree_empty),
    "destdir-a-file": Case(hook(destdir=lambda path: path.write_bytes(b"x")), 1,
                           E + "{tmp}/tree: not a folder (the initramfs tree being built)\n"),
    "destdir-a-fifo": Case(hook(destdir=mkfifo), 1, E + "{tmp}/tree: not a folder (the "
                           "initramfs tree being built)\n"),
    "destdir-the-root": Case(hook("--destdir", "/"), 1,
                             E + "/: the running system's root, not an initramfs tree\n"),
    "destdir-symlink-to-the-root": Case(hook(destdir=symlink_to("/")), 1,
                                        E + "{tmp}/tree: the running system's root, not an "
                                        "initramfs tree\n"),
    "destdir-dangling-symlink": Case(hook(destdir=symlink_to("/nonexistent/tree")), 1,
                                     E + "{tmp}/tree: not a folder (the initramfs tree being "
                                     "built)\n"),
    # ------------------------------------------------ --config: refused before the tree is touched
    "config-fifo": Case(hook(config=mkfifo), 1, config_refused(
        C + ": cannot read: a fifo, not a regular file"), after=tree_empty),
    "config-dev-zero": Case(hook(config=symlink_to("/dev/zero")), 1, config_refused(
        C + ": cannot read: a character device, not a regular file"), after=tree_empty),
    "config-dangling-symlink": Case(hook(config=symlink_to("/nonexistent/machine.yaml")), 1,
                                    config_refused(C + ": cannot read: No such file or "
                                                   "directory"), after=tree_empty),
    "config-directory": Case(hook(config=mkdir), 1, config_refused(
        C + ": cannot read: a directory, not a regular file"), after=tree_empty),
    "config-17-MiB": Case(hook(config=sparse(17 << 20)), 1, config_refused(
        C + ": cannot read: 17825792 bytes, over the limit of 16777216"), after=tree_empty),
    "config-not-utf8": Case(hook(config=b"machine:\n  \xff\n"), 1, config_refused(
        C + ": not UTF-8 text (byte 11)"), after=tree_empty),
    "config-deep-yaml": Case(hook(config=b"machine: " + b"[" * 2000 + b"]" * 2000 + b"\n"), 1,
                             config_refused(C + ": nested deeper than 64 levels at line 1"),
                             after=tree_empty),
    "config-alias-bomb": Case(hook(config=b"a: &a [x, x]\nmachine: *a\n"), 1,
                              config_refused(C + ": uses a YAML alias at line 2 (aliases are "
                                             "not supported)"), after=tree_empty),
    "config-python-tag": Case(hook(config=b"machine: !!python/object/apply:os.system [id]\n"),
                              1, config_refused(C + ": not valid YAML at line 1"),
                              after=tree_empty),
    "config-no-machine": Case(hook(config=b"version: v1alpha1\n"), 1, config_refused(
        C + ": no document with a machine section"), after=tree_empty),
    "config-extensions-a-mapping": Case(hook(config=b"machine:\n  install:\n    extensions: "
                                                    b"{a: 1}\n"), 1,
                                        config_refused(C + ": machine.install.extensions is "
                                                       "not a list"), after=tree_empty),
    "config-image-twice": Case(hook(config=b"machine:\n  install:\n    extensions:\n"
                                           b"      - image: dir:/a\n      - image: dir:/a\n"),
                               1, config_refused("dir:/a: listed twice (positions 1 and 2)"),
                               after=tree_empty),
}

CASES = {**{f"metrics-{k}": v for k, v in METRICS.items()},
         **{f"gc-{k}": v for k, v in GC.items()},
         **{f"initramfs-hook-{k}": v for k, v in HOOK.items()}}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_one_line_within_limits(tmp_path: Path, name: str) -> None:
    check(CASES[name], tmp_path)
