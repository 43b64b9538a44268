"""One squashfs image per extension, several at a time, reproducible.

mksquashfs >= 4.4 (Debian 12: 4.5.1, Debian 13: 4.6.x) is reproducible by default; fixing
the creation and file times and dropping owners and xattrs makes the bytes depend only on
the tree's names, modes and contents. Directory entries are sorted by mksquashfs itself.
"""

from __future__ import annotations

import enum
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from agent.tools import run


class Compression(enum.Enum):
    ZSTD = "zstd"
    XZ = "xz"


@dataclass(frozen=True)
class SquashOptions:
    compression: Compression = Compression.ZSTD
    epoch: int = 0          # SOURCE_DATE_EPOCH: every timestamp in the image
    jobs: int = 0           # images built at once; 0 = one per core


@dataclass(frozen=True)
class SquashJob:
    source: Path            # the tree to pack (an extension's rootfs/)
    image: Path             # the .sqsh file to write
    label: str              # shown in progress lines


def squash_argv(job: SquashJob, options: SquashOptions, processors: int) -> list[str]:
    """The mksquashfs command line for one image."""
    return ["mksquashfs", str(job.source), str(job.image), "-noappend", "-all-root",
            "-no-xattrs", "-comp", options.compression.value,
            "-mkfs-time", str(options.epoch), "-all-time", str(options.epoch),
            "-processors", str(processors), "-quiet", "-no-progress"]


def plan_parallelism(count: int, jobs: int, cores: int | None = None) -> tuple[int, int]:
    """(images at once, mksquashfs threads each): one image per core, the cores shared out.
    On 2 cores this matched one image at a time with all threads and used the least CPU
    (bench/bench_bake.py); it also overlaps each image's single-threaded phases."""
    cores = cores or os.cpu_count() or 1
    workers = max(1, min(count, jobs or cores))
    return workers, max(1, cores // workers)


def squash_one(job: SquashJob, options: SquashOptions, processors: int) -> Path:
    job.image.parent.mkdir(parents=True, exist_ok=True)
    # mksquashfs refuses SOURCE_DATE_EPOCH together with -mkfs-time/-all-time.
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    run(squash_argv(job, options, processors), capture=True, env=env)
    return job.image


def squash_all(jobs: Sequence[SquashJob], options: SquashOptions,
               progress: Callable[[str], None] | None = None) -> list[Path]:
    """Build every image (in parallel); return their paths in the order of `jobs`."""
    if not jobs:
        return []
    workers, processors = plan_parallelism(len(jobs), options.jobs)
    done: list[SquashJob] = []
    lock = threading.Lock()

    def build(job: SquashJob) -> Path:
        path = squash_one(job, options, processors)
        with lock:
            done.append(job)
            if progress is not None:
                progress(f"[{len(done)}/{len(jobs)}] squashed {job.label} "
                         f"({path.stat().st_size} bytes)")
        return path

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(build, jobs))
