"""`overlay-agent validate SOURCE...`: fetch, unpack and check extensions; print every problem."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from agent.commands.options import add_fetch_arguments, fetch_options
from agent.escape import escape

# The image modules (tarfile, lzma, bz2...) are imported when a command runs, not when the
# parser is built: the booted system's `overlay-agent get` must not carry them.


def register(sub: Any) -> None:
    p = sub.add_parser("validate", help="check extension images before they are baked",
                       description="Fetch, unpack and check extension images; print every "
                                   "problem as SOURCE: path: reason.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="docker://REG/REPO:TAG, oci:PATH[:TAG], oci-archive:PATH, "
                        "docker-archive:PATH, dir:PATH")
    p.add_argument("--os-version", help="target OS version for compatibility ranges")
    p.add_argument("--base-root", type=Path, metavar="PATH",
                   help="folder or squashfs of the root the extensions sit on")
    p.add_argument("--policy", type=Path, metavar="FILE", help="YAML policy file")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_fetch_arguments(p)
    p.set_defaults(func=run_validate)



def run_validate(args: argparse.Namespace) -> int:
    from agent.image import DEFAULT_POLICY, ValidateOptions, load_policy, validate_extensions
    from agent.image.fetch import fetch_all

    policy = load_policy(args.policy) if args.policy else DEFAULT_POLICY
    options = ValidateOptions(args.os_version, args.base_root, policy)
    with tempfile.TemporaryDirectory(prefix="overlay-agent-validate-") as tmp:
        exts, problems = fetch_all(args.sources, Path(tmp), fetch_options(args))
        problems += validate_extensions(exts, options)
    if args.output == "json":
        print(json.dumps({
            "ok": not problems,
            "extensions": [{"source": e.source, "digest": e.digest,
                            "metadata": e.metadata.to_dict() if e.metadata else None}
                           for e in exts],
            "problems": [{"source": p.source, "path": p.path, "reason": p.reason}
                         for p in problems],
        }, indent=2))
    else:
        for problem in problems:
            print(escape(str(problem)))
        if not problems:
            print(f"{len(exts)} extension(s) valid")
    return 1 if problems else 0
