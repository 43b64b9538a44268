"""CPU microcode containers, as the kernel's early loader reads them.

Intel (SDM vol. 3, "Microcode Update Facilities"; arch/x86/kernel/cpu/microcode/intel.c):
updates back to back, each a 48-byte header (header version 1, revision, BCD date
0xMMDDYYYY, processor signature, checksum, loader revision 1, platform-flags mask, data
size, total size; 0 sizes mean 2000 and 2048) then data, then optionally an extended
signature table. Every 32-bit word of header and data sums to 0, and so does the table.
Merging is iucode_tool's job, as in Debian's intel-microcode hook.

AMD (arch/x86/kernel/cpu/microcode/amd.c): containers back to back, each a header (magic
"DMA\\0", type 0, table size), an equivalence table (16-byte entries mapping a CPUID(1).EAX
signature to an equivalence id) and patch sections (type 1, size, then a patch whose
header holds its date, patch id = revision, and the equivalence id it is for). The kernel
takes the first container with a patch for its CPU, so the merge writes each signature
into one container only, with the newest patch any input has for it.
"""

from __future__ import annotations

import re
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import BuildError
from agent.tools import run

INTEL = "GenuineIntel"
AMD = "AuthenticAMD"
VENDORS = (INTEL, AMD)
# Where linux-firmware and Debian put them, under the firmware folder, named as the
# kernel's late loader asks for them (Debian's early-only Intel files end in `.initramfs`).
UCODE_FOLDERS = {INTEL: "intel-ucode", AMD: "amd-ucode"}
FILE_NAMES = {INTEL: re.compile(r"[0-9a-f]{2}-[0-9a-f]{2}-[0-9a-f]{2}(\.initramfs)?"),
              AMD: re.compile(r"microcode_amd[0-9a-z_]*\.bin")}

INTEL_HEADER = 48
INTEL_EXT_HEADER = 20
INTEL_EXT_SIGNATURE = 12
INTEL_SIZE_UNIT = 1024          # total sizes are whole KiB (iucode_tool refuses others)
AMD_MAGIC = 0x00414D44          # "DMA\0"
AMD_CONTAINER_HEADER = 12
AMD_EQUIV_ENTRY = 16
AMD_SECTION_HEADER = 8
AMD_PATCH_HEADER = 64


class MicrocodeError(BuildError):
    """A microcode file is malformed (the message says where and how)."""


@dataclass(frozen=True)
class Blob:
    """One update: what the loader matches on, and its bytes (an Intel update, an AMD
    patch section) for provenance."""

    vendor: str
    signatures: tuple[int, ...]   # CPUID(1).EAX values it is for
    platforms: int                # Intel platform-flags mask; 0 for AMD
    family: int                   # AMD family from the equivalence id; 0 for Intel
    revision: int
    date: str                     # YYYY-MM-DD
    data: bytes

    def describe(self) -> str:
        """`iucode_tool -l`'s wording for Intel; family, signatures and revision for AMD."""
        if self.vendor == INTEL:
            more = len(self.signatures) - 1
            return (f"sig 0x{self.signatures[0]:08x}, pf_mask 0x{self.platforms:02x}, "
                    f"{self.date}, rev 0x{self.revision:04x}, size {len(self.data)}"
                    + (f" (+{more} extended signature(s))" if more else ""))
        sigs = ",".join(f"0x{s:08x}" for s in self.signatures) or "none"
        return (f"family {self.family:02x}h, sig {sigs}, {self.date}, "
                f"rev 0x{self.revision:08x}, size {len(self.data)}")


def bcd_date(word: int) -> str:
    """0xMMDDYYYY -> YYYY-MM-DD (the digits are read as written, in hex)."""
    return f"{word & 0xFFFF:04x}-{word >> 24:02x}-{(word >> 16) & 0xFF:02x}"


def words_sum(data: bytes) -> int:
    return int(sum(struct.unpack(f"<{len(data) // 4}I", data))) & 0xFFFFFFFF


# ---------------------------------------------------------------- Intel

