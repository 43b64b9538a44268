"""`overlay-agent get extensions [-o table|yaml|json]`: what booted, in talosctl's shapes.

Runs in the booted system (light: no structlog); yaml is imported only for -o yaml.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from agent.escape import escape, escape_json
from agent.statusfile import (
    ACTIVE,
    CHECK_NONE,
    STATUS_PATH,
    BootStatus,
    ExtensionStatus,
    read_status,
    shadow_line,
)

NAMESPACE = "runtime"
TYPE_SHORT = "ExtensionStatus"
TYPE_FULL = "ExtensionStatuses.runtime.talos.dev"
OWNER = "runtime.ExtensionStatusController"
RESOURCE_VERSION = 1
ROOT_TYPE = "RootStatuses.runtime.overlay-agent"   # the writable root, after the extensions
ROOT_OWNER = "overlay-agent.boot"
HEADER = ("NODE", "NAMESPACE", "TYPE", "ID", "VERSION", "NAME", "VERSION")
CHECKED = ("CHECK",)          # only when some layer was checked (not a Talos-written list)
EXTRA = ("PHASE", "REASON")   # only when some layer is not active
PAD = 3


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("get", help="show the extensions this system booted with",
                       description="Show the extensions activated at boot, as talosctl does.")
    p.add_argument("resource", choices=("extensions",), help="what to show")
    p.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table")
    p.add_argument("--status", default=STATUS_PATH, metavar="PATH",
                   help=f"status file written at boot (default {STATUS_PATH})")
    p.add_argument("--root", default="/", metavar="DIR",
                   help="where the extensions are stacked now, to check they still are "
                        "(default /)")
    p.set_defaults(func=run, light=True)


def run(args: argparse.Namespace) -> int:
    from agent.livecheck import with_live_phases
    from agent.shadows import with_shadows

    status = with_shadows(with_live_phases(read_status(args.status), args.root), args.status)
    node = os.uname().nodename
    render = {"table": render_table, "yaml": render_yaml, "json": render_json}[args.output]
    sys.stdout.write(render(status, node))
    for note in status.notes:   # problems not tied to one layer (list file, overlay, upper)
        print(f"overlay-agent: {escape(note)}", file=sys.stderr)
    if status.upper is not None and status.upper.shadowed_count > 0:
        line = shadow_line(status.upper.shadowed_count, status.upper.shadowed)
        print(f"overlay-agent: {escape(line)}", file=sys.stderr)
    return 0



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


def root_resource(status: BootStatus, node: str) -> dict[str, Any] | None:
    """The writable root as one more resource (none for the read-only root, so that the
    default output keeps talosctl's shape): mode, the upper's device, usage, fallback."""
    up = status.upper
    if up is None:
        return None
    spec: dict[str, Any] = {"mode": status.root_mode}
    spec.update((key, list(value) if isinstance(value, tuple) else value) for key, value in (
        ("requested", up.requested), ("source", up.source), ("dir", up.dir),
        ("size_bytes", up.size_bytes), ("used_bytes", up.used_bytes),
        ("fallback", up.fallback), ("repaired", up.repaired),
        ("shadowed_count", up.shadowed_count), ("shadowed", up.shadowed)))
    return {"node": node,
            "metadata": {"namespace": NAMESPACE, "type": ROOT_TYPE, "id": "root",
                         "version": RESOURCE_VERSION, "owner": ROOT_OWNER, "phase": "running",
                         "created": status.activated, "updated": status.activated},
            "spec": spec}


def resources(status: BootStatus, node: str) -> list[dict[str, Any]]:
    found = [to_resource(e, node) for e in status.extensions]
    root = root_resource(status, node)
    return found + ([root] if root else [])


def render_table(status: BootStatus, node: str) -> str:
    checked = any(e.check != CHECK_NONE for e in status.extensions)
    extra = any(e.phase != ACTIVE for e in status.extensions)
    rows = [HEADER + (CHECKED if checked else ()) + (EXTRA if extra else ())]
    for e in status.extensions:
        row = (node, NAMESPACE, TYPE_SHORT, e.id, str(RESOURCE_VERSION), e.name, e.version)
        # escaped: a newline in a name or version must not forge a row (the journal logs it)
        rows.append(tuple(escape(cell) for cell in row + ((e.check,) if checked else ())
                          + ((e.phase, e.reason) if extra else ())))
    widths = [max(len(r[c]) for r in rows) + PAD for c in range(len(rows[0]) - 1)]
    return "".join(("".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False))
                    + r[-1]).rstrip() + "\n" for r in rows)


def render_json(status: BootStatus, node: str) -> str:
    """One JSON object per extension, then the writable root's; one per line."""
    return "".join(escape_json(json.dumps(res, ensure_ascii=False)) + "\n"
                   for res in resources(status, node))


def render_yaml(status: BootStatus, node: str) -> str:
    """One YAML document per extension (then the writable root's), 4-space indents, block
    text, plain timestamps."""
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
    for res in resources(status, node):
        for key in ("created", "updated"):
            if res["metadata"][key]:
                res["metadata"][key] = _Timestamp(res["metadata"][key])
        docs.append(yaml.dump(res, Dumper=Dumper, sort_keys=False, indent=4,
                              allow_unicode=True, default_flow_style=False))
    return "---\n".join(docs)


class _Timestamp(str):
    """An ISO 8601 time printed unquoted, as talosctl prints it."""
