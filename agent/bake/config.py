"""Read the extension list out of a Talos machine config (`machine.install.extensions`).

Local paths (`dir:`, `oci:`, `oci-archive:`, `docker-archive:`) are relative to the config
file's folder, not to the working directory.

Only `machine.install.extensions[].image` is read; every other key is ignored, so a real
Talos config works. Talos >= 1.5 configs may hold several YAML documents: the one with a
`machine` key is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import yamltext
from agent.errors import SourceError
from agent.files import read_regular

MAX_CONFIG = 16 << 20     # a Talos machine config is tens of KiB


@dataclass(frozen=True)
class MachineConfig:
    """The parts of a machine config the build reads."""

    path: str
    images: tuple[str, ...]


def load_documents(path: Path) -> list[Any]:
    """Parse every YAML document of `path`; raise SourceError naming it if unreadable."""
    try:
        text = read_regular(str(path), MAX_CONFIG, follow=True).decode()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return yamltext.load_all(text)
    except yamltext.YamlError as exc:
        raise SourceError(f"{path}: {exc}") from None


def validate_documents(where: str, docs: Sequence[Any],
                       folder: str | None = None) -> tuple[MachineConfig, list[str]]:
    """Pick the image list out of parsed documents; return it and EVERY problem found.
    With `folder` (the config's own), relative local paths resolve against it."""
    from agent.image.source import anchor_source

    problems: list[str] = []
    machines = [d for d in docs if isinstance(d, Mapping) and "machine" in d]
    if not machines:
        return MachineConfig(where, ()), [f"{where}: no document with a machine section"]
    machine = machines[0]["machine"]
    install = machine.get("install") if isinstance(machine, Mapping) else None
    if install is None:
        return MachineConfig(where, ()), []
    if not isinstance(install, Mapping):
        return MachineConfig(where, ()), [f"{where}: machine.install is not a mapping"]
    raw = install.get("extensions") or []
    if not isinstance(raw, list):
        return MachineConfig(where, ()), [f"{where}: machine.install.extensions is not a list"]
    images: list[str] = []
    for i, item in enumerate(raw):
        at = f"{where}: machine.install.extensions[{i}]"
        image = item.get("image") if isinstance(item, Mapping) else None
        if not isinstance(image, str) or not image.strip():
            problems.append(f"{at}: needs an image (a non-empty string)")
            continue
        images.append(image.strip() if folder is None else anchor_source(image.strip(), folder))
    return MachineConfig(where, tuple(images)), problems


def find_duplicates(sources: Sequence[str]) -> list[str]:
    """One problem per source listed more than once (Talos refuses duplicate images)."""
    seen: dict[str, int] = {}
    problems = []
    for i, source in enumerate(sources):
        if source in seen:
            problems.append(f"{source}: listed twice (positions {seen[source] + 1} and {i + 1})")
        else:
            seen[source] = i
    return problems


def read_machine_config(path: Path) -> tuple[MachineConfig, list[str]]:
    """Load and validate `path`: the image list and every problem in it."""
    return validate_documents(str(path), load_documents(path), str(path.parent))
