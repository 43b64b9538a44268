"""What activation did, per layer: written once at boot (atomically), read by `get extensions`.

The boot path writes through agent.statusfile (no dataclasses, enum or json there);
this module is the typed view for the booted system.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent import statusfile
from agent.errors import StatusError
from agent.statusfile import STATUS_SCHEMA


class Phase(enum.Enum):
    ACTIVE = statusfile.ACTIVE
    FAILED = statusfile.FAILED
    SKIPPED = statusfile.SKIPPED


class OverlayApi(enum.Enum):
    NONE = statusfile.API_NONE          # no layer active: the bare root
    MOUNT = statusfile.API_MOUNT        # mount(2), the option string fits a page
    FSCONFIG = statusfile.API_FSCONFIG  # fsopen/fsconfig lowerdir+ (Linux 6.8+)


@dataclass(frozen=True)
class ExtensionStatus:
    index: int            # position in the list file (0 = lowest layer)
    id: str               # image name without .sqsh
    image: str
    kind: str
    name: str
    version: str
    phase: Phase
    reason: str = ""
    author: str = ""
    description: str = ""
    compatibility: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""     # ISO 8601 UTC, e.g. 2022-02-10T18:25:04Z
    updated: str = ""


@dataclass(frozen=True)
class BootStatus:
    extensions: tuple[ExtensionStatus, ...] = ()
    root: str = ""                 # the directory switched into
    overlay: OverlayApi = OverlayApi.NONE
    notes: tuple[str, ...] = ()    # problems not tied to one layer (list file, overlay, bind)
    disabled: bool = False
    strict: bool = False
    list_path: str = ""
    activated: str = ""
    duration_ms: float = 0.0


def status_to_dict(status: BootStatus) -> dict[str, Any]:
    return statusfile.boot_doc(
        extensions=[statusfile.extension_doc(
            index=e.index, image=e.image, kind=e.kind, name=e.name, version=e.version,
            phase=e.phase.value, reason=e.reason, author=e.author, description=e.description,
            compatibility=dict(e.compatibility), created=e.created, updated=e.updated)
            for e in status.extensions],
        root=status.root, overlay=status.overlay.value, notes=list(status.notes),
        disabled=status.disabled, strict=status.strict, list_path=status.list_path,
        activated=status.activated, duration_ms=status.duration_ms)


def write_status(path: str, status: BootStatus) -> None:
    statusfile.write_json_atomic(path, status_to_dict(status))


_STR_FIELDS = ("id", "image", "kind", "name", "version", "reason", "author", "description",
               "created", "updated")


def check_extension(raw: Any, where: str) -> list[str]:
    """Every problem of one extension record (pure)."""
    if not isinstance(raw, Mapping):
        return [f"{where}: not an object"]
    problems = [f"{where}: {key} is not a string" for key in _STR_FIELDS
                if not isinstance(raw.get(key), str)]
    if not isinstance(raw.get("index"), int):
        problems.append(f"{where}: index is not an integer")
    if raw.get("phase") not in {p.value for p in Phase}:
        problems.append(f"{where}: unknown phase {raw.get('phase')!r}")
    if not isinstance(raw.get("compatibility"), Mapping):
        problems.append(f"{where}: compatibility is not an object")
    return problems


def check_status(doc: Any, where: str) -> list[str]:
    """Every problem of a parsed status document (pure)."""
    if not isinstance(doc, Mapping):
        return [f"{where}: top level is not an object"]
    if doc.get("schema") != STATUS_SCHEMA:
        return [f"{where}: unknown status schema {doc.get('schema')!r}"]
    problems = []
    if doc.get("overlay") not in {a.value for a in OverlayApi}:
        problems.append(f"{where}: unknown overlay {doc.get('overlay')!r}")
    if not isinstance(doc.get("notes"), list):
        problems.append(f"{where}: notes is not a list")
    exts = doc.get("extensions")
    if not isinstance(exts, list):
        return [*problems, f"{where}: extensions is not a list"]
    for i, raw in enumerate(exts):
        problems += check_extension(raw, f"{where}: extensions[{i}]")
    return problems


def status_from_dict(doc: Mapping[str, Any]) -> BootStatus:
    """Build from a document that check_status passed."""
    return BootStatus(
        extensions=tuple(ExtensionStatus(
            index=e["index"], id=e["id"], image=e["image"], kind=e["kind"], name=e["name"],
            version=e["version"], phase=Phase(e["phase"]), reason=e["reason"],
            author=e["author"], description=e["description"],
            compatibility=dict(e["compatibility"]), created=e["created"],
            updated=e["updated"]) for e in doc["extensions"]),
        root=str(doc.get("root", "")), overlay=OverlayApi(doc["overlay"]),
        notes=tuple(str(n) for n in doc["notes"]), disabled=bool(doc.get("disabled")),
        strict=bool(doc.get("strict")), list_path=str(doc.get("list_path", "")),
        activated=str(doc.get("activated", "")),
        duration_ms=float(doc.get("duration_ms", 0.0)))


def read_status(path: str) -> BootStatus:
    """Load, validate (all problems at once), build; StatusError names the file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise StatusError(f"{path}: not found: this system did not boot through "
                          "overlay-agent") from None
    except OSError as exc:
        raise StatusError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise StatusError(f"{path}: not valid JSON ({exc})") from None
    problems = check_status(doc, path)
    if problems:
        raise StatusError("; ".join(problems))
    return status_from_dict(doc)
