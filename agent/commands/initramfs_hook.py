"""`overlay-agent initramfs-hook`: what the initramfs-tools hook and the dracut module run
while a distribution's initramfs is being built.

Into the tree being built (initramfs-tools `${DESTDIR}`, dracut `${initdir}`) it writes the
Python runtime hook mode needs (its own import and ELF closure, not whole folders), the
launcher /usr/bin/overlay-agent, the load list of the loop/squashfs/overlay (and dm-verity)
modules the calling tool has copied, and the extensions of the machine config, baked as
`build` bakes them. With a store setting (/etc/overlay-agent/store.conf, STORE=DIR), the
images go into that folder by content name, as `build --store` puts them, and only the
list into the tree. Registry images are cached by digest, so a later rebuild works without
the registry. CPU microcode the extensions ship is merged into the early archive
initramfs-tools puts first in the image (--early-cpio: the hook runs after Debian's
microcode hooks have written theirs); dracut's is not open to its modules, so there it is
left out, with a warning.
Any problem is one line and a non-zero exit: the calling tool then keeps the old initramfs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from pathlib import Path

from agent.commands.options import add_fetch_arguments, fetch_options
from agent.errors import UsageError
from agent.escape import clip

CONFIG = "/etc/overlay-agent/machine.yaml"
CACHE = "/var/cache/overlay-agent"
STORE_SETTING = "/etc/overlay-agent/store.conf"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "initramfs-hook", help="add the agent and the extensions to an initramfs being built",
        description="Run by the initramfs-tools hook and the dracut module: add hook mode's "
                    "Python runtime, the module load list and the machine config's "
                    "extensions to the initramfs tree DESTDIR.")
    p.add_argument("--destdir", type=Path, required=True, metavar="DIR",
                   help="the initramfs tree being built (${DESTDIR}, dracut ${initdir})")
    p.add_argument("--kernel-release", required=True, metavar="KVER",
                   help="the kernel the initramfs is for")
    p.add_argument("--config", type=Path, default=Path(CONFIG), metavar="FILE",
                   help=f"Talos machine config listing the extensions (default {CONFIG}; "
                        "missing: no extensions)")
    p.add_argument("--store-config", type=Path, default=Path(STORE_SETTING), metavar="FILE",
                   help=f"store setting: STORE=DIR [STORE_UUID=...] [STORE_PATH=...] (default "
                        f"{STORE_SETTING}; missing, or STORE empty: images in the initramfs)")
    p.add_argument("--cache", type=Path, default=Path(CACHE), metavar="DIR",
                   help=f"registry images by digest (default {CACHE})")
    p.add_argument("--modules-dir", type=Path, metavar="DIR",
                   help="the kernel's modules folder (default /lib/modules/KVER)")
    p.add_argument("--early-cpio", type=Path, metavar="FILE",
                   help="the early archive being collected (initramfs-tools "
                        "${__TMPEARLYCPIO}): the extensions' CPU microcode is merged into it")
    p.add_argument("--base-root", type=Path, default=Path("/"), metavar="PATH",
                   help="the root the extensions will sit on (default /)")
    add_fetch_arguments(p)
    p.set_defaults(func=run)


MAX_RELEASE = 255     # a folder name under /lib/modules


def check_release(release: str) -> None:
    """A kernel release names a folder under /lib/modules and is printed: one printable
    file name."""
    if "/" in release or not release.strip(".") or not release.isprintable() \
            or len(release.encode(errors="surrogateescape")) > MAX_RELEASE:
        raise UsageError(f"--kernel-release {clip(repr(release), 80)}: not a kernel release")


def run(args: argparse.Namespace) -> int:
    from agent.bake.build import BuildRequest, gather_sources
    from agent.bake.intree import bake_into_tree
    from agent.bake.store import setting_store
    from agent.errors import ValidationFailed
    from agent.escape import escape
    from agent.initramfs.tree import check_tree, install_entries, runtime_tree_entries
    from agent.output import source_date_epoch

    check_tree(args.destdir)
    check_release(args.kernel_release)
    modules_dir = args.modules_dir or Path("/lib/modules", args.kernel_release)
    # missing: no extensions; a dangling symlink or anything else there is read (and refused)
    config = args.config if os.path.lexists(args.config) else None
    store = setting_store(args.store_config)
    # hash trees when cryptsetup-bin (recommended) is there; the boot checks sha256 else
    verity = shutil.which("veritysetup") is not None
    if store is not None and not verity:
        raise UsageError(f"{args.store_config}: a store needs dm-verity hash trees: install "
                         "cryptsetup-bin (veritysetup)")
    request = BuildRequest(
        initramfs=args.destdir, output=args.destdir, config=config, base_root=args.base_root,
        kernel_release=args.kernel_release, epoch=source_date_epoch(),
        fetch=dataclasses.replace(fetch_options(args), cache=args.cache),
        verity=verity, store=store)
    _, problems = gather_sources(request, allow_empty=True)
    if problems:     # before anything is written into the tree
        raise ValidationFailed(problems)
    # the runtime first: on a tree without them yet, it makes the merged-/usr links
    # (lib -> usr/lib) that the extensions' firmware then goes through
    added = install_entries(runtime_tree_entries(args.destdir, modules_dir,
                                                 args.kernel_release, verity), args.destdir)
    baked = bake_into_tree(request, args.destdir, early=args.early_cpio)
    names = ", ".join(f"{la.metadata.name} {la.metadata.version}" for la in baked.layers)
    where = f" in the store {escape(str(store.folder))}" if store and baked.layers else ""
    shipped = escape(", ".join(baked.microcode))
    print(f"overlay-agent: initramfs for {args.kernel_release}: agent runtime "
          f"{added.bytes} bytes; {len(baked.layers)} extension(s){where}"
          f"{': ' + escape(names) if names else ''}"
          f"{'; CPU microcode of ' + shipped + ' in the early archive' if baked.early else ''}",
          file=sys.stderr)
    if baked.microcode and not baked.early:
        print(f"overlay-agent: warning: CPU microcode of {shipped} left out: no early archive "
              "to merge it into (--early-cpio)", file=sys.stderr)
    return 0
