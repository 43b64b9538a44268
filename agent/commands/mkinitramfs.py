"""`overlay-agent mkinitramfs`: the initramfs with the agent as /init (build side only)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.bake.early import MicrocodeSource


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "mkinitramfs",
        help="build an initramfs whose /init is the agent",
        description="Write a reproducible zstd cpio initramfs: the Python runtime and agent "
                    "(/init), the kernel modules loop, squashfs, overlay (and virtio_pci, "
                    "virtio_blk, ext4 unless --no-disk-modules) with their dependencies in "
                    "/etc/overlay-agent/modules.load, /dev/console, /dev/null, /dev/urandom, "
                    "and optionally the root image as /rootfs.sqsh. Member mtimes come from "
                    "SOURCE_DATE_EPOCH. The archive is re-read and checked before it is "
                    "renamed into place. With --microcode, an uncompressed early archive "
                    "holding the merged CPU microcode comes first.")
    p.add_argument("--kernel-release", required=True, metavar="KVER",
                   help="release of the kernel that will boot it (e.g. 6.1.0-37-amd64)")
    p.add_argument("--modules-dir", required=True, type=Path, metavar="DIR",
                   help="lib/modules/KVER folder holding modules.dep")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT")
    p.add_argument("--root-image", type=Path, metavar="FILE",
                   help="immutable root image shipped as /rootfs.sqsh")
    p.add_argument("--no-disk-modules", action="store_true",
                   help="leave out virtio_pci, virtio_blk and ext4 (root inside the initramfs)")
    p.add_argument("--module", action="append", default=[], metavar="NAME",
                   help="extra kernel module to ship and load (repeatable)")
    p.add_argument("--compression", choices=("zstd", "xz", "gzip"), default="zstd")
    p.add_argument("--microcode", action="append", default=[], type=Path, metavar="DIR",
                   help="an unpacked extension (DIR/rootfs) or a root folder whose CPU "
                        "microcode (lib/firmware/intel-ucode, amd-ucode) goes into an early "
                        "archive at the start (repeatable)")
    p.set_defaults(func=run_mkinitramfs)


def microcode_source(folder: Path) -> MicrocodeSource:
    """An unpacked extension's rootfs, or the folder itself; named by the folder."""
    from agent.bake.early import MicrocodeSource

    root = folder / "rootfs" if (folder / "rootfs").is_dir() else folder
    return MicrocodeSource(folder.resolve().name, str(folder), root)


def run_mkinitramfs(args: argparse.Namespace) -> int:
    from agent.initramfs.build import InitramfsSpec, make_initramfs

    spec = InitramfsSpec(args.kernel_release, args.modules_dir, root_image=args.root_image,
                         disk_modules=not args.no_disk_modules, compression=args.compression,
                         extra_modules=tuple(args.module),
                         microcode=tuple(map(microcode_source, args.microcode)))
    report = make_initramfs(spec, args.output)
    print(f"{report.out}: {report.size} bytes ({args.compression}), {report.members} members, "
          f"{len(report.modules)} kernel modules, {len(report.elf_files)} ELF files")
    return 0
