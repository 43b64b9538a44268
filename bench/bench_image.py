"""Extension images: pack, fetch (verify + safe unpack) and validate one extension of 2000
files / 32 MiB, and the hostile-layer refusals, all in this process (best of 3 runs).
"""

from __future__ import annotations

import io
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent.errors import UnpackError
from agent.image import FetchOptions, ValidateOptions, fetch_extension, validate_extensions
from agent.image.pack import PackOptions, pack_extension
from agent.image.unpack import unpack_layer
from devtools.layers import hostile_cases

FILES = 2000
TOTAL = 32 << 20
RUNS = 3


def make_extension(root: Path) -> None:
    rng = random.Random(3)
    (root / "manifest.yaml").write_text(
        "version: v1alpha1\nmetadata:\n  name: bench\n  version: 1.0.0\n  author: bench\n"
        "  description: bench\n  compatibility:\n    talos:\n      version: '>= v1.0.0'\n")
    for i in range(FILES):
        folder = root / "rootfs/usr/local/share/bench" / f"d{i % 50:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        # half random, half zeros: a realistic mix for gzip
        size = TOTAL // FILES
        (folder / f"f{i:04d}").write_bytes(rng.randbytes(size // 2) + bytes(size - size // 2))


def best(fn: Callable[[int], object]) -> float:
    times = []
    for i in range(RUNS):
        start = time.monotonic()
        fn(i)
        times.append(time.monotonic() - start)
    return min(times)


def hostile_layers() -> list[bytes]:
    return [c[1][0] for c in hostile_cases(Path("/x")) if len(c[1]) == 1]


def time_hostile(work: Path) -> tuple[float, int]:
    layers = hostile_layers()
    start = time.monotonic()
    refused = 0
    for i, data in enumerate(layers):
        staging = work / f"hostile{i}"
        staging.mkdir()
        try:
            unpack_layer(io.BytesIO(data), staging, "bench", 1 << 20)
        except UnpackError:
            refused += 1
    return time.monotonic() - start, refused


def run(out: Path, kernels: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        work = Path(tmp)
        src = work / "ext"
        src.mkdir()
        make_extension(src)
        archive = work / "ext.tar"
        t_pack = best(lambda i: pack_extension(src, archive, PackOptions()))
        t_fetch = best(lambda i: fetch_extension(f"oci-archive:{archive}", work / f"s{i}",
                                                 FetchOptions()))
        ext = fetch_extension(f"oci-archive:{archive}", work / "v", FetchOptions())
        t_validate = best(lambda i: validate_extensions([ext], ValidateOptions()))
        t_hostile, refused = time_hostile(work)
        size = archive.stat().st_size
    mib = TOTAL / 2**20
    out.write_text(
        "## Extension images (pack, fetch, validate)\n\n"
        f"One extension of {FILES} files, {mib:.0f} MiB (half random bytes); best of {RUNS}.\n\n"
        "| step | figure | goal |\n| --- | --- | --- |\n"
        f"| pack (validate + gzip layer + oci-archive, {size / 2**20:.1f} MiB out) "
        f"| {t_pack:.2f} s ({mib / t_pack:.0f} MiB/s) | < 5 s |\n"
        f"| fetch oci-archive (verify every blob + safe unpack) | {t_fetch:.2f} s "
        f"({mib / t_fetch:.0f} MiB/s) | < 3 s |\n"
        f"| validate ({FILES} files) | {t_validate * 1000:.0f} ms | < 500 ms |\n"
        f"| hostile single layers refused: {refused} | {t_hostile * 1000:.0f} ms "
        "| all, < 2000 ms |\n")
