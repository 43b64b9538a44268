"""The boot status file's shape and its atomic writer, light enough for PID 1.

agent.status holds the frozen dataclasses and the reader; both build documents
with the functions here, so the shape is written down once.
"""

from __future__ import annotations

import os
import time

from agent import lightjson

STATUS_SCHEMA = 1
ACTIVE, FAILED, SKIPPED = "active", "failed", "skipped"                 # status.Phase
API_NONE, API_MOUNT, API_FSCONFIG = "none", "mount", "fsconfig"        # status.OverlayApi


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def extension_doc(*, index: int, image: str, kind: str, name: str, version: str, phase: str,
                  reason: str, author: str, description: str,
                  compatibility: dict[str, object], created: str,
                  updated: str) -> dict[str, object]:
    """One layer's record; `id` is the image name without .sqsh, as Talos shows it."""
    return {"index": index, "id": image[:-5] if image.endswith(".sqsh") else image,
            "image": image, "kind": kind, "name": name, "version": version, "phase": phase,
            "reason": reason, "author": author, "description": description,
            "compatibility": compatibility, "created": created, "updated": updated}


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
