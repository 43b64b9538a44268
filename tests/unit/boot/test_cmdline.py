"""Kernel command line parsing: table-driven, exact messages."""

from __future__ import annotations

import pytest

from agent.boot.cmdline import (
    DEFAULT_ROOT_WAIT,
    BootParams,
    RootKind,
    RootSpec,
    UpperSpec,
    parse_cmdline,
    parse_root,
    parse_upper,
    scan_cmdline,
    split_cmdline,
)
from agent.errors import BootError


@pytest.mark.parametrize(("text", "kernel", "init"), [
    ("a b  c\n", ["a", "b", "c"], []),
    ('x="a b" y', ["x=a b", "y"], []),
    ("root=/dev/vda -- single --foo", ["root=/dev/vda"], ["single", "--foo"]),
    ("", [], []),
])
def test_split(text: str, kernel: list[str], init: list[str]) -> None:
    assert split_cmdline(text) == (kernel, init)


@pytest.mark.parametrize(("value", "expected"), [
    ("/dev/vda", RootSpec(RootKind.PATH, "/dev/vda")),
    ("UUID=0A1B2C3D-0000-4000-8000-000000000001",
     RootSpec(RootKind.UUID, "0a1b2c3d-0000-4000-8000-000000000001")),
    ("LABEL=My Root", RootSpec(RootKind.LABEL, "My Root")),
    ("PARTUUID=1234abcd-01", RootSpec(RootKind.PARTUUID, "1234abcd-01")),
    ("/dev/disk/by-uuid/abcd-ef", RootSpec(RootKind.UUID, "abcd-ef")),
    ("/dev/disk/by-label/root", RootSpec(RootKind.LABEL, "root")),
    ("/dev/disk/by-partuuid/1234abcd-02", RootSpec(RootKind.PARTUUID, "1234abcd-02")),
    ("PARTLABEL=Root A", RootSpec(RootKind.PARTLABEL, "Root A")),
    ("/dev/disk/by-partlabel/root-b", RootSpec(RootKind.PARTLABEL, "root-b")),
])
def test_parse_root(value: str, expected: RootSpec) -> None:
    assert parse_root(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("sda1", "root=sda1: unknown syntax (expected /dev/NAME, UUID=, LABEL=, PARTUUID= or PARTLABEL=)"),
    ("fe01", "root=fe01: unknown syntax (expected /dev/NAME, UUID=, LABEL=, PARTUUID= or PARTLABEL=)"),
    ("/dev/", "root=/dev/: unknown syntax (expected /dev/NAME, UUID=, LABEL=, PARTUUID= or PARTLABEL=)"),
    ("/dev/../etc/x",
     "root=/dev/../etc/x: unknown syntax (expected /dev/NAME, UUID=, LABEL=, PARTUUID= or PARTLABEL=)"),
    ("partlabel=x",
     "root=partlabel=x: unknown syntax (expected /dev/NAME, UUID=, LABEL=, PARTUUID= or PARTLABEL=)"),
    ("UUID=", "root=UUID=: empty UUID"),
    ("UUID=xyz", "root=UUID=xyz: UUID must be hexadecimal digits and dashes"),
    ("PARTUUID=1234abcd-01/PARTNROFF=1",
     "root=PARTUUID=1234abcd-01/PARTNROFF=1: PARTUUID must be hexadecimal digits and dashes"),
])
def test_parse_root_rejects(value: str, message: str) -> None:
    with pytest.raises(BootError) as info:
        parse_root(value)
    assert str(info.value) == message


def test_defaults() -> None:
    params = parse_cmdline("console=ttyS0 BOOT_IMAGE=/vmlinuz quiet=nope\n")
    assert params == BootParams()
    assert params.init == "/sbin/init"
    assert params.root_timeout == DEFAULT_ROOT_WAIT


def test_everything() -> None:
    params = parse_cmdline(
        'root=UUID=abcd rootfstype=ext4 rootflags=noload rw init=/bin/sh rootdelay=2.5 '
        'panic=-1 quiet overlay_agent.disable overlay_agent.strict=1 overlay_agent.debug=no '
        'overlay_agent.skip=a,b, overlay_agent.skip=c oa_test.token=t0k '
        'overlay_agent.bogus=1 -- single x=y')
    assert params == BootParams(
        root=RootSpec(RootKind.UUID, "abcd"), rootfstype="ext4", rootflags="noload",
        init="/bin/sh", init_args=("single", "x=y"), rootdelay=2.5,
        panic=-1, quiet=True, disable=True, skip=frozenset({"a", "b", "c"}), strict=True,
        debug=False,
        notes=("rw ignored: the root is always mounted read-only",
               "overlay_agent.bogus: unknown key, ignored"))
    assert params.root_timeout == 2.5


