"""The boot status file, `/run/overlay-agent/status.json`: written once at boot
(atomically), read by `get extensions` and the metrics in the booted system.

One home for its shape: the documents the boot path builds, the atomic writer, and the
reader that checks a file and returns frozen records. Light enough for PID 1 (see the
boot-path import rule in agent/boot/__init__.py).
"""

from __future__ import annotations

import os
import time

from agent import lightjson
from agent.errors import StatusError
from agent.listfile import layer_id
from agent.values import Value

STATUS_PATH = "/run/overlay-agent/status.json"  # in the booted system (/run moves along)
STATUS_SCHEMA = 1
ACTIVE, FAILED, SKIPPED = "active", "failed", "skipped"
PHASES = (ACTIVE, FAILED, SKIPPED)
API_NONE = "none"          # no layer active: the bare root
API_MOUNT = "mount"        # mount(2), the option string fits a page
API_FSCONFIG = "fsconfig"  # fsopen/fsconfig lowerdir+ (Linux 6.8+)
OVERLAY_APIS = (API_NONE, API_MOUNT, API_FSCONFIG)
# the check a layer went through at boot
CHECK_VERITY = "verity"    # dm-verity: each block checked against the hash tree when read
CHECK_SHA256 = "sha256"    # the whole image hashed before the mount
CHECK_NONE = "none"        # no check (a Talos-written list, or the layer never got that far)
CHECKS = (CHECK_VERITY, CHECK_SHA256, CHECK_NONE)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------- writing (boot path)

def extension_doc(*, index: int, image: str, kind: str, name: str, version: str, phase: str,
                  reason: str, author: str, description: str,
                  compatibility: dict[str, object], created: str,
                  updated: str, check: str = CHECK_NONE, device: str = "") -> dict[str, object]:
    """One layer's record; `id` is the image name without .sqsh, as Talos shows it;
    `device` names the layer's dm-verity device (check verity), read for corruption."""
    return {"index": index, "id": layer_id(image),
            "image": image, "kind": kind, "name": name, "version": version, "phase": phase,
            "reason": reason, "author": author, "description": description,
            "compatibility": compatibility, "created": created, "updated": updated,
            "check": check, "device": device}


def boot_doc(*, extensions: list[dict[str, object]], root: str, overlay: str,
             notes: list[str], disabled: bool, strict: bool, list_path: str, activated: str,
             duration_ms: float) -> dict[str, object]:
    return {"schema": STATUS_SCHEMA, "root": root, "overlay": overlay, "notes": notes,
            "disabled": disabled, "strict": strict, "list_path": list_path,
            "activated": activated, "duration_ms": round(duration_ms, 3),
            "extensions": extensions}


