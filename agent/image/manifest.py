"""Load an extension's manifest.yaml into listfile.Metadata plus every problem found.

Talos's schema: `version: v1alpha1` and `metadata` {name, version, author, description,
compatibility: {talos: {version: RANGE}}}. Unknown keys are reported, never dropped.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import yamltext
from agent.escape import clip
from agent.image.versions import VersionRange, VersionRangeError, parse_range
from agent.listfile import MAX_TEXT, Metadata

MANIFEST = "manifest.yaml"
MANIFEST_VERSION = "v1alpha1"
NAME_RE = re.compile(r"[a-z0-9_.-]+")
_TOP_KEYS = ("version", "metadata")
_META_KEYS = ("name", "version", "author", "description", "compatibility")
_REQUIRED = ("name", "version", "author", "description")
RANGE_KEY = "metadata.compatibility.talos.version"
MAX_MANIFEST = 1 << 20


@dataclass(frozen=True)
class Manifest:
    metadata: Metadata | None      # None when name or version is unusable
    talos_range: VersionRange | None         # None when absent or unparsable
    problems: tuple[str, ...]                # "reason" texts, all about manifest.yaml


def load_manifest(root: Path) -> Manifest:
    """Read ROOT/manifest.yaml; never raises for bad content."""
    try:
        # O_NOFOLLOW: a manifest.yaml symlink must not make us read (and quote) a host file
        fd = os.open(root / MANIFEST,
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return Manifest(None, None, ("not a regular file",))
            text = f.read(MAX_MANIFEST + 1).decode("utf-8")
    except FileNotFoundError:
        return Manifest(None, None, ("missing",))
    except (OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ELOOP, errno.EISDIR):
            return Manifest(None, None, ("not a regular file",))
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        return Manifest(None, None, (f"cannot read: {reason}",))
    if len(text) > MAX_MANIFEST:
        return Manifest(None, None, (f"larger than {MAX_MANIFEST} bytes",))
    try:
        doc = yamltext.load(text)
    except yamltext.YamlError as exc:
        return Manifest(None, None, (str(exc),))
    return check_manifest(doc)


def check_manifest(doc: Any) -> Manifest:
    """Validate a parsed manifest document (pure)."""
    if not isinstance(doc, Mapping):
        return Manifest(None, None, ("top level is not a mapping",))
    problems = [f"unknown key {k!r}" for k in doc if k not in _TOP_KEYS]
    if "version" not in doc:
        problems.append("version: missing")
    elif doc["version"] != MANIFEST_VERSION:
        problems.append(f"version: unsupported manifest version {doc['version']!r} "
                        f"(want {MANIFEST_VERSION})")
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping):
        problems.append("metadata: missing" if meta is None else "metadata: not a mapping")
        return Manifest(None, None, tuple(problems))
    problems += [f"metadata.{k}: unknown key" for k in meta if k not in _META_KEYS]
    for key in _REQUIRED:
        value = meta.get(key)
        if value is None or value == "":
            problems.append(f"metadata.{key}: missing")
        elif not isinstance(value, str):
            problems.append(f"metadata.{key}: not a string (quote it in YAML)")
        elif len(value) > MAX_TEXT:   # the list file at boot takes no more
            problems.append(f"metadata.{key}: over {MAX_TEXT} characters")
    name = meta.get("name")
    if isinstance(name, str) and name and not NAME_RE.fullmatch(name):
        problems.append(f"metadata.name: {name!r} may hold only lowercase letters, digits, "
                        "'-', '_' and '.'")
    compat = meta.get("compatibility") or {}
    talos_range, compat_problems = parse_compatibility(compat)
    problems += compat_problems
    metadata = None
    if isinstance(name, str) and NAME_RE.fullmatch(name) and isinstance(meta.get("version"), str):
        metadata = Metadata(
            name=name, version=meta["version"],
            author=text_or_empty(meta.get("author")),
            description=text_or_empty(meta.get("description")),
            compatibility=dict(compat) if isinstance(compat, Mapping) else {})
    return Manifest(metadata, talos_range, tuple(problems))


def text_or_empty(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_compatibility(compat: Any) -> tuple[VersionRange | None, list[str]]:
    if not isinstance(compat, Mapping):
        return None, ["metadata.compatibility: not a mapping"]
    problems = [f"metadata.compatibility.{k}: unknown key" for k in compat if k != "talos"]
    talos = compat.get("talos")
    if talos is None:
        return None, problems
    if not isinstance(talos, Mapping):
        return None, [*problems, "metadata.compatibility.talos: not a mapping"]
    problems += [f"metadata.compatibility.talos.{k}: unknown key" for k in talos
                 if k != "version"]
    text = talos.get("version")
    if text is None:
        return None, [*problems, f"{RANGE_KEY}: missing"]
    if not isinstance(text, str):
        return None, [*problems, f"{RANGE_KEY}: not a string"]
    try:
        return parse_range(text), problems
    except VersionRangeError as exc:
        return None, [*problems, f"{RANGE_KEY}: bad version range {clip(text)!r}: {exc}"]