@pytest.mark.parametrize(("text", "timeout"), [
    ("rootwait", None),
    ("rootwait rootdelay=4", None),
    ("rootwait=5", 5.0),                  # Linux 6.5+: wait at most 5 s
    ("rootwait=0.5 rootdelay=4", 0.5),
    ("rootdelay=0", 0.0),
    ("root=/dev/vda ro", DEFAULT_ROOT_WAIT),
])
def test_root_timeout(text: str, timeout: float | None) -> None:
    assert parse_cmdline(text).root_timeout == timeout


@pytest.mark.parametrize(("text", "message"), [
    ("root=sda1", "kernel command line: root=sda1: unknown syntax "
                  "(expected /dev/NAME, UUID=, LABEL=, PARTUUID= or PARTLABEL=)"),
    ("rootwait=soon", "kernel command line: rootwait=soon: not a number of seconds"),
    ("root=PARTLABEL=", "kernel command line: root=PARTLABEL=: empty PARTLABEL"),
    ("init=sbin/init", "kernel command line: init=sbin/init: not an absolute path"),
    ("panic=soon", "kernel command line: panic=soon: not an integer"),
    ("rootdelay=-1", "kernel command line: rootdelay=-1: not a number of seconds"),
    ("rootdelay=nan", "kernel command line: rootdelay=nan: not a number of seconds"),
    ("overlay_agent.strict=maybe",
     "kernel command line: overlay_agent.strict=maybe: not a yes/no value"),
    ("panic=x rootdelay=y root=z",
     "kernel command line: panic=x: not an integer; rootdelay=y: not a number of seconds; "
     "root=z: unknown syntax (expected /dev/NAME, UUID=, LABEL=, PARTUUID= or PARTLABEL=)"),
])
def test_rejects(text: str, message: str) -> None:
    with pytest.raises(BootError) as info:
        parse_cmdline(text)
    assert str(info.value) == message


def test_later_key_wins() -> None:
    assert parse_cmdline("init=/a init=/b panic=3 panic=5").init == "/b"
    assert parse_cmdline("panic=3 panic=5").panic == 5


@pytest.mark.parametrize(("value", "expected", "text"), [
    ("tmpfs", UpperSpec(), "tmpfs"),
    ("tmpfs:512m", UpperSpec(size="512m"), "tmpfs:512m"),
    ("tmpfs:25%", UpperSpec(size="25%"), "tmpfs:25%"),
    ("tmpfs:1048576", UpperSpec(size="1048576"), "tmpfs:1048576"),
    ("/dev/vdb", UpperSpec(RootSpec(RootKind.PATH, "/dev/vdb")), "/dev/vdb"),
    ("LABEL=data:/overlay//root/", UpperSpec(RootSpec(RootKind.LABEL, "data"), "/overlay/root"),
     "LABEL=data:/overlay/root"),
    ("LABEL=a:b", UpperSpec(RootSpec(RootKind.LABEL, "a:b")), "LABEL=a:b"),   # a colon in a name
    ("UUID=ABCD-01:/", UpperSpec(RootSpec(RootKind.UUID, "abcd-01")), "UUID=abcd-01"),
    ("PARTLABEL=upper:/x", UpperSpec(RootSpec(RootKind.PARTLABEL, "upper"), "/x"),
     "PARTLABEL=upper:/x"),
    ("/dev/disk/by-partuuid/1234abcd-02", UpperSpec(RootSpec(RootKind.PARTUUID, "1234abcd-02")),
     "PARTUUID=1234abcd-02"),
])
def test_parse_upper(value: str, expected: UpperSpec, text: str) -> None:
    assert parse_upper(value) == expected
    assert str(expected) == text


SIZE_RULE = "size must be a number with an optional k, m, g or % (as tmpfs's size=)"
FOLDER_RULE = ("the folder must be a printable absolute path of at most 4095 bytes without "
               "'.', '..', ',', ':' or '\\'")
CONTROL = "holds a control character or is over 4095 bytes"


