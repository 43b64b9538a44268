"""Kernel command line parsing: table-driven, exact messages."""

from __future__ import annotations

import pytest

from agent.boot.cmdline import (
    DEFAULT_ROOT_WAIT,
    BootParams,
    RootKind,
    RootSpec,
    parse_cmdline,
    parse_root,
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