def write_json_atomic(path: str, doc: dict[str, object]) -> None:
    """Write to a temp file in the same folder, fsync, rename: never half-written."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, mode=0o755, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        data = memoryview(lightjson.dumps(doc).encode() + b"\n")
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


# ---------------------------------------------------------------- reading (runtime)

class ExtensionStatus(Value):
    """One layer as the boot recorded it."""

    __slots__ = ("author", "check", "compatibility", "created", "description", "device", "id",
                 "image", "index", "kind", "name", "phase", "reason", "updated", "version")
    index: int            # position in the list file (0 = lowest layer)
    id: str               # image name without .sqsh
    image: str
    kind: str
    name: str
    version: str
    phase: str            # one of PHASES
    reason: str
    author: str
    description: str
    compatibility: dict[str, object]
    created: str          # ISO 8601 UTC, e.g. 2022-02-10T18:25:04Z
    updated: str
    check: str            # one of CHECKS
    device: str           # the dm-verity device's name, or ""

    def __init__(self, *, index: int, id: str, image: str, kind: str, name: str,
                 version: str, phase: str, reason: str = "", author: str = "",
                 description: str = "", compatibility: dict[str, object] | None = None,
                 created: str = "", updated: str = "", check: str = CHECK_NONE,
                 device: str = "") -> None:
        self._set(index=index, id=id, image=image, kind=kind, name=name, version=version,
                  phase=phase, reason=reason, author=author, description=description,
                  compatibility=dict(compatibility or {}), created=created, updated=updated,
                  check=check, device=device)


class BootStatus(Value):
    """The whole status file."""

    __slots__ = ("activated", "disabled", "duration_ms", "extensions", "list_path", "notes",
                 "overlay", "root", "strict")
    extensions: tuple[ExtensionStatus, ...]
    root: str                 # the directory switched into
    overlay: str              # one of OVERLAY_APIS
    notes: tuple[str, ...]    # problems not tied to one layer (list file, overlay, bind)
    disabled: bool
    strict: bool
    list_path: str
    activated: str
    duration_ms: float

    def __init__(self, *, extensions: tuple[ExtensionStatus, ...] = (), root: str = "",
                 overlay: str = API_NONE, notes: tuple[str, ...] = (), disabled: bool = False,
                 strict: bool = False, list_path: str = "", activated: str = "",
                 duration_ms: float = 0.0) -> None:
        self._set(extensions=tuple(extensions), root=root, overlay=overlay, notes=tuple(notes),
                  disabled=disabled, strict=strict, list_path=list_path, activated=activated,
                  duration_ms=duration_ms)


_STR_FIELDS = ("id", "image", "kind", "name", "version", "reason", "author", "description",
               "created", "updated")


def check_extension(raw: object, where: str) -> list[str]:
    """Every problem of one extension record (pure)."""
    if not isinstance(raw, dict):
        return [f"{where}: not an object"]
    problems = [f"{where}: {key} is not a string" for key in _STR_FIELDS
                if not isinstance(raw.get(key), str)]
    if not isinstance(raw.get("index"), int):
        problems.append(f"{where}: index is not an integer")
    if raw.get("phase") not in PHASES:
        problems.append(f"{where}: unknown phase {raw.get('phase')!r}")
    if not isinstance(raw.get("compatibility"), dict):
        problems.append(f"{where}: compatibility is not an object")
    # check and device came later: a status file without them reads as no check
    if raw.get("check", CHECK_NONE) not in CHECKS:
        problems.append(f"{where}: unknown check {raw.get('check')!r}")
    if not isinstance(raw.get("device", ""), str):
        problems.append(f"{where}: device is not a string")
    return problems


def check_status(doc: object, where: str) -> list[str]:
    """Every problem of a parsed status document (pure)."""
    if not isinstance(doc, dict):
        return [f"{where}: top level is not an object"]
    if doc.get("schema") != STATUS_SCHEMA:
        return [f"{where}: unknown status schema {doc.get('schema')!r}"]
    problems = []
    if doc.get("overlay") not in OVERLAY_APIS:
        problems.append(f"{where}: unknown overlay {doc.get('overlay')!r}")
    if not isinstance(doc.get("notes"), list):
        problems.append(f"{where}: notes is not a list")
    exts = doc.get("extensions")
    if not isinstance(exts, list):
        return [*problems, f"{where}: extensions is not a list"]
    for i, raw in enumerate(exts):
        problems += check_extension(raw, f"{where}: extensions[{i}]")
    return problems


def status_from_doc(doc: dict[str, object]) -> BootStatus:
    """Build from a document that check_status passed."""
    exts: list[dict[str, object]] = doc["extensions"]  # type: ignore[assignment]
    notes: list[object] = doc["notes"]  # type: ignore[assignment]
    duration = doc.get("duration_ms", 0.0)
    return BootStatus(
        extensions=tuple(ExtensionStatus(
            **{key: e[key] for key in (  # type: ignore[arg-type]
                "index", "phase", "compatibility", *_STR_FIELDS)},
            check=str(e.get("check", CHECK_NONE)), device=str(e.get("device", "")))
            for e in exts),
        root=str(doc.get("root", "")), overlay=str(doc["overlay"]),
        notes=tuple(str(n) for n in notes), disabled=bool(doc.get("disabled")),
        strict=bool(doc.get("strict")), list_path=str(doc.get("list_path", "")),
        activated=str(doc.get("activated", "")),
        duration_ms=float(duration) if isinstance(duration, (int, float)) else 0.0)


def read_status(path: str = STATUS_PATH) -> BootStatus:
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
        doc = lightjson.loads(text)
    except ValueError as exc:
        raise StatusError(f"{path}: not valid JSON ({exc})") from None
    problems = check_status(doc, path)
    if problems:
        raise StatusError("; ".join(problems))
    return status_from_doc(doc)  # type: ignore[arg-type]