def check_intel_ext_table(table: bytes, head: tuple[int, ...], at: int) -> tuple[int, ...]:
    """The signatures of an extended signature table, once its rules are checked."""
    if len(table) < INTEL_EXT_HEADER or (len(table) - INTEL_EXT_HEADER) % INTEL_EXT_SIGNATURE:
        raise MicrocodeError(f"update at offset {at}: extended signature table of "
                             f"{len(table)} bytes is truncated")
    count = struct.unpack_from("<I", table)[0]
    if INTEL_EXT_HEADER + count * INTEL_EXT_SIGNATURE != len(table):
        raise MicrocodeError(f"update at offset {at}: extended signature table says {count} "
                             f"signatures in {len(table)} bytes")
    if words_sum(table):
        raise MicrocodeError(f"update at offset {at}: extended signature table checksum "
                             f"does not sum to 0")
    sig, cksum, pf = head[3], head[4], head[6]
    found = []
    for i in range(count):
        esig, epf, ecksum = struct.unpack_from("<3I", table,
                                               INTEL_EXT_HEADER + i * INTEL_EXT_SIGNATURE)
        if (sig + pf + cksum - esig - epf - ecksum) & 0xFFFFFFFF:
            raise MicrocodeError(f"update at offset {at}: extended signature {i} has a "
                                 f"bad checksum")
        found.append(esig)
    return tuple(found)


def parse_intel(data: bytes) -> list[Blob]:
    """Every update in an Intel microcode file; MicrocodeError on the first bad one."""
    blobs: list[Blob] = []
    at = 0
    if not data:
        raise MicrocodeError("empty file")
    while at < len(data):
        if len(data) - at < INTEL_HEADER:
            raise MicrocodeError(f"update at offset {at}: truncated header "
                                 f"({len(data) - at} of {INTEL_HEADER} bytes)")
        head = struct.unpack_from("<9I", data, at)
        hdrver, rev, date, sig, _cksum, ldrver, pf, data_size, total = head
        if hdrver != 1 or ldrver != 1:
            raise MicrocodeError(f"update at offset {at}: header version {hdrver} and loader "
                                 f"revision {ldrver}, not 1 and 1 (not Intel microcode)")
        data_size = data_size or 2000
        total = total or 2048
        if data_size % 4 or total < INTEL_HEADER + data_size or total % INTEL_SIZE_UNIT:
            raise MicrocodeError(f"update at offset {at}: data size {data_size} and total "
                                 f"size {total} do not fit (total a multiple of "
                                 f"{INTEL_SIZE_UNIT}, at least header + data)")
        if at + total > len(data):
            raise MicrocodeError(f"update at offset {at}: truncated ({len(data) - at} of "
                                 f"{total} bytes)")
        update = data[at:at + total]
        if words_sum(update[:INTEL_HEADER + data_size]):
            raise MicrocodeError(f"update at offset {at}: checksum of header and data does "
                                 f"not sum to 0")
        extended: tuple[int, ...] = ()
        if total > INTEL_HEADER + data_size:
            extended = check_intel_ext_table(update[INTEL_HEADER + data_size:], head, at)
        blobs.append(Blob(INTEL, (sig, *extended), pf, 0, rev, bcd_date(date), update))
        at += total
    return blobs


def merge_intel(files: Sequence[bytes]) -> bytes:
    """One file holding, per signature and platform, the newest update of all `files`
    (iucode_tool's default --no-downgrade; files checked with parse_intel first)."""
    with tempfile.TemporaryDirectory(prefix="overlay-agent-ucode.") as tmp:
        names = []
        for i, data in enumerate(files):
            path = Path(tmp) / f"{i:04d}.bin"
            path.write_bytes(data)
            names.append(path)
        out = Path(tmp) / "GenuineIntel.bin"
        run(["iucode_tool", "-q", "-tb", "-w", out, *names])
        return out.read_bytes()


# ---------------------------------------------------------------- AMD

@dataclass(frozen=True)
class AmdEquiv:
    signature: int
    equiv_id: int
    raw: bytes


@dataclass(frozen=True)
class AmdContainer:
    equiv: tuple[AmdEquiv, ...]
    patches: tuple[Blob, ...]     # signatures: those of the table mapping to its equiv id


def amd_family(equiv_id: int) -> int:
    return 0xF + (equiv_id >> 12)


