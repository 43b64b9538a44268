"""`overlay-agent build`: bake extensions into an initramfs (see agent.bake.build)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.commands.options import add_fetch_arguments, fetch_options, size_type
from agent.errors import UsageError
from agent.escape import escape


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "build", help="bake extensions into an initramfs",
        description="Fetch and validate every extension (from a Talos machine config's "
                    "machine.install.extensions and/or --extension), squash each one, and "
                    "append them with the list file /extensions.yaml as one compressed cpio "
                    "to the input initramfs. Nothing is written if any extension fails.")
    p.add_argument("--config", type=Path, metavar="FILE", help="Talos machine config (machine.install.extensions)")
    p.add_argument("--extension", action="append", default=[], metavar="SOURCE",
                   help="an extension source (REGISTRY/REPO:TAG, docker://..., oci:PATH[:TAG], "
                        "oci-archive:PATH, docker-archive:PATH, dir:PATH); repeatable, "
                        "placed after the config's")
    p.add_argument("--initramfs", type=Path, required=True, metavar="IN",
                   help="initramfs to extend (the agent's own or a distribution's)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                   help="the initramfs to write (atomically; may be IN itself)")
    p.add_argument("--os-version", help="target OS version for compatibility checks")
    p.add_argument("--base-root", type=Path, metavar="PATH", help="the base root (folder or squashfs): "
                   "validation and the modules layer")
    p.add_argument("--compression", choices=["zstd", "xz"], default="zstd",
                   help="of the images and the appended archive (default zstd)")
    p.add_argument("--max-size", type=size_type("--max-size"), metavar="SIZE",
                   help="refuse an OUT larger than this (e.g. 64M)")
    p.add_argument("--kernel-release", metavar="KVER",
                   help="kernel release of the modules layer (default: from --base-root)")
    p.add_argument("--policy", type=Path, metavar="FILE", help="validation policy file")
    p.add_argument("--jobs", type=int, default=0, metavar="N", help="images squashed at once (default: cores)")
    p.add_argument("--no-verity", dest="verity", action="store_false",
                   help="no dm-verity hash tree: the boot checks the whole sha256")
    p.add_argument("--store", type=Path, metavar="DIR",
                   help="write the images into DIR (a folder on a disk filesystem the boot "
                        "reaches) and only the list into the initramfs")
    p.add_argument("--store-uuid", metavar="UUID",
                   help="UUID of the store's filesystem (default: findmnt's for DIR)")
    p.add_argument("--store-path", metavar="PATH",
                   help="DIR's path inside that filesystem (default: from DIR's mount point)")
    add_fetch_arguments(p)
    p.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from agent.bake.build import BuildRequest, bake_initramfs
    from agent.bake.squash import Compression
    from agent.bake.store import locate_store
    from agent.output import source_date_epoch

    store = None
    if args.store is not None:
        store = locate_store(args.store, args.store_uuid, args.store_path)
    elif args.store_uuid or args.store_path:
        raise UsageError("--store-uuid and --store-path need --store DIR")

    request = BuildRequest(
        initramfs=args.initramfs, output=args.output, config=args.config,
        extensions=tuple(args.extension), os_version=args.os_version, base_root=args.base_root,
        compression=Compression(args.compression), max_size=args.max_size,
        kernel_release=args.kernel_release, fetch=fetch_options(args),
        policy=args.policy, epoch=source_date_epoch(), jobs=args.jobs, verity=args.verity,
        store=store)
    progress = (lambda line: print(escape(line), file=sys.stderr, flush=True)) \
        if sys.stderr.isatty() else None
    result = bake_initramfs(request, progress)
    print(f"{escape(str(result.output))}: {result.output_size} bytes ({result.input_size} input + "
          f"{result.output_size - result.input_size} extensions), "
          f"{len(result.layers)} layer(s)")
    for layer in result.layers:
        where = f"  store:{layer.store}/{escape(layer.path)}" if layer.store else ""
        check = f"  verity:{layer.verity.root_hash}" if layer.verity else ""
        print(f"  {layer.image}  {escape(layer.metadata.name)} {escape(layer.metadata.version)}  "
              f"{layer.size} bytes  sha256:{layer.sha256}{check}{where}")
    return 0
