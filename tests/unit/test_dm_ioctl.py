"""The device-mapper ioctl encoding of agent.syscalls (include/uapi/linux/dm-ioctl.h).

The ioctls themselves run in the VM tier: this machine's kernel has no device mapper.
"""

from __future__ import annotations

import errno
import os

import pytest

from agent import syscalls


@pytest.mark.parametrize("request_code, value", [
    (syscalls.DM_DEV_CREATE, 0xC138FD03), (syscalls.DM_DEV_REMOVE, 0xC138FD04),
    (syscalls.DM_DEV_SUSPEND, 0xC138FD06), (syscalls.DM_TABLE_LOAD, 0xC138FD09),
    (syscalls.DM_TABLE_STATUS, 0xC138FD0C)])
def test_request_numbers_are_iowr_0xfd_with_the_312_byte_struct(request_code: int,
                                                                 value: int) -> None:
    assert request_code == value


def test_header_layout() -> None:
    buf = syscalls.dm_header("oa-layer-001", size=400, flags=syscalls.DM_READONLY_FLAG,
                             target_count=1, uuid="u-1")
    words = [int.from_bytes(buf[i:i + 4], "little") for i in range(0, 40, 4)]
    assert len(buf) == 400
    assert words[:9] == [4, 0, 0, 400, 312, 1, 0, syscalls.DM_READONLY_FLAG, 0]
    assert buf[48:48 + 13] == b"oa-layer-001\0"
    assert buf[176:180] == b"u-1\0"
    assert bytes(buf[312:]) == bytes(88)


@pytest.mark.parametrize("name, message", [
    ("x" * 128, "device-mapper name longer than 127 bytes or with a NUL"),
    ("a\0b", "device-mapper name longer than 127 bytes or with a NUL")])
def test_header_refuses_a_name_that_does_not_fit(name: str, message: str) -> None:
    with pytest.raises(OSError) as exc:
        syscalls.dm_header(name)
    assert (exc.value.errno, exc.value.strerror) == (errno.EINVAL, message)


def test_target_spec_is_padded_to_8_bytes_and_next_is_its_size() -> None:
    params = "1 7:0 7:0 4096 4096 3 4 sha256 " + "ab" * 32 + " -"
    spec = syscalls.dm_target(0, 24, "verity", params)
    assert len(spec) % 8 == 0
    assert int.from_bytes(spec[0:8], "little") == 0
    assert int.from_bytes(spec[8:16], "little") == 24
    assert int.from_bytes(spec[20:24], "little") == len(spec)
    assert spec[24:40] == b"verity" + bytes(10)
    assert spec[40:].rstrip(b"\0") == params.encode()


def test_status_targets_are_read_with_next_counted_from_the_first_spec() -> None:
    first = syscalls.dm_target(0, 8, "verity", "V")
    second = syscalls.dm_target(8, 16, "linear", "C and more")
    # a status reply's `next` counts from the first spec, not from the current one
    first = first[:20] + len(first).to_bytes(4, "little") + first[24:]
    second = second[:20] + (len(first) + len(second)).to_bytes(4, "little") + second[24:]
    buf = bytes(syscalls.dm_header("x", size=312, target_count=2)) + first + second
    assert syscalls.parse_dm_targets(buf) == [(0, 8, "verity", "V"),
                                             (8, 16, "linear", "C and more")]


def test_no_device_mapper_names_the_control_node() -> None:
    if os.path.exists(syscalls.DM_CONTROL):
        pytest.skip("this kernel has a device mapper")
    with pytest.raises(OSError) as exc:
        syscalls.dm_create("oa-test")
    assert (exc.value.errno, exc.value.filename) == (errno.ENOENT, syscalls.DM_CONTROL)
