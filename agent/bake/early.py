"""The early microcode archive: CPU microcode from extensions, where the kernel loads it.

x86 CPUs take microcode from the kernel's early loader, before anything else runs. It
looks for `kernel/x86/microcode/GenuineIntel.bin` or `AuthenticAMD.bin` in the
uncompressed newc archives at the very start of the initramfs (lib/earlycpio.c
find_cpio_data: the first member whose name starts with that path wins); Debian's
stock kernels have no late loading. So microcode an extension ships under
`lib/firmware/intel-ucode` or `amd-ucode` goes into one such archive at the start of the
image, merged with what the image's own early archives held (newest revision per
processor signature). Early-only archives there (members under `kernel/`, dracut's
`early_cpio` marker, our record) are replaced by ours, their other members carried over;
the rest of the image is kept byte for byte. The record `etc/overlay-agent/microcode.json`
says which extension each blob came from, for `inspect`.
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import cpio
from agent.bake import microcode
from agent.bake.firmware import FIRMWARE_DIRS
from agent.bake.microcode import FILE_NAMES, INTEL, UCODE_FOLDERS, VENDORS, Blob, MicrocodeError
from agent.bake.segments import Buffer, SegmentFormat, detect_format, next_data
from agent.errors import AgentError, BuildError, ValidationFailed
from agent.image.decompress import SliceReader
from agent.output import write_bytes_atomically

MICROCODE_DIR = "kernel/x86/microcode"
RECORD = "etc/overlay-agent/microcode.json"
INPUT_LABEL = "initramfs"       # blobs the input's own early archive held
ALIGN = 16                      # Intel's loader hands the update's address to the CPU
_EARLY_NAMES = {".", "early_cpio", "etc", "etc/overlay-agent", RECORD}
MAX_EARLY_BYTES = 64 << 20      # bytes of early members (microcode, record, ...) held in all


def member_name(vendor: str) -> str:
    return f"{MICROCODE_DIR}/{vendor}.bin"


def normal(name: str) -> str:
    return name.strip("/").removeprefix("./")


@dataclass(frozen=True)
class MicrocodeSource:
    label: str        # shown by inspect: the extension's name
    where: str        # named in problems: the extension's source
    root: Path        # its rootfs


@dataclass(frozen=True)
class MicrocodeFile:
    vendor: str
    label: str
    path: str         # inside the extension's rootfs
    data: bytes


@dataclass(frozen=True)
class EarlyPlan:
    """What the early archive will hold, every input already parsed."""

    inputs: dict[str, VendorInputs]
    carried: tuple[cpio.Entry, ...]      # other members of the replaced early archives
    rest: int                            # offset of the input kept byte for byte


@dataclass(frozen=True)
class VendorInputs:
    files: list[tuple[bytes, dict[str, list[str]]]]   # (file, sha256 of each blob -> labels)
    merge: bool          # False: only the image's own file, kept as it is


# ---------------------------------------------------------------- load + validate

def real_folder(root: Path, rel: str) -> Path | None:
    """`root/rel` when it and every folder on the way are real folders (no symlink to follow
    out of the extension)."""
    path = root
    for part in rel.split("/"):
        path = path / part
        if path.is_symlink() or not path.is_dir():
            return None
    return path


def find_files(source: MicrocodeSource) -> list[tuple[str, str, Path]]:
    """(vendor, path inside the rootfs, file) of every microcode file an extension ships."""
    found = []
    for vendor, folder in UCODE_FOLDERS.items():
        for base in FIRMWARE_DIRS:
            top = real_folder(source.root, f"{base}/{folder}")
            if top is None:
                continue
            for path in sorted(top.iterdir()):
                if FILE_NAMES[vendor].fullmatch(path.name) and path.is_file() \
                        and not path.is_symlink():
                    found.append((vendor, f"{base}/{folder}/{path.name}", path))
    return found


def load_microcode(sources: Sequence[MicrocodeSource]) -> tuple[list[MicrocodeFile], list[str]]:
    """Every microcode file of every source, each parsed; every problem as
    `SOURCE: PATH: reason`."""
    files: list[MicrocodeFile] = []
    problems: list[str] = []
    for source in sources:
        for vendor, rel, path in find_files(source):
            try:
                data = path.read_bytes()
                microcode.parse_blobs(vendor, data)
            except OSError as exc:
                problems.append(f"{source.where}: {rel}: cannot read: {exc.strerror}")
                continue
            except MicrocodeError as exc:
                problems.append(f"{source.where}: {rel}: malformed {vendor} microcode: {exc}")
                continue
            files.append(MicrocodeFile(vendor, source.label, rel, data))
    return files, problems


def is_early_name(name: str) -> bool:
    n = normal(name)
    return n in _EARLY_NAMES or n == "kernel" or n.startswith("kernel/")


def keep_early() -> cpio.Keep:
    """A cpio.Keep holding the bytes of early members only (all an early-only archive holds,
    so all plan_early reads or carries), at most MAX_EARLY_BYTES in all: the rest of a
    leading archive, however large, is only hashed as it streams by."""
    budget = [MAX_EARLY_BYTES]

    def keep(name: str, mode: int, size: int) -> bool:
        if not is_early_name(name):
            return False
        budget[0] -= size
        if budget[0] < 0:
            raise BuildError(f"cpio: member {name!r} ({size} bytes) takes the early members "
                             f"over {MAX_EARLY_BYTES} bytes")
        return True

    return keep


def leading_archives(blob: Buffer, where: str) -> list[tuple[int, int, list[cpio.Entry]]]:
    """(start, end, members) of the uncompressed archives the image starts with; the bytes
    of early members only (keep_early)."""
    found: list[tuple[int, int, list[cpio.Entry]]] = []
    pos = 0
    keep = keep_early()
    while (start := next_data(blob, pos)) is not None \
            and detect_format(blob, start) is SegmentFormat.CPIO:
        reader = SliceReader(blob, start, len(blob) - start)
        try:
            entries, length = cpio.read_archive(reader.read, start, keep)
        except BuildError as exc:
            raise BuildError(f"{where}: early archive at offset {start}: {exc}") from None
        pos = start + length
        found.append((start, pos, entries))
    return found


def is_early_only(entries: Sequence[cpio.Entry]) -> bool:
    return all(is_early_name(e.name) for e in entries)


def printable(text: str) -> str:
    """A label from an image, safe to print: control characters escaped."""
    return text if text.isprintable() else text.encode("unicode_escape").decode()


def read_record(entries: Sequence[cpio.Entry]) -> dict[str, dict[str, list[str]]]:
    """vendor -> sha256 -> labels from an earlier record; what is not of that shape (or not
    JSON) is ignored: the record only names sources, the blobs are read from the files."""
    found: dict[str, dict[str, list[str]]] = {}
    for e in entries:
        if normal(e.name) != RECORD or not stat.S_ISREG(e.mode):
            continue
        try:
            doc = json.loads(e.content())
        except (ValueError, RecursionError):
            return found
        for vendor in VENDORS:
            table = doc.get(f"{vendor}.bin") if isinstance(doc, dict) else None
            if isinstance(table, dict):
                found[vendor] = {sha: [printable(str(label)) for label in labels]
                                 for sha, labels in table.items() if isinstance(labels, list)}
        return found
    return found


def plan_early(blob: Buffer, files: Sequence[MicrocodeFile],
               where: str) -> tuple[EarlyPlan | None, list[str]]:
    """The early archive for `files` on the image `blob`; None when no file ships microcode.
    Problems: the image's own early microcode malformed."""
    if not files:
        return None, []
    try:
        archives = leading_archives(blob, where)
    except BuildError as exc:
        return None, [str(exc)]
    replaced = 0
    while replaced < len(archives) and is_early_only(archives[replaced][2]):
        replaced += 1
    entries = [e for _, _, members in archives for e in members]
    record = read_record(entries)
    existing: dict[str, cpio.Entry] = {}
    for e in entries:
        for vendor in VENDORS:
            if normal(e.name) == member_name(vendor) and stat.S_ISREG(e.mode):
                existing.setdefault(vendor, e)
    inputs: dict[str, VendorInputs] = {}
    problems = []
    for vendor in VENDORS:
        own = [f for f in files if f.vendor == vendor]
        old = existing.get(vendor)
        if not own and old is None:
            continue
        inputs[vendor] = VendorInputs([], bool(own))
        if old is not None:
            try:
                blobs = microcode.parse_blobs(vendor, old.content())
            except MicrocodeError as exc:
                problems.append(f"{where}: {member_name(vendor)}: malformed {vendor} "
                                f"microcode: {exc}")
                continue
            labels = record.get(vendor, {})
            inputs[vendor].files.append((old.content(), {
                sha: list(labels.get(sha, [INPUT_LABEL])) for sha in map(blob_sha, blobs)}))
        for f in own:
            inputs[vendor].files.append((f.data, {
                blob_sha(b): [f.label] for b in microcode.parse_blobs(vendor, f.data)}))
    # folders are made anew (iucode_tool's alignment folder would misalign ours)
    skip = {member_name(v) for v in VENDORS} | {RECORD}
    carried = tuple(cpio.Entry(normal(e.name), e.mode, e.data, e.rdev, e.mtime, e.uid, e.gid)
                    for _, _, members in archives[:replaced] for e in members
                    if normal(e.name) not in skip and not stat.S_ISDIR(e.mode))
    rest = archives[replaced - 1][1] if replaced else 0
    return EarlyPlan(inputs, carried, rest), problems


