"""node_exporter textfile metrics of the boot status (Prometheus text format 0.0.4).

One info series per extension (id, name, version, phase), the activation time, and per
layer whether it is live: its phase after agent.livecheck, the one home of that check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from agent.escape import escape
from agent.statusfile import ACTIVE, BootStatus

PREFIX = "overlay_agent"


def escape_label(value: str) -> str:
    """A label value: every character a user did not write escaped as everywhere else
    (agent.escape: a control character or an undecodable byte becomes `\\n`, `\\x1b`,
    `\\xff`), then backslash and double quote as the format wants. The file stays valid
    UTF-8, one sample a line."""
    return escape(value).replace("\\", "\\\\").replace('"', '\\"')


def labels(**pairs: str) -> str:
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs.items()) + "}"


def sample_value(value: float) -> str:
    """As the format spells numbers: NaN, +Inf and -Inf for the special ones."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:g}"


def render(status: BootStatus) -> str:
    """The metrics of `status`, whose phases say what is live (livecheck.with_live_phases)."""
    lines: list[str] = []

    def family(name: str, help_text: str, samples: Sequence[tuple[str, float]]) -> None:
        lines.append(f"# HELP {PREFIX}_{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}_{name} gauge")
        lines.extend(f"{PREFIX}_{name}{lab} {sample_value(value)}" for lab, value in samples)

    family("extension_info", "An extension of the boot's list, with its phase (1 per "
           "extension).", [(labels(id=e.id, name=e.name, version=e.version,
                                   phase=e.phase), 1) for e in status.extensions])
    family("activation_duration_seconds", "Time the agent spent activating extensions at boot.",
           [("", status.duration_ms / 1000)])
    family("layer_mounted", "1 while the extension's layer is part of the root overlay.",
           [(labels(id=e.id, name=e.name), 1 if e.phase == ACTIVE else 0)
            for e in status.extensions])
    return "\n".join(lines) + "\n"
