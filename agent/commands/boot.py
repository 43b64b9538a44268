"""`overlay-agent boot --root DIR`: hook mode, for a root another initramfs already mounted.

initramfs-tools mounts the root at ${rootmnt} and dracut at /sysroot; this moves that
mount aside and puts the overlay of extensions at DIR, so the usual switch_root follows.
"""

from __future__ import annotations

import argparse
import os

from agent.boot.layout import MODULES_LOAD
from agent.contract import IMAGES_DIR, LIST_PATH, STATUS_PATH
from agent.errors import UsageError

CMDLINE = "/proc/cmdline"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("boot", help="hook mode: stack extensions on a root already mounted",
                       description="Activate the extensions on the root mounted at --root "
                                   "(initramfs-tools ${rootmnt}, dracut /sysroot).")
    p.add_argument("--root", required=True, metavar="DIR", help="the mounted root")
    p.add_argument("--list", default=LIST_PATH, metavar="PATH",
                   help=f"extension list (default {LIST_PATH})")
    p.add_argument("--images", default=IMAGES_DIR, metavar="DIR",
                   help=f"squashfs images (default {IMAGES_DIR})")
    p.add_argument("--status", default=STATUS_PATH, metavar="PATH",
                   help=f"status file, under the /run the new root gets (default {STATUS_PATH})")
    p.add_argument("--cmdline", default=CMDLINE, metavar="PATH",
                   help="kernel command line with overlay_agent.* keys (default /proc/cmdline)")
    p.add_argument("--staging", default="/run/oa", metavar="DIR",
                   help="short directory for the per-layer mounts (default /run/oa)")
    p.add_argument("--modules", default=MODULES_LOAD, metavar="PATH",
                   help=f"kernel modules to load first, one path a line, dependencies first "
                        f"(default {MODULES_LOAD}; missing: none)")
    p.set_defaults(func=run, light=True)


def run(args: argparse.Namespace) -> int:
    from agent.boot.activate import activate_mounted_root, settings_from_cmdline

    if not os.path.isdir(args.root):
        raise UsageError(f"--root {args.root}: not a directory")
    try:
        with open(args.cmdline, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"--cmdline {args.cmdline}: {exc.strerror}") from None
    settings = settings_from_cmdline(text, list_path=args.list, images_dir=args.images,
                                     status_path=args.status, staging_dir=args.staging)
    load_hook_modules(args.modules)
    activate_mounted_root(args.root, settings)
    return 0


def load_hook_modules(path: str) -> None:
    """loop, squashfs and overlay, as PID 1 loads them: a distribution's initramfs loads only
    what its own root needs. A module that fails is reported; its layers then fail and say so."""
    from agent.boot.activate import report
    from agent.boot.modules import load_modules
    from agent.errors import BootError

    try:
        load_modules(path)
    except BootError as exc:
        report(str(exc))
