"""`overlay-agent boot --root DIR`: hook mode, for a root another initramfs already mounted.

initramfs-tools mounts the root at ${rootmnt} and dracut at /sysroot; this moves that
mount aside and puts the overlay of extensions at DIR, so the usual switch_root follows.
"""

from __future__ import annotations

import argparse
import os
import sys

from agent.boot.layout import MODULES_LOAD
from agent.errors import BootError, UsageError
from agent.escape import escape
from agent.files import read_regular
from agent.listfile import IMAGES_DIR, LIST_PATH
from agent.statusfile import STATUS_PATH

CMDLINE = "/proc/cmdline"
MAX_CMDLINE = 1 << 16    # the kernel's COMMAND_LINE_SIZE is at most a few KiB


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
    from agent.boot.activate import activate_mounted_root, settings_from_params
    from agent.boot.cmdline import scan_cmdline
    from agent.boot.main import describe

    if not os.path.isdir(args.root):
        raise UsageError(f"--root {args.root}: not a directory")
    try:
        # /proc/cmdline, or a file the tests name: never a fifo to block on
        text = read_regular(args.cmdline, MAX_CMDLINE, follow=True).decode(errors="replace")
    except OSError as exc:
        raise UsageError(f"--cmdline {args.cmdline}: {exc.strerror}") from None
    # keys that are not ours belong to the initramfs that mounted the root: only an
    # unusable overlay_agent.* key matters here, and it activates nothing (never fatal)
    settings = settings_from_params(scan_cmdline(text), list_path=args.list,
                                    images_dir=args.images, status_path=args.status,
                                    staging_dir=args.staging)
    try:
        load_hook_modules(args.modules)
        activate_mounted_root(args.root, settings)
    except Exception as exc:  # never brick: exit 1 (the script's panic) only under strict
        if settings.strict:
            raise BootError(describe(exc)) from None
        print(f"overlay-agent: {escape(describe(exc))}; booting the bare root", file=sys.stderr)
    return 0


def load_hook_modules(path: str) -> None:
    """loop, squashfs and overlay, as PID 1 loads them: a distribution's initramfs loads only
    what its own root needs. A module that fails is reported; its layers then fail and say so."""
    from agent.boot.activate import report
    from agent.boot.modules import load_modules

    for line in load_modules(path).failed:
        report(line)
