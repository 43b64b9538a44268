"""`overlay-agent metrics`: the boot status as node_exporter textfile metrics, written
atomically (node_exporter never reads half a file)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.statusfile import STATUS_PATH

OUTPUT = "/var/lib/prometheus/node-exporter/overlay_agent.prom"
STAGING = "/run/oa"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("metrics", help="write node_exporter textfile metrics of the boot",
                       description="Write the extensions activated at boot as Prometheus "
                                   "metrics for node_exporter's textfile collector.")
    p.add_argument("--status", default=STATUS_PATH, metavar="PATH",
                   help=f"status file written at boot (default {STATUS_PATH})")
    p.add_argument("-o", "--output", type=Path, default=Path(OUTPUT), metavar="FILE",
                   help=f"metrics file, replaced atomically (default {OUTPUT})")
    p.add_argument("--staging", default=STAGING, metavar="DIR",
                   help=f"the per-layer mount folder used at boot (default {STAGING})")
    p.add_argument("--root", default="/", metavar="DIR",
                   help="where the extensions are stacked now, to check they still are "
                        "(default /)")
    p.set_defaults(func=run, light=True)


def run(args: argparse.Namespace) -> int:
    from agent.livecheck import with_live_phases
    from agent.metrics import render
    from agent.output import write_bytes_atomically
    from agent.statusfile import read_status

    # phases as get shows them (a layer gone or corrupted since boot says so), and a
    # layer whose staging mount left the root overlay is gone too
    status = with_live_phases(read_status(args.status), args.root, staging=args.staging)
    write_bytes_atomically(args.output, render(status).encode())
    return 0
