"""Baking 10 extensions of 10 MiB each (half compressible, half random bytes) with
`overlay-agent build`, side by side with bare `mksquashfs` run one folder after another on
the same folders in the same run; and the output's size against the sum of the images.
"""

from __future__ import annotations

import io
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent import cpio
from agent.bake.segments import merged_members, split_segments
from agent.tools import run as run_tool

ROOT = Path(__file__).resolve().parent.parent
COUNT = 10
EXT_BYTES = 10 << 20
RUNS = 5
EPOCH = "1700000000"


def make_extensions(base: Path) -> list[Path]:
    """COUNT folders: each a manifest and 5 MiB of text-like data plus 5 MiB of random bytes."""
    rng = random.Random(10)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(2000)]
    roots = []
    for i in range(COUNT):
        root = base / f"ext{i}"
        files = root / "rootfs/usr/local/share" / f"ext{i}"
        files.mkdir(parents=True)
        (root / "manifest.yaml").write_text(
            f"version: v1alpha1\nmetadata:\n  name: ext{i}\n  version: 1.0.{i}\n"
            f"  author: bench\n  description: bench extension {i}\n")
        text = b" ".join(rng.choice(words) for _ in range(EXT_BYTES // 12))
        (files / "text").write_bytes(text[:EXT_BYTES // 2])
        (files / "random").write_bytes(rng.randbytes(EXT_BYTES // 2))
        roots.append(root)
    return roots


def timed(step: Callable[[], None]) -> tuple[float, float]:
    """Wall seconds and CPU seconds of the child processes (steadier on a shared machine)."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    step()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return time.monotonic() - started, cpu


def squash_bare(roots: list[Path], work: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    for i, root in enumerate(roots):
        run_tool(["mksquashfs", root / "rootfs", work / f"bare{i}.sqsh", "-noappend",
                  "-all-root", "-comp", "zstd", "-quiet", "-no-progress"], env=env, capture=True)


def build(roots: list[Path], initrd: Path, out: Path, jobs: int) -> None:
    argv = [sys.executable, "-m", "agent", "build", "--initramfs", str(initrd), "-o", str(out),
            "--os-version", "v1.7.0", "--jobs", str(jobs)]
    for root in roots:
        argv += ["--extension", f"dir:{root}"]
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True,
                   env=dict(os.environ, SOURCE_DATE_EPOCH=EPOCH))


def image_sizes(out: Path) -> int:
    tree = merged_members(split_segments(out.read_bytes(), str(out)))
    return sum(len(e.content()) for name, e in tree.items() if name.startswith("extensions/"))


def run(out: Path, kernels: Path) -> None:
    del kernels  # the build needs no kernel
    with tempfile.TemporaryDirectory(prefix="bench-bake.") as tmp:
        work = Path(tmp)
        roots = make_extensions(work / "exts")
        initrd = work / "initrd.img"
        initrd.write_bytes(cpio.compress(_tiny_archive(), "zstd"))
        times: dict[str, list[tuple[float, float]]] = {"bare": [], "ours": [], "serial": []}
        steps = {"bare": lambda: timed(lambda: squash_bare(roots, work)),
                 "ours": lambda: timed(lambda: build(roots, initrd, work / "out.img", 0)),
                 "serial": lambda: timed(lambda: build(roots, initrd, work / "serial.img", 1))}
        for i in range(RUNS):   # rotate the order: the machine is shared, load drifts
            for name in list(steps)[i % 3:] + list(steps)[:i % 3]:
                times[name].append(steps[name]())
        images = image_sizes(work / "out.img")
        out_size = (work / "out.img").stat().st_size
        added = out_size - initrd.stat().st_size
    (b, bc), (o, oc), (s, sc) = (min(times[k]) for k in ("bare", "ours", "serial"))
    cores = os.cpu_count() or 1
    out.write_text(
        "## Baking extensions (`overlay-agent build`)\n\n"
        f"{COUNT} extensions of {EXT_BYTES >> 20} MiB each (half text-like, half random "
        f"bytes), zstd; best wall time of {RUNS} runs (order rotated) on {cores} cores, with "
        "the CPU seconds of that run (steadier when the machine is shared). `build` is the "
        "whole command (interpreter start, validation, squashing, list, cpio, compression, "
        "atomic write).\n\n"
        "| figure | wall | CPU | goal |\n| --- | --- | --- | --- |\n"
        f"| bare `mksquashfs`, folders one after another (all cores each) | {b:.2f} s | "
        f"{bc:.2f} s | - |\n"
        f"| `overlay-agent build`, one image per core at once (`-processors` shared out) | {o:.2f} s "
        f"({o / b:.2f}x bare) | {oc:.2f} s | <= 1.2x bare |\n"
        f"| `overlay-agent build --jobs 1` (one image at a time, all cores each) | {s:.2f} s "
        f"({s / b:.2f}x bare) | {sc:.2f} s | - (comparison) |\n"
        f"| sum of the {COUNT} images | {images / 2**20:.2f} MiB | | - |\n"
        f"| bytes the build added to the initramfs | {added / 2**20:.2f} MiB "
        f"({added / images:.3f}x the images) | | about 1.0x |\n")


def _tiny_archive() -> bytes:
    buf = io.BytesIO()
    cpio.write(cpio.with_parents([cpio.regular("init", b"#!/bin/sh\n", 0o755)]), buf)
    return buf.getvalue()
