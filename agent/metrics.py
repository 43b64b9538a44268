"""node_exporter textfile metrics of the boot status (Prometheus text format 0.0.4).

One info series per extension (id, name, version, phase), the activation time, and per
active layer whether its mount is still live: the root overlay (fstype overlay at /, as
psutil lists the mounts) still names the layer's staging mount among its lower layers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from agent.statusfile import ACTIVE, BootStatus

PREFIX = "overlay_agent"


def escape_label(value: str) -> str:
    """Label values: backslash, double quote and line feed escaped, as the format wants."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def labels(**pairs: str) -> str:
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs.items()) + "}"


def overlay_lowers(partitions: Iterable[object], mountpoint: str = "/") -> set[str]:
    """Every path the overlay mounted at `mountpoint` lists in its options (lowerdir=a:b,
    lowerdir+=c), from psutil.disk_partitions(all=True)."""
    found: set[str] = set()
    for part in partitions:
        if getattr(part, "mountpoint", None) != mountpoint or \
                getattr(part, "fstype", None) != "overlay":
            continue
        for opt in str(getattr(part, "opts", "")).split(","):
            key, _, value = opt.partition("=")
            if key in ("lowerdir", "lowerdir+"):
                # a ":" inside a path is escaped as "\:" by overlayfs
                found.update(p.replace("\\:", ":") for p in re.split(r"(?<!\\):", value) if p)
    return found


def live_layers(status: BootStatus, staging_dir: str, lowers: set[str]) -> dict[int, bool]:
    return {e.index: e.phase == ACTIVE and f"{staging_dir.rstrip('/')}/{e.index}" in lowers
            for e in status.extensions}


def render(status: BootStatus, live: dict[int, bool]) -> str:
    lines: list[str] = []

    def family(name: str, help_text: str, samples: Sequence[tuple[str, float]]) -> None:
        lines.append(f"# HELP {PREFIX}_{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}_{name} gauge")
        lines.extend(f"{PREFIX}_{name}{lab} {value:g}" for lab, value in samples)

    family("extension_info", "An extension of the boot's list, with its phase (1 per "
           "extension).", [(labels(id=e.id, name=e.name, version=e.version,
                                   phase=e.phase), 1) for e in status.extensions])
    family("activation_duration_seconds", "Time the agent spent activating extensions at boot.",
           [("", status.duration_ms / 1000)])
    family("layer_mounted", "1 while the extension's layer is part of the root overlay.",
           [(labels(id=e.id, name=e.name), 1 if live.get(e.index) else 0)
            for e in status.extensions])
    return "\n".join(lines) + "\n"
