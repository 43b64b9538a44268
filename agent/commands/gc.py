"""`overlay-agent gc --store DIR`: remove store images no initramfs refers to."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "gc", help="remove store images no initramfs refers to",
        description="Remove the images in a store folder that neither an initramfs under "
                    "/boot (or the ones given) nor the running system's list refers to.")
    p.add_argument("--store", type=Path, required=True, metavar="DIR", help="the store folder")
    p.add_argument("--initramfs", type=Path, action="append", metavar="FILE",
                   help="an initramfs whose images to keep (repeatable; default: every "
                        "initramfs under /boot)")
    p.set_defaults(func=run_gc)


def run_gc(args: argparse.Namespace) -> int:
    from agent.bake.store import collect_garbage

    removed = collect_garbage(args.store, args.initramfs)
    for name in removed:
        print(f"removed {args.store / name}")
    print(f"{args.store}: {len(removed)} image(s) removed")
    return 0
