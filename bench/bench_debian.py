"""The Debian package on a real Debian 12 root (the VM tier's prepared root: mmdebstrap,
the .deb installed with apt, the two examples listed): bytes the hook adds to Debian's
initrd, mkinitramfs time with and without the hook, and kernel start to multi-user.target
with the stock initrd and with the hook's (median of 3 boots each, one run).

Stock = the same root and kernel, the hook replaced by an empty script for that build; the
runtime alone = an empty extension list. Everything is bound over in the chroot's own mount
namespace, so the prepared root is left as it was.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.debian_root import (  # noqa: E402
    BOOKWORM,
    Prepared,
    build_deb,
    in_chroot,
    prepare,
    run_checks,
)

RUNS = 3
GOAL_BYTES = 4 * 2**20
GOAL_RATIO = 1.10
EMPTY_HOOK = "#!/bin/sh\nexit 0\n"
EMPTY_LIST = "machine:\n  install:\n    extensions: []\n"


def build_initrd(prepared: Prepared, release: str, variant: str, out: Path) -> float:
    """mkinitramfs (what update-initramfs -u runs) into /tmp of the root; seconds taken."""
    tree = prepared.tree
    binds = ""
    for name, text in (("hook", EMPTY_HOOK), ("list", EMPTY_LIST)):
        (tree / f"tmp/oa-bench-{name}").write_text(text)
        (tree / f"tmp/oa-bench-{name}").chmod(0o755)
    if variant == "stock":
        binds = "mount --bind /tmp/oa-bench-hook /usr/share/initramfs-tools/hooks/overlay-agent; "
    elif variant == "runtime":
        binds = "mount --bind /tmp/oa-bench-list /etc/overlay-agent/machine.yaml; "
    start = time.monotonic()
    in_chroot(tree, f"{binds}TMPDIR=/tmp mkinitramfs -o /tmp/oa-bench.img {release}")
    took = time.monotonic() - start
    shutil.move(tree / "tmp/oa-bench.img", out)
    return took


def boot_to_multi_user(prepared: Prepared, initrd: Path, name: str) -> float:
    """Kernel start to multi-user.target: systemd's CLOCK_MONOTONIC stamp of the target,
    which counts from the kernel's start (an initramfs-tools initrd is no systemd initrd,
    so `systemd-analyze time` folds it into "kernel")."""
    report = run_checks(prepared, name, initrd=initrd)
    stamp = report.lines("MULTI-USER-US")
    if not stamp or not stamp[0].isdigit():
        raise RuntimeError(f"no multi-user.target time, see {report.log}")
    return int(stamp[0]) / 1e6


def run(out: Path, kernels: Path) -> None:
    prepared = prepare(BOOKWORM, build_deb())
    release = prepared.main_release
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        times: dict[str, list[float]] = {"stock": [], "runtime": [], "examples": []}
        sizes: dict[str, int] = {}
        for _ in range(RUNS):
            for variant in times:
                img = work / f"{variant}.img"
                times[variant].append(build_initrd(prepared, release, variant, img))
                sizes[variant] = img.stat().st_size
        boots: dict[str, list[float]] = {"stock": [], "examples": []}
        for i in range(RUNS):
            for variant in boots:
                boots[variant].append(boot_to_multi_user(
                    prepared, work / f"{variant}.img", f"bench-{variant}-{i}"))
    for name in ("hook", "list"):
        (prepared.tree / f"tmp/oa-bench-{name}").unlink()
    added_rt = sizes["runtime"] - sizes["stock"]
    added_ex = sizes["examples"] - sizes["stock"]
    med = {k: statistics.median(v) for k, v in times.items()}
    bmed = {k: statistics.median(v) for k, v in boots.items()}
    ratio = bmed["examples"] / bmed["stock"]
    mib = 2**20
    out.write_text(
        "## Debian package on Debian 12 (bench/bench_debian.py)\n\n"
        f"The VM tier's prepared bookworm root, kernel {release}, initramfs-tools "
        "(MODULES=most, zstd); medians of "
        f"{RUNS}. Boots: QEMU TCG, 1 vCPU, the read-only root, kernel start to multi-user.target "
        "as systemd's monotonic stamp of the target.\n\n"
        "| figure | value | goal |\n| --- | --- | --- |\n"
        f"| Debian's initrd without the hook | {sizes['stock'] / mib:.2f} MiB | - |\n"
        f"| added by the hook, runtime alone (empty list) | {added_rt / mib:.2f} MiB "
        f"({added_rt} bytes) | <= 4 MiB: {'met' if added_rt <= GOAL_BYTES else 'MISSED'} |\n"
        f"| added with the two examples | {added_ex / mib:.2f} MiB ({added_ex} bytes) | - |\n"
        f"| mkinitramfs without the hook | {med['stock']:.2f} s | - |\n"
        f"| mkinitramfs with the hook, runtime alone | {med['runtime']:.2f} s "
        f"({med['runtime'] - med['stock']:+.2f} s) | - |\n"
        f"| mkinitramfs with the hook and the examples | {med['examples']:.2f} s "
        f"({med['examples'] - med['stock']:+.2f} s) | - |\n"
        f"| kernel start to multi-user.target, stock initrd | {bmed['stock']:.2f} s "
        f"({', '.join(f'{v:.2f}' for v in boots['stock'])}) | - |\n"
        f"| kernel start to multi-user.target, hook + examples | {bmed['examples']:.2f} s "
        f"({', '.join(f'{v:.2f}' for v in boots['examples'])}) | <= {GOAL_RATIO:.2f}x: "
        f"{ratio:.2f}x {'met' if ratio <= GOAL_RATIO else 'MISSED'} |\n")