@pytest.mark.parametrize(("text", "message"), [
    ("overlay_agent.upper=tmpfs:", f"overlay_agent.upper=tmpfs:: {SIZE_RULE}"),
    ("overlay_agent.upper=tmpfs:1t", f"overlay_agent.upper=tmpfs:1t: {SIZE_RULE}"),
    ("overlay_agent.upper=tmpfs:-1m", f"overlay_agent.upper=tmpfs:-1m: {SIZE_RULE}"),
    ("overlay_agent.upper=tmpfs:\u0661", f"overlay_agent.upper=tmpfs:\u0661: {SIZE_RULE}"),
    ("overlay_agent.upper=sdb1", "overlay_agent.upper=sdb1: unknown syntax "
                                 "(expected /dev/NAME, UUID=, LABEL=, PARTUUID= or PARTLABEL=)"),
    ("overlay_agent.upper=UUID=:/x", "overlay_agent.upper=UUID=: empty UUID"),
    ("overlay_agent.upper=UUID=zz", "overlay_agent.upper=UUID=zz: UUID must be hexadecimal "
                                    "digits and dashes"),
    ("overlay_agent.upper=/dev/vdb:/a/../b", f"overlay_agent.upper=/dev/vdb:/a/../b: {FOLDER_RULE}"),
    ("overlay_agent.upper=/dev/vdb:/a,b", f"overlay_agent.upper=/dev/vdb:/a,b: {FOLDER_RULE}"),
    ("overlay_agent.upper=LABEL=x:/a:b", f"overlay_agent.upper=LABEL=x:/a:b: {FOLDER_RULE}"),
    ("overlay_agent.upper", "overlay_agent.upper: needs a value (tmpfs[:SIZE] or DEVICE[:/DIR])"),
    # hostile values: each one line, nothing that reaches a syscall or the console raw
    ("overlay_agent.upper=tmpfs:" + "9" * 19 + "g", "overlay_agent.upper=tmpfs:" + "9" * 19 +
     f"g: {SIZE_RULE}"),
    ('"overlay_agent.upper=/dev/vdb:/a\tb"', f"overlay_agent.upper=/dev/vdb:/a\tb: {FOLDER_RULE}"),
    ("overlay_agent.upper=/dev/vdb:/a\x1b[2Jb",
     f"overlay_agent.upper=/dev/vdb:/a\x1b[2Jb: {FOLDER_RULE}"),
    ("overlay_agent.upper=/dev/vdb:/a\x00b", f"overlay_agent.upper=/dev/vdb:/a\x00b: {FOLDER_RULE}"),
    ("overlay_agent.upper=/dev/vdb:/" + "a/" * 2100,
     "overlay_agent.upper=/dev/vdb:/" + "a/" * 35 + f": {FOLDER_RULE}"),
    ("overlay_agent.upper=/dev/\x1b[2J", f"overlay_agent.upper=/dev/\x1b[2J: {CONTROL}"),
    ("overlay_agent.upper=LABEL=a\x07b:/x", f"overlay_agent.upper=LABEL=a\x07b: {CONTROL}"),
    ("overlay_agent.upper=PARTLABEL=\x9b", f"overlay_agent.upper=PARTLABEL=\x9b: {CONTROL}"),
    ("overlay_agent.upper=LABEL=" + "x" * 4096, "overlay_agent.upper=LABEL=" + "x" * 74 +
     f": {CONTROL}"),
    ("overlay_agent.upper=UUID=" + "a" * 37, "overlay_agent.upper=UUID=" + "a" * 37 +
     ": UUID is longer than 36 characters"),
    ("overlay_agent.upper=PARTUUID=--", "overlay_agent.upper=PARTUUID=--: PARTUUID must be "
                                        "hexadecimal digits and dashes"),
    ("overlay_agent.upper=/dev/disk/by-uuid/../../sda", "overlay_agent.upper=/dev/disk/by-uuid/"
     "../../sda: UUID must be hexadecimal digits and dashes"),
    ("overlay_agent.upper=/dev/sda/..", "overlay_agent.upper=/dev/sda/..: unknown syntax "
                                        "(expected /dev/NAME, UUID=, LABEL=, PARTUUID= or PARTLABEL=)"),
    ("overlay_agent.upper=/dev/", "overlay_agent.upper=/dev/: unknown syntax "
                                  "(expected /dev/NAME, UUID=, LABEL=, PARTUUID= or PARTLABEL=)"),
    ("overlay_agent.upper=TMPFS:1g", "overlay_agent.upper=TMPFS:1g: unknown syntax "
                                     "(expected /dev/NAME, UUID=, LABEL=, PARTUUID= or PARTLABEL=)"),
    ("overlay_agent.upper=tmpfs:%", f"overlay_agent.upper=tmpfs:%: {SIZE_RULE}"),
])
def test_upper_rejects(text: str, message: str) -> None:
    params = scan_cmdline(f"root=/dev/vda {text} overlay_agent.skip=a")
    assert params.problems == (message,)
    assert params.own_problems == (message,)    # hook mode acts on it: nothing activates
    assert params.upper is None and params.skip == frozenset({"a"})
    with pytest.raises(BootError, match=r"^kernel command line: overlay_agent\.upper"):
        parse_cmdline(text)


def test_upper_default_is_the_read_only_root_and_later_key_wins() -> None:
    assert parse_cmdline("root=/dev/vda rw").upper is None
    assert parse_cmdline("overlay_agent.upper=/dev/vdb overlay_agent.upper=tmpfs").upper == \
        UpperSpec()
