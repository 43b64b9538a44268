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
from agent.files import read_regular
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
ROOT_READ_ONLY = "read-only"    # no upper: the immutable root (also a bare root)
ROOT_VOLATILE = "volatile"      # upper on tmpfs: writes are gone at the next boot
ROOT_PERSISTENT = "persistent"  # upper on a device: writes are kept
ROOT_MODES = (ROOT_READ_ONLY, ROOT_VOLATILE, ROOT_PERSISTENT)
# the check a layer went through at boot
CHECK_VERITY = "verity"    # dm-verity: each block checked against the hash tree when read
CHECK_SHA256 = "sha256"    # the whole image hashed before the mount
CHECK_NONE = "none"        # no check (a Talos-written list, or the layer never got that far)
CHECKS = (CHECK_VERITY, CHECK_SHA256, CHECK_NONE)
SHADOWS_UNCOUNTED = -1     # shadowed_count of a persistent upper until agent.shadows counts


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------- writing (boot path)

def extension_doc(*, index: int, image: str, kind: str, name: str, version: str, phase: str,
                  reason: str, author: str, description: str,
                  compatibility: dict[str, object], created: str, updated: str,
                  check: str = CHECK_NONE, device: str = "", loop: str = "") -> dict[str, object]:
    """One layer's record; `id` is the image name without .sqsh, as Talos shows it;
    `device` names the layer's dm-verity device (check verity), read for corruption;
    `loop` the loop device an active layer is read through."""
    return {"index": index, "id": layer_id(image),
            "image": image, "kind": kind, "name": name, "version": version, "phase": phase,
            "reason": reason, "author": author, "description": description,
            "compatibility": compatibility, "created": created, "updated": updated,
            "check": check, "device": device, "loop": loop}


def upper_doc(*, requested: str, source: str, dir: str, size_bytes: int, used_bytes: int,
              fallback: str, repaired: str, shadowed_count: int,
              shadowed: list[str]) -> dict[str, object]:
    """The writable upper: `requested` as overlay_agent.upper= said, `source` the device node
    or tmpfs, `dir` its folder on the device, usage at boot, why a tmpfs replaced the device,
    a stale work dir emptied, and the upper's files that hide an extension's (counted after
    boot: SHADOWS_UNCOUNTED until then)."""
    return {"requested": requested, "source": source, "dir": dir, "size_bytes": size_bytes,
            "used_bytes": used_bytes, "fallback": fallback, "repaired": repaired,
            "shadowed_count": shadowed_count, "shadowed": shadowed}


def shadow_line(count: int, shown: list[str] | tuple[str, ...]) -> str:
    """The one line, at boot and from `get`, about upper files hiding extension files."""
    more = ", ..." if count > len(shown) else ""
    return (f"{count} file(s) in the upper hide files the extensions ship: "
            + ", ".join(shown) + more)


def boot_doc(*, extensions: list[dict[str, object]], root: str, overlay: str,
             notes: list[str], disabled: bool, strict: bool, list_path: str, activated: str,
             duration_ms: float, root_mode: str = ROOT_READ_ONLY,
             upper: dict[str, object] | None = None) -> dict[str, object]:
    return {"schema": STATUS_SCHEMA, "root": root, "overlay": overlay, "notes": notes,
            "disabled": disabled, "strict": strict, "list_path": list_path,
            "activated": activated, "duration_ms": round(duration_ms, 3),
            "root_mode": root_mode, "upper": upper, "extensions": extensions}


