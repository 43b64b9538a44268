"""Microcode container rules on files the tests make: Intel headers, checksums and extended
signature tables, AMD containers; merging keeps the newest revision per processor."""

from __future__ import annotations

import struct

import pytest

from agent.bake import microcode
from agent.bake.microcode import AMD, INTEL, MicrocodeError
from tests.unit.bake.ucode import (
    amd_container,
    amd_patch,
    intel_update,
    kernel_choice,
    words_sum,
)


def patched(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<I", value) + data[offset + 4:]


GOOD = intel_update(0x50654, 0x20)
EXT = intel_update(0x50654, 0x20, pf=0x01, ext=[(0x50655, 0x02), (0x50656, 0x04)])
EXT_AT = 48 + 2048 - 48 - 44           # where the extended table of EXT starts


def test_intel_updates_are_read_back_to_back() -> None:
    data = GOOD + intel_update(0x806EC, 0xF4, pf=0x94, date=0x03142024, data_size=3000)
    assert [b.describe() for b in microcode.parse_intel(data)] == [
        "sig 0x00050654, pf_mask 0x01, 2026-05-20, rev 0x0020, size 1024",
        "sig 0x000806ec, pf_mask 0x94, 2024-03-14, rev 0x00f4, size 3072"]
    (ext,) = microcode.parse_intel(EXT)
    assert ext.signatures == (0x50654, 0x50655, 0x50656)
    assert ext.describe().endswith("size 2048 (+2 extended signature(s))")


def test_intel_zero_sizes_mean_2000_and_2048() -> None:
    update = intel_update(0x306C3, 0x28, data_size=2000)
    zeroed = patched(patched(update, 28, 0), 32, 0)
    # sizes are not part of what the checksum must fix here: recompute it
    zeroed = patched(zeroed, 16, 0)
    zeroed = patched(zeroed, 16, -words_sum(zeroed[:2048]) & 0xFFFFFFFF)
    (blob,) = microcode.parse_intel(zeroed)
    assert len(blob.data) == 2048


@pytest.mark.parametrize("data,message", [
    (b"", "empty file"),
    (GOOD[:40], "update at offset 0: truncated header (40 of 48 bytes)"),
    (GOOD + GOOD[:47], "update at offset 1024: truncated header (47 of 48 bytes)"),
    (patched(GOOD, 0, 2), "update at offset 0: header version 2 and loader revision 1, "
                          "not 1 and 1 (not Intel microcode)"),
    (patched(GOOD, 20, 0), "update at offset 0: header version 1 and loader revision 0, "
                           "not 1 and 1 (not Intel microcode)"),
    (patched(GOOD, 32, 1048), "update at offset 0: data size 976 and total size 1048 do not "
                              "fit (total a multiple of 1024, at least header + data)"),
    (patched(GOOD, 28, 1000), "update at offset 0: data size 1000 and total size 1024 do not "
                              "fit (total a multiple of 1024, at least header + data)"),
    (patched(GOOD, 28, 977), "update at offset 0: data size 977 and total size 1024 do not "
                             "fit (total a multiple of 1024, at least header + data)"),
    (GOOD[:1000], "update at offset 0: truncated (1000 of 1024 bytes)"),
    (patched(GOOD, 4, 0x21), "update at offset 0: checksum of header and data does not sum "
                             "to 0"),
    (GOOD[:-4] + b"\1\0\0\0", "update at offset 0: checksum of header and data does not sum "
                              "to 0"),
    (patched(EXT, EXT_AT, 3), "update at offset 0: extended signature table says 3 "
                              "signatures in 44 bytes"),
    (patched(EXT, EXT_AT + 8, 1), "update at offset 0: extended signature table checksum "
                                  "does not sum to 0"),
    (patched(patched(EXT, EXT_AT + 20, 0x50657), EXT_AT + 4,
             struct.unpack_from("<I", EXT, EXT_AT + 4)[0] - 2),
     "update at offset 0: extended signature 0 has a bad checksum"),
], ids=["empty", "short-header", "short-second-header", "header-version", "loader-revision",
        "total-not-kib", "data-over-total", "data-not-words", "truncated", "checksum",
        "checksum-in-padding", "ext-count", "ext-checksum", "ext-signature-checksum"])
def test_malformed_intel_is_one_precise_message(data: bytes, message: str) -> None:
    with pytest.raises(MicrocodeError) as caught:
        microcode.parse_intel(data)
    assert str(caught.value) == message


@pytest.mark.parametrize("table", [16, 24])
def test_intel_table_of_a_size_no_count_gives_is_truncated(table: int) -> None:
    update = patched(GOOD, 28, 1024 - 48 - table)         # not 20 + 12n bytes left after data
    update = patched(update, 16, 0)
    update = patched(update, 16, -words_sum(update[:1024 - table]) & 0xFFFFFFFF)
    with pytest.raises(MicrocodeError) as caught:
        microcode.parse_intel(update)
    assert str(caught.value) == (f"update at offset 0: extended signature table of {table} "
                                 f"bytes is truncated")


def test_merge_intel_keeps_the_newest_per_signature_and_platform() -> None:
    old = intel_update(0x50654, 0x20, pf=0x01) + intel_update(0x806EC, 0xF4, pf=0x94)
    new = intel_update(0x50654, 0x21, pf=0x01) + intel_update(0x806EC, 0xF0, pf=0x94) \
        + intel_update(0x50654, 0x05, pf=0x02)
    merged = microcode.parse_intel(microcode.merge(INTEL, [old, new]))
    assert sorted((b.signatures[0], b.platforms, b.revision) for b in merged) == [
        (0x50654, 0x01, 0x21), (0x50654, 0x02, 0x05), (0x806EC, 0x94, 0xF4)]
    assert microcode.merge(INTEL, [new, old]) == microcode.merge(INTEL, [old, new])


# ---------------------------------------------------------------- AMD

ZEN2 = amd_container([(0x00830F10, 0x8310), (0x00830F11, 0x8310), (0x00870F10, 0x8710)],
                     [amd_patch(0x8310, 0x0830107A), amd_patch(0x8710, 0x08701030, size=96)])
FAM15 = amd_container([(0x00600F12, 0x6012)], [amd_patch(0x6012, 0x0600063E)])


def test_amd_containers_and_patches() -> None:
    blobs = microcode.parse_amd(FAM15 + ZEN2)
    assert [b.describe() for b in blobs] == [
        "family 15h, sig 0x00600f12, 2024-02-23, rev 0x0600063e, size 72",
        "family 17h, sig 0x00830f10,0x00830f11, 2024-02-23, rev 0x0830107a, size 72",
        "family 17h, sig 0x00870f10, 2024-02-23, rev 0x08701030, size 104"]
    orphan = amd_container([(0x00830F10, 0x8310)], [amd_patch(0x9999, 1)])
    assert microcode.parse_amd(orphan)[0].describe().startswith("family 18h, sig none, ")


@pytest.mark.parametrize("data,message", [
    (b"", "empty file"),
    (ZEN2[:8], "container at offset 0: truncated header"),
    (b"\x7fELF" + ZEN2[4:], "container at offset 0: no AMD container magic and equivalence "
                            "table (not AMD microcode)"),
    (patched(ZEN2, 4, 1), "container at offset 0: no AMD container magic and equivalence "
                          "table (not AMD microcode)"),
    (patched(ZEN2, 8, 20), "container at offset 0: equivalence table of 20 bytes does not fit"),
    (patched(ZEN2, 8, 0), "container at offset 0: equivalence table of 0 bytes does not fit"),
    (ZEN2[:40], "container at offset 0: equivalence table of 64 bytes does not fit"),
    (ZEN2 + b"\1\0\0", "section at offset 252: truncated header"),
    (patched(ZEN2, 76, 2), "section at offset 76: type 2 of 64 bytes is not a patch that fits "
                           "(type 1, at least 64 bytes)"),
    (patched(ZEN2, 80, 60), "section at offset 76: type 1 of 60 bytes is not a patch that "
                            "fits (type 1, at least 64 bytes)"),
    (ZEN2[:-1], "section at offset 148: type 1 of 96 bytes is not a patch that fits "
                "(type 1, at least 64 bytes)"),
    (FAM15 + ZEN2[:10], "container at offset 116: truncated header"),
], ids=["empty", "short-header", "magic", "table-type", "table-unaligned", "table-empty",
        "table-past-end", "short-section", "section-type", "section-small", "section-past-end",
        "short-second"])
def test_malformed_amd_is_one_precise_message(data: bytes, message: str) -> None:
    with pytest.raises(MicrocodeError) as caught:
        microcode.parse_amd(data)
    assert str(caught.value) == message


def test_merge_amd_gives_the_kernel_the_newest_patch_per_signature() -> None:
    # the input's file: Zen2 new for 0x830f10 (via shared id), old for 0x870f10
    theirs = amd_container([(0x00830F10, 0x8310), (0x00870F10, 0x8710)],
                           [amd_patch(0x8310, 0x0830107C), amd_patch(0x8710, 0x08701030)])
    # an extension's: old 0x830f10, new 0x870f10, plus a CPU the input lacks
    ours = amd_container([(0x00830F10, 0x8310), (0x00870F10, 0x8710), (0x00A00F11, 0xA011)],
                         [amd_patch(0x8310, 0x0830107A), amd_patch(0x8710, 0x08701035),
                          amd_patch(0xA011, 0x0A0011D5)])
    for inputs in ([theirs, FAM15, ours], [ours, theirs, FAM15]):
        merged = microcode.merge(AMD, inputs)
        assert {sig: kernel_choice(merged, sig) for sig in (
            0x00830F10, 0x00870F10, 0x00A00F11, 0x00600F12, 0x00123456)} == {
            0x00830F10: 0x0830107C, 0x00870F10: 0x08701035, 0x00A00F11: 0x0A0011D5,
            0x00600F12: 0x0600063E, 0x00123456: None}
        # a container per family, oldest first; each blob once
        assert [sorted({p.family for p in c.patches})
                for c in microcode.parse_amd_containers(merged)] == [[0x15], [0x17], [0x19]]
    # concatenated as they come, the kernel would take the older 0x870f10 patch
    assert kernel_choice(theirs + ours, 0x00870F10) == 0x08701030


def test_merge_amd_splits_an_id_two_inputs_patch_differently() -> None:
    """0x830f10 and 0x830f11 share id 0x8310 in both files, but each file is newer for one:
    one container cannot hold both patches for one id, so the second goes into another."""
    first = amd_container([(0x00830F10, 0x8310)], [amd_patch(0x8310, 0x0830107C, fill=1)])
    second = amd_container([(0x00830F11, 0x8310)], [amd_patch(0x8310, 0x0830107D, fill=2)])
    older = amd_container([(0x00830F10, 0x8310), (0x00830F11, 0x8310)],
                          [amd_patch(0x8310, 0x08301000)])
    merged = microcode.merge(AMD, [older, first, second])
    assert len(microcode.parse_amd_containers(merged)) == 2
    assert (kernel_choice(merged, 0x00830F10), kernel_choice(merged, 0x00830F11)) == (
        0x0830107C, 0x0830107D)


def test_equal_revisions_the_later_input_wins() -> None:
    a = amd_container([(0x00830F10, 0x8310)], [amd_patch(0x8310, 0x0830107C, fill=1)])
    b = amd_container([(0x00830F10, 0x8310)], [amd_patch(0x8310, 0x0830107C, fill=2)])
    assert microcode.merge(AMD, [a, b]) == b