def blob_sha(blob: Blob) -> str:
    return hashlib.sha256(blob.data).hexdigest()


# ---------------------------------------------------------------- build

def provenance(vendor: str, merged: bytes,
               inputs: Sequence[tuple[bytes, dict[str, list[str]]]]) -> dict[str, list[str]]:
    """sha256 -> labels of the inputs holding that very blob, in input order."""
    out: dict[str, list[str]] = {}
    for blob in microcode.parse_blobs(vendor, merged):
        sha = blob_sha(blob)
        labels = [lab for _, shas in inputs for lab in shas.get(sha, [])]
        out[sha] = list(dict.fromkeys(labels))
    return out


def align_intel(entries: list[cpio.Entry], mtime: int) -> list[cpio.Entry]:
    """A padding folder before GenuineIntel.bin so that its data starts on ALIGN bytes
    (iucode_tool --write-earlyfw does the same)."""
    out: list[cpio.Entry] = []
    pos = 0
    for e in entries:
        if e.name == member_name(INTEL):
            shift = -(pos + cpio.header_size(e.name)) % ALIGN
            pad = f"{MICROCODE_DIR}/.align"
            while shift and cpio.header_size(pad) % ALIGN != shift:
                pad += "0"
            if shift:
                out.append(cpio.directory(pad, mtime=mtime))
                pos += cpio.header_size(pad)
        out.append(e)
        size = len(e.content()) if stat.S_ISREG(e.mode) or stat.S_ISLNK(e.mode) else 0
        pos += cpio.header_size(e.name) + size + (-size % 4)
    return out


