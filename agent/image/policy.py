"""What an extension may ship: allowed paths and a few switches, defaulting to Talos's rules.

A policy file (YAML) may set any of:

    allowed_paths: [/usr/local, /usr/lib/firmware]   # replaces the default list
    allow_setuid: false                              # setuid/setgid files
    duplicate_files: error                           # or "later-wins"
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import yamltext
from agent.errors import UsageError, ValidationFailed
from agent.files import read_regular

# Talos's allowed paths: v1.0-v1.1, v1.2 and later additions (split /usr), then the current
# merged-/usr list (since v1.10). Their union serves both layouts.
TALOS_ALLOWED_PATHS: tuple[str, ...] = tuple(sorted({
    "/etc/cri/conf.d", "/lib/firmware", "/usr/etc/udev/rules.d", "/usr/local",
    "/lib/modules", "/lib64/ld-linux-x86-64.so.2",
    "/usr/share/glvnd", "/usr/share/egl", "/etc/vulkan", "/sbin/ldconfig",
    "/usr/lib/udev/rules.d",
    "/usr/lib/firmware", "/usr/lib/modules", "/usr/lib/ld-linux-x86-64.so.2",
    "/usr/lib/ld-linux-aarch64.so.1", "/usr/bin/ldconfig", "/etc/ld.so.conf",
    "/etc/ld.so.cache", "/usr/bin/nvidia-modprobe", "/usr/bin/nvidia-pcc",
    "/usr/bin/nvidia-smi", "/usr/bin/nvidia-ctk", "/usr/bin/nvidia-cdi-hook", "/usr/bin/nvme",
}))


class DuplicateFiles(enum.Enum):
    ERROR = "error"
    LATER_WINS = "later-wins"


@dataclass(frozen=True)
class Policy:
    allowed_paths: tuple[str, ...] = TALOS_ALLOWED_PATHS
    allow_setuid: bool = False
    duplicate_files: DuplicateFiles = DuplicateFiles.ERROR

    def allows(self, path: str) -> bool:
        """Is `path` ("/usr/local/bin/x") at or under an allowed path (on path boundaries)?"""
        return any(path == p or path.startswith(p + "/") for p in self.allowed_paths)


DEFAULT_POLICY = Policy()
MAX_POLICY = 1 << 20
_KEYS = ("allowed_paths", "allow_setuid", "duplicate_files")


def check_policy(doc: Any, where: str) -> tuple[Policy | None, list[str]]:
    """Validate a parsed policy document; return the policy (None if unusable) and every problem."""
    if doc is None:
        return DEFAULT_POLICY, []
    if not isinstance(doc, Mapping):
        return None, [f"{where}: top level is not a mapping"]
    problems = [f"{where}: unknown key {k!r} (known: {', '.join(_KEYS)})"
                for k in doc if k not in _KEYS]
    allowed = doc.get("allowed_paths", list(TALOS_ALLOWED_PATHS))
    paths: list[str] = []
    if not isinstance(allowed, list):
        problems.append(f"{where}: allowed_paths is not a list")
    else:
        for item in allowed:
            if not isinstance(item, str) or not item.startswith("/") or item == "/":
                problems.append(f"{where}: allowed_paths: {item!r} is not an absolute path "
                                "below /")
            elif any(part in ("", ".", "..") for part in item.rstrip("/").split("/")[1:]):
                problems.append(f"{where}: allowed_paths: {item!r} is not a normalised path")
            else:
                paths.append(item.rstrip("/"))
    setuid = doc.get("allow_setuid", False)
    if not isinstance(setuid, bool):
        problems.append(f"{where}: allow_setuid must be true or false")
    dup_text = doc.get("duplicate_files", DuplicateFiles.ERROR.value)
    try:
        dup = DuplicateFiles(dup_text)
    except ValueError:
        problems.append(f"{where}: duplicate_files must be 'error' or 'later-wins', "
                        f"not {dup_text!r}")
        dup = DuplicateFiles.ERROR
    if problems:
        return None, problems
    return Policy(tuple(sorted(set(paths))), bool(setuid), dup), []


def load_policy(path: Path) -> Policy:
    """Read a policy file; raise UsageError if unreadable, ValidationFailed listing every problem."""
    try:
        text = read_regular(str(path), MAX_POLICY, follow=True).decode()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read policy file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: policy file is not UTF-8 text (byte {exc.start})") from None
    try:
        doc = yamltext.load(text)
    except yamltext.YamlError as exc:
        raise UsageError(f"{path}: policy file: {exc}") from None
    policy, problems = check_policy(doc, str(path))
    if policy is None:
        raise ValidationFailed(problems)
    return policy
