"""`overlay-agent fetch-kernels --cache DIR SUITE...`: Debian's stock kernels into a cache."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.errors import UsageError
from agent.kernels import SUITES


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "fetch-kernels",
        help="download Debian's stock kernels into a cache (never installed)",
        description="Resolve linux-image-amd64 of each suite with a private apt config whose "
                    "mirrors come from the host's apt sources, download and unpack the kernel "
                    "package, run depmod where it ships no modules.dep. A second run with the "
                    "same package version downloads nothing.")
    p.add_argument("--cache", type=Path, required=True, help="cache folder (e.g. .cache/kernels)")
    p.add_argument("suites", nargs="+", metavar="SUITE", help=f"one of {', '.join(SUITES)}")
    p.set_defaults(func=run_fetch)


def run_fetch(args: argparse.Namespace) -> int:
    from agent.kernels import derive_mirrors, fetch_kernel

    bad = [s for s in args.suites if s not in SUITES]
    if bad:
        raise UsageError(f"suite {bad[0]!r}: use one of {', '.join(SUITES)}")
    mirrors = derive_mirrors()
    args.cache.mkdir(parents=True, exist_ok=True)
    for suite in args.suites:
        res = fetch_kernel(args.cache.resolve(), suite, mirrors)
        state = "downloaded" if res.downloaded else "cached"
        print(f"{suite}: {res.package} {res.version} ({state}) "
              f"release {res.kernel.release}, modules {res.kernel.modules_dir}")
    return 0