def early_entries(plan: EarlyPlan, mtime: int) -> list[cpio.Entry]:
    """Members of the early archive: merged microcode, carried members, the record."""
    entries = list(plan.carried)
    record: dict[str, object] = {"version": 1}
    for vendor, inputs in plan.inputs.items():
        files = [data for data, _ in inputs.files]
        merged = microcode.merge(vendor, files) if inputs.merge else files[0]
        entries.append(cpio.regular(member_name(vendor), merged, 0o644, mtime))
        record[f"{vendor}.bin"] = provenance(vendor, merged, inputs.files)
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    entries.append(cpio.regular(RECORD, text.encode(), 0o644, mtime))
    return align_intel(cpio.with_parents(entries, mtime), mtime)


def early_head(plan: EarlyPlan, mtime: int) -> bytes:
    """The early archive and the zeros that put the input's bytes from `plan.rest` on at
    the same offset modulo 4 (an archive inside must stay 4-byte aligned)."""
    out = io.BytesIO()
    size = cpio.write(early_entries(plan, mtime), out)
    out.write(b"\0" * ((plan.rest - size) % 4))
    return out.getvalue()


def with_early(plan: EarlyPlan, blob: bytes, mtime: int) -> bytes:
    """The early archive, then `blob` from `plan.rest` on (early_head)."""
    return b"".join((early_head(plan, mtime), memoryview(blob)[plan.rest:]))


def add_microcode(initramfs: Path, sources: Sequence[MicrocodeSource], mtime: int) -> bool:
    """Merge the microcode `sources` ship into the early archive of `initramfs` (a whole
    image, or early archives alone as initramfs-tools collects them), rewriting it
    atomically; False (nothing written) when they ship none. ValidationFailed lists every
    problem."""
    files, problems = load_microcode(sources)
    try:
        blob = initramfs.read_bytes()
    except OSError as exc:
        raise BuildError(f"{initramfs}: cannot read: {exc.strerror}") from None
    plan, found = plan_early(blob, files, str(initramfs))
    if problems + found:
        raise ValidationFailed(problems + found)
    if plan is None:
        return False
    write_bytes_atomically(initramfs, with_early(plan, blob, mtime))
    return True


# ---------------------------------------------------------------- inspect

@dataclass(frozen=True)
class EarlyMicrocode:
    """One vendor file the early loader would take, as inspect shows it."""

    vendor: str
    archive: int                  # index of the leading archive holding it
    blobs: tuple[Blob, ...]
    sources: tuple[tuple[str, ...], ...]   # per blob: labels from the record (or none)
    problem: str = ""


def read_early_microcode(archives: Sequence[Sequence[cpio.Entry]]) -> list[EarlyMicrocode]:
    """Per vendor, the file the loader takes from the leading uncompressed archives."""
    entries = [(i, e) for i, members in enumerate(archives) for e in members]
    record = read_record([e for _, e in entries])
    found = []
    for vendor in VENDORS:
        hit = next(((i, e) for i, e in entries
                    if normal(e.name) == member_name(vendor) and stat.S_ISREG(e.mode)), None)
        if hit is None:
            continue
        try:
            blobs = microcode.parse_blobs(vendor, hit[1].content())
        except AgentError as exc:
            found.append(EarlyMicrocode(vendor, hit[0], (), (), str(exc)))
            continue
        labels = record.get(vendor, {})
        found.append(EarlyMicrocode(vendor, hit[0], tuple(blobs), tuple(
            tuple(labels.get(blob_sha(b), [])) for b in blobs)))
    return found
