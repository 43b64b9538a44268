"""`overlay-agent inspect`: the segments of an initramfs and the extensions baked into it.

The list file and images are taken from the tree the kernel would unpack (later
members replace earlier ones), and each image's bytes are checked against the list.
"""

from __future__ import annotations

import enum
import hashlib
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import listfile
from agent.bake.segments import Segment, merged_members, split_segments
from agent.errors import SourceError


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

    @property
    def all_match(self) -> bool:
        return all(r.state in (ImageState.OK, ImageState.UNCHECKED, ImageState.STORE)
                   for r in self.layers)


def check_image(index: int, layer: listfile.Layer, data: bytes | None) -> LayerReport:
    if data is None:
        return LayerReport(index, layer, -1, "",
                           ImageState.STORE if layer.store else ImageState.MISSING)
    digest = hashlib.sha256(data).hexdigest()
    if not layer.sha256:
        state = ImageState.UNCHECKED if layer.size in (-1, len(data)) else ImageState.MISMATCH
    elif layer.sha256 == digest and layer.size in (-1, len(data)):
        state = ImageState.OK
    else:
        state = ImageState.MISMATCH
    return LayerReport(index, layer, len(data), digest, state)


def inspect_initramfs(path: Path) -> InitramfsReport:
    """Read every segment of `path` and check the baked extensions against the list."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror}") from None
    segments = split_segments(blob, str(path))
    tree = merged_members(segments)
    listed = tree.get(listfile.LIST_PATH.strip("/"))
    if listed is None or not stat.S_ISREG(listed.mode):
        return InitramfsReport(str(path), len(blob), tuple(segments), False, ())
    where = f"{path}: {listfile.LIST_PATH}"
    layers = listfile.read_list(listed.content().decode(errors="replace"), where)
    images = listfile.IMAGES_DIR.strip("/")
    reports = []
    for i, layer in enumerate(layers):
        entry = tree.get(f"{images}/{layer.image}")
        data = entry.content() if entry is not None and stat.S_ISREG(entry.mode) else None
        reports.append(check_image(i, layer, data))
    return InitramfsReport(str(path), len(blob), tuple(segments), True, tuple(reports))


def report_dict(report: InitramfsReport) -> dict[str, Any]:
    """Plain data for `-o json|yaml` (stable key order)."""
    return {
        "initramfs": report.path,
        "size": report.size,
        "segments": [{"index": s.index, "offset": s.offset, "length": s.length,
                      "format": s.format.value, "unpacked_size": s.unpacked_size,
                      "members": len(s.entries)} for s in report.segments],
        "list_file": report.has_list,
        "extensions": [{"index": r.index, "id": r.layer.id, "name": r.layer.metadata.name,
                        "version": r.layer.metadata.version, "kind": r.layer.kind,
                        "image": r.layer.image, "size": r.layer.size,
                        "sha256": r.layer.sha256, "actual_size": r.actual_size,
                        "actual_sha256": r.actual_sha256, "image_matches": r.state.value}
                       for r in report.layers],
    }


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows) + "\n"


def render_table(report: InitramfsReport) -> str:
    seg_rows = [["SEGMENT", "OFFSET", "LENGTH", "FORMAT", "UNPACKED", "MEMBERS"]]
    seg_rows += [[str(s.index), str(s.offset), str(s.length), s.format.value,
                  str(s.unpacked_size), str(len(s.entries))] for s in report.segments]
    out = f"{report.path}: {report.size} bytes, {len(report.segments)} segment(s)\n"
    out += format_table(seg_rows)
    if not report.has_list:
        return out + f"\nno {listfile.LIST_PATH}: no extensions baked in\n"
    ext_rows = [["INDEX", "NAME", "VERSION", "IMAGE", "SIZE", "SHA256", "MATCH"]]
    ext_rows += [[f"{r.index:03d}", r.layer.metadata.name, r.layer.metadata.version,
                  r.layer.image, str(r.layer.size), r.layer.sha256[:12] or "-", r.state.value]
                 for r in report.layers]
    return out + "\n" + format_table(ext_rows)
