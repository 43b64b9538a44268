"""`overlay-agent inspect`: the segments of an initramfs, its early microcode and the
extensions baked into it.

The list file and images are taken from the tree the kernel would unpack (later
members replace earlier ones), and each image's bytes are checked against the list.
The microcode is what the kernel's early loader would find in the leading uncompressed
archives, blob by blob, with the extension each came from (agent.bake.early's record).
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import cpio, listfile
from agent.bake.early import (
    MAX_EARLY_BYTES,
    RECORD,
    EarlyMicrocode,
    member_name,
    read_early_microcode,
)
from agent.bake.microcode import VENDORS
from agent.bake.segments import Segment, SegmentFormat, keep_links, merged_members, split_segments
from agent.errors import SourceError
from agent.escape import escape
from agent.files import FileBuffer, open_buffer


class ImageState(enum.Enum):
    OK = "ok"
    MISMATCH = "mismatch"     # size or sha256 differ from the list
    MISSING = "missing"       # listed, not in the archive
    UNCHECKED = "unchecked"   # a Talos-written list carries no sha256
    STORE = "store"           # kept in a store on disk, not in the initramfs


@dataclass(frozen=True)
class LayerReport:
    index: int
    layer: listfile.Layer
    actual_size: int          # -1 when missing
    actual_sha256: str
    state: ImageState


@dataclass(frozen=True)
class InitramfsReport:
    path: str
    size: int
    segments: tuple[Segment, ...]
    has_list: bool
    layers: tuple[LayerReport, ...]
    microcode: tuple[EarlyMicrocode, ...] = ()

    @property
    def all_match(self) -> bool:
        return all(r.state in (ImageState.OK, ImageState.UNCHECKED, ImageState.STORE)
                   for r in self.layers)


def check_image(index: int, layer: listfile.Layer, entry: cpio.Entry | None) -> LayerReport:
    """An image member against its list entry (its bytes were hashed as they streamed by)."""
    if entry is None or not stat.S_ISREG(entry.mode):
        return LayerReport(index, layer, -1, "",
                           ImageState.STORE if layer.store else ImageState.MISSING)
    data = entry.content()
    size = entry.size if entry.size >= 0 else len(data)
    digest = entry.sha256 or hashlib.sha256(data).hexdigest()
    if not layer.sha256:
        state = ImageState.UNCHECKED if layer.size in (-1, size) else ImageState.MISMATCH
    elif layer.sha256 == digest and layer.size in (-1, size):
        state = ImageState.OK
    else:
        state = ImageState.MISMATCH
    return LayerReport(index, layer, size, digest, state)


def keep_list_and_links() -> cpio.Keep:
    """Hold the bytes of symlinks, would-be list files and the early microcode files only
    (bounded in all): every other member is hashed as it streams by, whatever an archive
    unpacks to."""
    budget = [4 * listfile.MAX_LIST_BYTES + MAX_EARLY_BYTES]
    name = listfile.LIST_PATH.rsplit("/", 1)[-1]
    early = {RECORD, *(member_name(v) for v in VENDORS)}

    def keep(member: str, mode: int, size: int) -> bool:
        wanted = keep_links(member, mode, size) or (stat.S_ISREG(mode) and (
            (member.endswith(name) and size <= listfile.MAX_LIST_BYTES)
            or member.lstrip("./") in early))
        if wanted and size <= budget[0]:
            budget[0] -= size
            return True
        return False

    return keep


def open_input(path: Path) -> FileBuffer:
    """The initramfs, read slice by slice (never mapped: an address-space limit counts a
    mapping whole): a regular file only, never a fifo to block on."""
    try:
        return open_buffer(str(path), -1)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror}") from None


def inspect_initramfs(path: Path) -> InitramfsReport:
    """Read every segment of `path` and check the baked extensions against the list."""
    blob = open_input(path)
    size = len(blob)
    try:
        segments = split_segments(blob, str(path), keep_list_and_links())
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror}") from None
    finally:
        blob.close()
    leading = itertools.takewhile(lambda s: s.format is SegmentFormat.CPIO, segments)
    microcode = tuple(read_early_microcode([s.entries for s in leading]))
    tree = merged_members(segments)
    listed = tree.get(listfile.LIST_PATH.strip("/"))
    if listed is None or not stat.S_ISREG(listed.mode):
        return InitramfsReport(str(path), size, tuple(segments), False, (), microcode)
    where = f"{path}: {listfile.LIST_PATH}"
    if listed.sha256:   # declined by keep: too large, or over the budget
        raise SourceError(f"{where}: {listed.size} bytes, over the limit of "
                          f"{listfile.MAX_LIST_BYTES}")
    layers = listfile.read_list(listfile.decode_list(listed.content(), where), where)
    images = listfile.IMAGES_DIR.strip("/")
    reports = [check_image(i, layer, tree.get(f"{images}/{layer.image}"))
               for i, layer in enumerate(layers)]
    return InitramfsReport(str(path), size, tuple(segments), True, tuple(reports),
                           microcode)


def microcode_dict(m: EarlyMicrocode) -> dict[str, Any]:
    return {"vendor": m.vendor, "member": member_name(m.vendor), "segment": m.archive,
            "blobs": len(m.blobs), "problem": m.problem,
            "updates": [{"signatures": list(b.signatures), "pf_mask": b.platforms,
                         "family": b.family, "date": b.date, "revision": b.revision,
                         "size": len(b.data), "from": list(src)}
                        for b, src in zip(m.blobs, m.sources, strict=True)]}


def report_dict(report: InitramfsReport) -> dict[str, Any]:
    """Plain data for `-o json|yaml` (stable key order)."""
    return {
        "initramfs": report.path,
        "size": report.size,
        "segments": [{"index": s.index, "offset": s.offset, "length": s.length,
                      "format": s.format.value, "unpacked_size": s.unpacked_size,
                      "members": len(s.entries)} for s in report.segments],
        "early_microcode": [microcode_dict(m) for m in report.microcode],
        "list_file": report.has_list,
        "extensions": [{"index": r.index, "id": r.layer.id, "name": r.layer.metadata.name,
                        "version": r.layer.metadata.version, "kind": r.layer.kind,
                        "image": r.layer.image, "size": r.layer.size,
                        "sha256": r.layer.sha256, "actual_size": r.actual_size,
                        "actual_sha256": r.actual_sha256, "image_matches": r.state.value}
                       for r in report.layers],
    }


def format_table(rows: list[list[str]]) -> str:
    rows = [[escape(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows) + "\n"


def render_microcode(found: tuple[EarlyMicrocode, ...]) -> str:
    """`iucode_tool -l`-like lines per vendor file, each blob with where it came from."""
    out = ""
    for m in found:
        out += f"\nearly microcode, segment {m.archive}: {member_name(m.vendor)}: "
        if m.problem:
            out += f"unreadable: {m.problem}\n"
            continue
        out += f"{len(m.blobs)} blob(s)\n"
        for i, (blob, src) in enumerate(zip(m.blobs, m.sources, strict=True), start=1):
            out += f"  {i:03d}: {blob.describe()}  from {', '.join(src) or '-'}\n"
    return out


def render_report(report: InitramfsReport) -> str:
    seg_rows = [["SEGMENT", "OFFSET", "LENGTH", "FORMAT", "UNPACKED", "MEMBERS"]]
    seg_rows += [[str(s.index), str(s.offset), str(s.length), s.format.value,
                  str(s.unpacked_size), str(len(s.entries))] for s in report.segments]
    out = f"{escape(report.path)}: {report.size} bytes, {len(report.segments)} segment(s)\n"
    out += format_table(seg_rows) + render_microcode(report.microcode)
    if not report.has_list:
        return out + f"\nno {listfile.LIST_PATH}: no extensions baked in\n"
    ext_rows = [["INDEX", "NAME", "VERSION", "IMAGE", "SIZE", "SHA256", "MATCH"]]
    ext_rows += [[f"{r.index:03d}", r.layer.metadata.name, r.layer.metadata.version,
                  r.layer.image, str(r.layer.size), r.layer.sha256[:12] or "-", r.state.value]
                 for r in report.layers]
    return out + "\n" + format_table(ext_rows)