def write_json_atomic(path: str, doc: dict[str, object]) -> None:
    """Write to a temp file in the same folder, fsync, rename: never half-written."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, mode=0o755, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    data = memoryview(lightjson.dumps(doc).encode(errors="backslashreplace") + b"\n")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    try:
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:      # a full /run: no half-written file left behind
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------- reading (runtime)

class ExtensionStatus(Value):
    """One layer as the boot recorded it."""

    __slots__ = ("author", "check", "compatibility", "created", "description", "device", "id",
                 "image", "index", "kind", "loop", "name", "phase", "reason", "updated", "version")
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
    loop: str             # the loop device of an active layer, or ""

    def __init__(self, *, index: int, id: str, image: str, kind: str, name: str,
                 version: str, phase: str, reason: str = "", author: str = "",
                 description: str = "", compatibility: dict[str, object] | None = None,
                 created: str = "", updated: str = "", check: str = CHECK_NONE,
                 device: str = "", loop: str = "") -> None:
        self._set(index=index, id=id, image=image, kind=kind, name=name, version=version,
                  phase=phase, reason=reason, author=author, description=description,
                  compatibility=dict(compatibility or {}), created=created, updated=updated,
                  check=check, device=device, loop=loop)


class UpperStatus(Value):
    """The writable upper as the boot recorded it (fields: upper_doc)."""

    __slots__ = ("dir", "fallback", "repaired", "requested", "shadowed", "shadowed_count",
                 "size_bytes", "source", "used_bytes")
    requested: str
    source: str               # device node, or "tmpfs"
    dir: str                  # folder on the device holding upper/ and work/ ("" on tmpfs)
    size_bytes: int
    used_bytes: int
    fallback: str             # why a tmpfs serves instead of the device ("" when it does not)
    repaired: str             # a stale work dir emptied
    shadowed_count: int
    shadowed: tuple[str, ...]  # the first few of them

    def __init__(self, *, requested: str, source: str, dir: str = "", size_bytes: int = 0,
                 used_bytes: int = 0, fallback: str = "", repaired: str = "",
                 shadowed_count: int = 0, shadowed: tuple[str, ...] = ()) -> None:
        self._set(requested=requested, source=source, dir=dir, size_bytes=size_bytes,
                  used_bytes=used_bytes, fallback=fallback, repaired=repaired,
                  shadowed_count=shadowed_count, shadowed=tuple(shadowed))


class BootStatus(Value):
    """The whole status file."""

    __slots__ = ("activated", "disabled", "duration_ms", "extensions", "list_path", "notes",
                 "overlay", "root", "root_mode", "strict", "upper")
    extensions: tuple[ExtensionStatus, ...]
    root: str                 # the directory switched into
    overlay: str              # one of OVERLAY_APIS
    notes: tuple[str, ...]    # problems not tied to one layer (list file, overlay, bind)
    disabled: bool
    strict: bool
    list_path: str
    activated: str
    duration_ms: float
    root_mode: str            # one of ROOT_MODES
    upper: UpperStatus | None

    def __init__(self, *, extensions: tuple[ExtensionStatus, ...] = (), root: str = "",
                 overlay: str = API_NONE, notes: tuple[str, ...] = (), disabled: bool = False,
                 strict: bool = False, list_path: str = "", activated: str = "",
                 duration_ms: float = 0.0, root_mode: str = ROOT_READ_ONLY,
                 upper: UpperStatus | None = None) -> None:
        self._set(extensions=tuple(extensions), root=root, overlay=overlay, notes=tuple(notes),
                  disabled=disabled, strict=strict, list_path=list_path, activated=activated,
                  duration_ms=duration_ms, root_mode=root_mode, upper=upper)


MAX_STATUS_BYTES = 16 << 20   # 499 layers with the list's bounded metadata fit easily
MAX_DEPTH = 16                # compatibility mappings are shallow; a deeper file is not ours
_STR_FIELDS = ("id", "image", "kind", "name", "version", "reason", "author", "description",
               "created", "updated")


def check_extension(raw: object, where: str) -> list[str]:
    """Every problem of one extension record (pure)."""
    if not isinstance(raw, dict):
        return [f"{where}: not an object"]
    problems = [f"{where}: {key} is not a string" for key in _STR_FIELDS
                if not isinstance(raw.get(key), str)]
    if not isinstance(raw.get("index"), int) or isinstance(raw.get("index"), bool):
        problems.append(f"{where}: index is not an integer")
    if not isinstance(raw.get("phase"), str) or raw.get("phase") not in PHASES:
        problems.append(f"{where}: unknown phase {shown(raw.get('phase'))}")
    if not isinstance(raw.get("compatibility"), dict):
        problems.append(f"{where}: compatibility is not an object")
    elif depth_of(raw["compatibility"]) > MAX_DEPTH:
        problems.append(f"{where}: compatibility is nested deeper than {MAX_DEPTH} levels")
    # check and device came later: a status file without them reads as no check
    if raw.get("check", CHECK_NONE) not in CHECKS:
        problems.append(f"{where}: unknown check {shown(raw.get('check'))}")
    for key in ("device", "loop"):   # names of devices, opened under /sys and /dev
        value = raw.get(key, "")
        if not isinstance(value, str) or not value.isprintable():
            problems.append(f"{where}: {key} is not a printable string")
    return problems


_UPPER_STR = ("requested", "source", "dir", "fallback", "repaired")
_UPPER_INT = ("size_bytes", "used_bytes", "shadowed_count")


def check_upper(raw: object, where: str) -> list[str]:
    """Every problem of the upper record (pure); null is the read-only root."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        return [f"{where}: not an object"]
    problems = [f"{where}: {key} is not a string" for key in _UPPER_STR
                if not isinstance(raw.get(key), str)]
    problems += [f"{where}: {key} is not an integer" for key in _UPPER_INT
                 if not isinstance(raw.get(key), int) or isinstance(raw.get(key), bool)]
    shadowed = raw.get("shadowed")
    if not isinstance(shadowed, list) or not all(isinstance(p, str) for p in shadowed):
        problems.append(f"{where}: shadowed is not a list of strings")
    return problems


