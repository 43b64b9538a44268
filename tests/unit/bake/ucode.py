"""Microcode containers made by the tests: Intel updates with correct (or deliberately wrong)
checksums, AMD containers with equivalence tables and patch sections."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from agent.bake import microcode


def words_sum(data: bytes) -> int:
    return sum(struct.unpack(f"<{len(data) // 4}I", data)) & 0xFFFFFFFF


def intel_update(sig: int, rev: int, pf: int = 0x01, date: int = 0x05202026,
                 data_size: int = 976, total: int | None = None, fill: int = 7,
                 ext: Sequence[tuple[int, int]] = ()) -> bytes:
    """One update whose header and data sum to 0; `ext` adds an extended signature table of
    (signature, pf) pairs with valid checksums; `total` defaults to the smallest whole KiB."""
    table_size = 20 + 12 * len(ext) if ext else 0
    total = total if total is not None else -(-(48 + data_size + table_size) // 1024) * 1024
    padded = total - 48 - table_size    # the data fills the update up to the table
    data = bytes((i * fill + rev) & 0xFF for i in range(data_size)) + bytes(padded - data_size)
    head = [1, rev, date, sig, 0, 1, pf, padded, total, 0, 0, 0]
    head[4] = -words_sum(struct.pack("<12I", *head) + data) & 0xFFFFFFFF
    body = struct.pack("<12I", *head) + data
    if ext:
        sigs = b"".join(struct.pack("<3I", s, p, (sig + pf + head[4] - s - p) & 0xFFFFFFFF)
                        for s, p in ext)
        table = struct.pack("<5I", len(ext), 0, 0, 0, 0) + sigs
        table = table[:4] + struct.pack("<I", -words_sum(table) & 0xFFFFFFFF) + table[8:]
        body += table
    return body


def refresh_intel_checksum(update: bytes) -> bytes:
    """`update` (no extended table) with its checksum fixed after an edit."""
    raw = bytearray(update)
    raw[16:20] = b"\0\0\0\0"
    data_size = struct.unpack_from("<I", raw, 28)[0] or 2000
    raw[16:20] = struct.pack("<I", -words_sum(bytes(raw[:48 + data_size])) & 0xFFFFFFFF)
    return bytes(raw)


def amd_patch(equiv_id: int, rev: int, date: int = 0x02232024, size: int = 64,
              fill: int = 0) -> bytes:
    """A patch section: type 1, size, then the patch (header + body)."""
    header = struct.pack("<2IHBBIIIHBBB3x8I", date, rev, 0, 0, 0, 0, 0, 0, equiv_id, 0, 0, 0,
                         *([0] * 8))
    body = bytes([fill]) * (size - len(header))
    return struct.pack("<2I", 1, size) + header + body


def amd_container(equiv: Sequence[tuple[int, int]], patches: Sequence[bytes]) -> bytes:
    """Header, the equivalence table of (signature, equiv id) plus its zero entry, patches."""
    table = b"".join(struct.pack("<3I2H", sig, 0, 0, eid, 0) for sig, eid in equiv) + bytes(16)
    return struct.pack("<3I", 0x00414D44, 0, len(table)) + table + b"".join(patches)


def kernel_choice(data: bytes, signature: int) -> int | None:
    """The AMD revision the kernel's early loader would apply: the first container with a
    patch for the signature's equivalence id, and in it the last such patch (amd.c)."""
    for container in microcode.parse_amd_containers(data):
        ids = [e.equiv_id for e in container.equiv if e.signature == signature]
        found = [p.revision for p in container.patches if ids and
                 microcode.amd_equiv_id(p) == ids[0]]
        if found:
            return found[-1]
    return None