def read_amd_container(data: bytes, at: int) -> tuple[AmdContainer, int]:
    """The container at `at` and the offset after it (the next magic or the end)."""
    if len(data) - at < AMD_CONTAINER_HEADER:
        raise MicrocodeError(f"container at offset {at}: truncated header")
    magic, kind, size = struct.unpack_from("<3I", data, at)
    if magic != AMD_MAGIC or kind != 0:
        raise MicrocodeError(f"container at offset {at}: no AMD container magic and "
                             f"equivalence table (not AMD microcode)")
    table_at = at + AMD_CONTAINER_HEADER
    if size < AMD_EQUIV_ENTRY or size % AMD_EQUIV_ENTRY or table_at + size > len(data):
        raise MicrocodeError(f"container at offset {at}: equivalence table of {size} bytes "
                             f"does not fit")
    equiv = []
    for pos in range(table_at, table_at + size, AMD_EQUIV_ENTRY):
        sig, _mask, _cmp, eid = struct.unpack_from("<3IH", data, pos)
        if sig:
            equiv.append(AmdEquiv(sig, eid, data[pos:pos + AMD_EQUIV_ENTRY]))
    pos = table_at + size
    patches = []
    while pos < len(data):
        if len(data) - pos < AMD_SECTION_HEADER:
            raise MicrocodeError(f"section at offset {pos}: truncated header")
        kind, size = struct.unpack_from("<2I", data, pos)
        if kind == AMD_MAGIC:
            break
        if kind != 1 or size < AMD_PATCH_HEADER or pos + AMD_SECTION_HEADER + size > len(data):
            raise MicrocodeError(f"section at offset {pos}: type {kind} of {size} bytes is not "
                                 f"a patch that fits (type 1, at least {AMD_PATCH_HEADER} bytes)")
        date, patch_id = struct.unpack_from("<2I", data, pos + AMD_SECTION_HEADER)
        eid = struct.unpack_from("<H", data, pos + AMD_SECTION_HEADER + 24)[0]
        sigs = tuple(sorted({e.signature for e in equiv if e.equiv_id == eid}))
        end = pos + AMD_SECTION_HEADER + size
        patches.append(Blob(AMD, sigs, 0, amd_family(eid), patch_id, bcd_date(date),
                            data[pos:end]))
        pos = end
    return AmdContainer(tuple(equiv), tuple(patches)), pos


def parse_amd_containers(data: bytes) -> list[AmdContainer]:
    if not data:
        raise MicrocodeError("empty file")
    containers = []
    at = 0
    while at < len(data):
        container, at = read_amd_container(data, at)
        containers.append(container)
    return containers


def parse_amd(data: bytes) -> list[Blob]:
    """Every patch in an AMD microcode file; MicrocodeError on the first bad part."""
    return [p for c in parse_amd_containers(data) for p in c.patches]


def amd_equiv_id(blob: Blob) -> int:
    return int(struct.unpack_from("<H", blob.data, AMD_SECTION_HEADER + 24)[0])


def best_amd_patches(files: Sequence[bytes]) -> dict[int, tuple[AmdEquiv, Blob]]:
    """Signature -> (its table entry, the newest patch for it) over every container of every
    file; on equal revisions the later file wins. Within a container the kernel takes the
    last patch for an id, so that is the one each container offers."""
    best: dict[int, tuple[AmdEquiv, Blob]] = {}
    for data in files:
        for container in parse_amd_containers(data):
            offered = {amd_equiv_id(p): p for p in container.patches}
            for entry in container.equiv:
                patch = offered.get(entry.equiv_id)
                old = best.get(entry.signature)
                if patch is not None and (old is None or patch.revision >= old[1].revision):
                    best[entry.signature] = (entry, patch)
    return best


def write_amd_container(chosen: Sequence[tuple[AmdEquiv, Blob]]) -> bytes:
    table = b"".join(e.raw for e, _ in chosen) + bytes(AMD_EQUIV_ENTRY)   # zero entry ends it
    sections = b"".join(dict.fromkeys(p.data for _, p in chosen))
    return struct.pack("<3I", AMD_MAGIC, 0, len(table)) + table + sections


def merge_amd(files: Sequence[bytes]) -> bytes:
    """One AuthenticAMD.bin holding, per signature, the newest patch of all `files`: a
    container per family (oldest family first, as linux-firmware's files are concatenated),
    a second one where two inputs give one equivalence id different patches."""
    groups: list[tuple[int, list[tuple[AmdEquiv, Blob]]]] = []
    for _sig, (entry, patch) in sorted(best_amd_patches(files).items()):
        for family, members in groups:
            bound = {e.equiv_id: p.data for e, p in members}
            if family == patch.family and bound.get(entry.equiv_id, patch.data) == patch.data:
                members.append((entry, patch))
                break
        else:
            groups.append((patch.family, [(entry, patch)]))
    groups.sort(key=lambda g: g[0])
    return b"".join(write_amd_container(members) for _, members in groups)


# ---------------------------------------------------------------- both

def parse_blobs(vendor: str, data: bytes) -> list[Blob]:
    return parse_intel(data) if vendor == INTEL else parse_amd(data)


def merge(vendor: str, files: Sequence[bytes]) -> bytes:
    """The merged file the early loader reads for `vendor` (inputs already parsed)."""
    return merge_intel(files) if vendor == INTEL else merge_amd(files)
