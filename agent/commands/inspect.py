"""`overlay-agent inspect INITRAMFS`: segments and baked extensions of an initramfs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "inspect", help="show the segments of an initramfs and the extensions baked in",
        description="Read every segment of a concatenated initramfs (cpio, gzip, xz, lzma, "
                    "bzip2, zstd, lz4), the CPU microcode the kernel's early loader would "
                    "find (each blob and the extension it came from), and list the "
                    "extensions in its /extensions.yaml, checking each image's size and "
                    "sha256. Exit status 1 when an image does not match the list.")
    p.add_argument("initramfs", type=Path, metavar="INITRAMFS")
    p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    p.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from agent.bake.inspect import inspect_initramfs, render_report, report_dict

    report = inspect_initramfs(args.initramfs)
    if args.output == "json":
        print(json.dumps(report_dict(report), indent=2))
    elif args.output == "yaml":
        import yaml

        print(yaml.safe_dump(report_dict(report), sort_keys=False), end="")
    else:
        print(render_report(report), end="")
    return 0 if report.all_match else 1
