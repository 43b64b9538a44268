"""`overlay-agent pack DIR -o FILE`: a reproducible one-layer image from an extension folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.escape import escape

FORMATS = ("oci-archive", "docker-archive")  # agent.image.pack.PackFormat values (tested)


def register(sub: Any) -> None:
    p = sub.add_parser("pack", help="turn an extension folder into an image (no docker needed)",
                       description="Validate an extension folder (manifest.yaml + rootfs/) and "
                                   "write a reproducible one-layer image.")
    p.add_argument("folder", type=Path, metavar="DIR")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    p.add_argument("--format", choices=FORMATS, default=FORMATS[0])
    p.add_argument("--tag", help="image tag NAME:TAG (default: metadata NAME:VERSION)")
    p.add_argument("--arch", default="amd64", help="architecture recorded in the image config")
    p.add_argument("--os-version", help="target OS version for compatibility ranges")
    p.add_argument("--policy", type=Path, metavar="FILE", help="YAML policy file")
    p.set_defaults(func=run_pack)


def run_pack(args: argparse.Namespace) -> int:
    # imported here, not at the top: see agent/commands/validate.py
    from agent.image import DEFAULT_POLICY, ValidateOptions, load_policy
    from agent.image.pack import PackFormat, PackOptions, pack_extension
    from agent.output import source_date_epoch

    policy = load_policy(args.policy) if args.policy else DEFAULT_POLICY
    options = PackOptions(PackFormat(args.format), args.tag, args.arch, source_date_epoch(),
                          ValidateOptions(args.os_version, None, policy))
    digest = pack_extension(args.folder, args.output, options)
    print(f"{escape(str(args.output))}: {digest}")
    return 0
