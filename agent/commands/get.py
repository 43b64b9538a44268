"""`overlay-agent get extensions [-o table|yaml|json]`: what booted, in talosctl's shapes.

Runs in the booted system (light: no structlog); yaml is imported only for -o yaml.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from agent.statusfile import (
    ACTIVE,
    CHECK_NONE,
    CHECK_VERITY,
    STATUS_PATH,
    BootStatus,
    ExtensionStatus,
    read_status,
)

NAMESPACE = "runtime"
TYPE_SHORT = "ExtensionStatus"
TYPE_FULL = "ExtensionStatuses.runtime.talos.dev"
OWNER = "runtime.ExtensionStatusController"
RESOURCE_VERSION = 1
HEADER = ("NODE", "NAMESPACE", "TYPE", "ID", "VERSION", "NAME", "VERSION")
CHECKED = ("CHECK",)          # only when some layer was checked (not a Talos-written list)
EXTRA = ("PHASE", "REASON")   # only when some layer is not active
CORRUPTED = "corrupted"       # an active verity layer whose device saw a bad block
CORRUPTED_REASON = "dm-verity: a block failed its hash check (see the kernel log)"
PAD = 3


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("get", help="show the extensions this system booted with",
                       description="Show the extensions activated at boot, as talosctl does.")
    p.add_argument("resource", choices=("extensions",), help="what to show")
    p.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table")
    p.add_argument("--status", default=STATUS_PATH, metavar="PATH",
                   help=f"status file written at boot (default {STATUS_PATH})")
    p.set_defaults(func=run, light=True)


def run(args: argparse.Namespace) -> int:
    status = mark_corrupted(read_status(args.status))
    node = os.uname().nodename
    render = {"table": render_table, "yaml": render_yaml, "json": render_json}[args.output]
    sys.stdout.write(render(status, node))
    for note in status.notes:   # problems not tied to one layer (list file, overlay)
        print(f"overlay-agent: {note}", file=sys.stderr)
    return 0


def mark_corrupted(status: BootStatus) -> BootStatus:
    """Active verity layers whose device-mapper status now says corrupted."""
    from agent.boot.verity import STATE_CORRUPTED, device_state

    exts = tuple(e.replace(phase=CORRUPTED, reason=CORRUPTED_REASON)
                 if e.phase == ACTIVE and e.check == CHECK_VERITY and e.device
                 and device_state(e.device) == STATE_CORRUPTED else e
                 for e in status.extensions)
    return status.replace(extensions=exts)


def resource_phase(ext: ExtensionStatus) -> str:
    """Talos shows `running` for a live resource; failed and skipped layers say so."""
    return "running" if ext.phase == ACTIVE else ext.phase


def to_resource(ext: ExtensionStatus, node: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": ext.name, "version": ext.version, "author": ext.author,
                            "description": ext.description}
    if ext.compatibility:
        meta["compatibility"] = dict(ext.compatibility)
    spec: dict[str, Any] = {"image": ext.image, "metadata": meta}
    if ext.check != CHECK_NONE:
        spec["check"] = ext.check
    if ext.phase != ACTIVE:
        spec["reason"] = ext.reason
    return {
        "node": node,
        "metadata": {"namespace": NAMESPACE, "type": TYPE_FULL, "id": ext.id,
                     "version": RESOURCE_VERSION, "owner": OWNER,
                     "phase": resource_phase(ext), "created": ext.created,
                     "updated": ext.updated},
        "spec": spec,
    }


def render_table(status: BootStatus, node: str) -> str:
    checked = any(e.check != CHECK_NONE for e in status.extensions)
    extra = any(e.phase != ACTIVE for e in status.extensions)
    rows = [HEADER + (CHECKED if checked else ()) + (EXTRA if extra else ())]
    for e in status.extensions:
        row = (node, NAMESPACE, TYPE_SHORT, e.id, str(RESOURCE_VERSION), e.name, e.version)
        rows.append(row + ((e.check,) if checked else ()) + ((e.phase, e.reason) if extra else ()))
    widths = [max(len(r[c]) for r in rows) + PAD for c in range(len(rows[0]) - 1)]
    return "".join(("".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False))
                    + r[-1]).rstrip() + "\n" for r in rows)


def render_json(status: BootStatus, node: str) -> str:
    """One JSON object per extension, one per line."""
    return "".join(json.dumps(to_resource(e, node), ensure_ascii=False) + "\n"
                   for e in status.extensions)


def render_yaml(status: BootStatus, node: str) -> str:
    """One YAML document per extension, 4-space indents, block text, plain timestamps."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        if "\n" in value:
            return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
        return dumper.represent_str(value)

    def represent_time(dumper: yaml.SafeDumper, value: _Timestamp) -> yaml.Node:
        return dumper.represent_scalar("tag:yaml.org,2002:timestamp", str(value))

    Dumper.add_representer(str, represent_str)
    Dumper.add_representer(_Timestamp, represent_time)
    docs = []
    for e in status.extensions:
        res = to_resource(e, node)
        for key in ("created", "updated"):
            if res["metadata"][key]:
                res["metadata"][key] = _Timestamp(res["metadata"][key])
        docs.append(yaml.dump(res, Dumper=Dumper, sort_keys=False, indent=4,
                              allow_unicode=True, default_flow_style=False))
    return "---\n".join(docs)


class _Timestamp(str):
    """An ISO 8601 time printed unquoted, as talosctl prints it."""