def shown(value: object) -> str:
    """A value quoted in a problem: short, whatever its type."""
    text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else \
        f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def depth_of(value: object, depth: int = 0) -> int:
    """Nesting depth, giving up past MAX_DEPTH."""
    if depth > MAX_DEPTH or not isinstance(value, (dict, list)):
        return depth
    items = value.values() if isinstance(value, dict) else value
    return max((depth_of(v, depth + 1) for v in items), default=depth + 1)


def check_status(doc: object, where: str) -> list[str]:
    """Every problem of a parsed status document (pure)."""
    if not isinstance(doc, dict):
        return [f"{where}: top level is not an object"]
    schema = doc.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema != STATUS_SCHEMA:
        return [f"{where}: unknown status schema {shown(schema)}"]
    problems = []
    if not isinstance(doc.get("overlay"), str) or doc.get("overlay") not in OVERLAY_APIS:
        problems.append(f"{where}: unknown overlay {shown(doc.get('overlay'))}")
    notes = doc.get("notes")
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        problems.append(f"{where}: notes is not a list of strings")
    for key in ("root", "list_path", "activated"):
        if not isinstance(doc.get(key, ""), str):
            problems.append(f"{where}: {key} is not a string")
    duration = doc.get("duration_ms", 0.0)
    if not isinstance(duration, (int, float)) or isinstance(duration, bool):
        problems.append(f"{where}: duration_ms is not a number")
    if doc.get("root_mode", ROOT_READ_ONLY) not in ROOT_MODES:   # absent: an older agent
        problems.append(f"{where}: unknown root_mode {shown(doc.get('root_mode'))}")
    problems += check_upper(doc.get("upper"), f"{where}: upper")
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
    raw_upper: dict[str, object] | None = doc.get("upper")  # type: ignore[assignment]
    upper = None if raw_upper is None else UpperStatus(**{  # type: ignore[arg-type]
        key: raw_upper[key] for key in (*_UPPER_STR, *_UPPER_INT, "shadowed")})
    return BootStatus(
        extensions=tuple(ExtensionStatus(
            **{key: e[key] for key in (  # type: ignore[arg-type]
                "index", "phase", "compatibility", *_STR_FIELDS)},
            check=str(e.get("check", CHECK_NONE)), device=str(e.get("device", "")),
            loop=str(e.get("loop", "")))
            for e in exts),
        root=str(doc.get("root", "")), overlay=str(doc["overlay"]),
        notes=tuple(str(n) for n in notes), disabled=bool(doc.get("disabled")),
        strict=bool(doc.get("strict")), list_path=str(doc.get("list_path", "")),
        activated=str(doc.get("activated", "")),
        duration_ms=float(duration) if isinstance(duration, (int, float)) else 0.0,
        root_mode=str(doc.get("root_mode", ROOT_READ_ONLY)), upper=upper)


def read_status(path: str = STATUS_PATH) -> BootStatus:
    """Load, validate (all problems at once), build; StatusError names the file."""
    try:
        text = read_regular(path, MAX_STATUS_BYTES, follow=True).decode("utf-8")
    except FileNotFoundError:
        raise StatusError(f"{path}: not found: this system did not boot through "
                          "overlay-agent") from None
    except OSError as exc:
        raise StatusError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise StatusError(f"{path}: not UTF-8 (byte {exc.start})") from None
    try:
        doc = lightjson.loads(text)
    except RecursionError:
        raise StatusError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:
        raise StatusError(f"{path}: not valid JSON ({str(exc)[:80]})") from None
    problems = check_status(doc, path)
    if problems:
        raise StatusError("; ".join(problems))
    return status_from_doc(doc)  # type: ignore[arg-type]
