"""What a hostile list or image costs a boot: activation (both halves, in process) with
three good layers, against the same with each worst case of the reader's limits.

The bound to hold: any hostile list or image adds at most 1 s to a boot and never stops it.
Each case is timed as the median of RUNS activations; console lines are counted too (a
serial console prints about a hundred a second, so they are time as well).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent import listfile, syscalls
from agent.bake.squash import SquashJob, SquashOptions, squash_one
from agent.boot import activate
from agent.boot.activate import ActivationSettings, finish_activation, start_activation
from agent.listfile import Layer, Metadata, dump_list
from agent.statusfile import read_status

RUNS = 9
GOOD = 3


def build_pool(pool: Path) -> list[Layer]:
    import hashlib
    layers = []
    for i in range(GOOD):
        src = pool / f"src{i}"
        (src / "usr/local/share").mkdir(parents=True)
        (src / "usr/local/share/layer").write_text(str(i))
        image = pool / f"{i:03d}-g{i}.sqsh"
        squash_one(SquashJob(src, image, src.name), SquashOptions(epoch=1700000000), 1)
        shutil.rmtree(src)
        data = image.read_bytes()
        layers.append(Layer(image.name, Metadata(f"g{i}", "1"),
                            hashlib.sha256(data).hexdigest(), len(data)))
    return layers


def big_json(layers: list[Layer]) -> str:
    """Just under 4 MiB: 1000 entries with long descriptions, none of whose images exist."""
    desc = "d" * 3900
    doc = {"version": 1, "layers": [
        {"image": f"{i:03d}-x.sqsh", "sha256": "0" * 64, "size": 4096,
         "metadata": {"name": f"x{i}", "version": "1", "description": desc}}
        for i in range(listfile.MAX_LIST_LAYERS)]}
    return json.dumps(doc)


def big_yaml(layers: list[Layer]) -> str:
    """Just under the YAML limit, Talos's block style: the slow (pure Python) reader."""
    entry = "  - image: {i:03d}-y.sqsh\n    metadata:\n      name: y{i}\n      version: 1\n" \
            "      description: " + "w " * 40 + "\n"
    text, i = "layers:\n", 0
    while len(text) + len(entry) + 10 < listfile.MAX_YAML_BYTES:
        text += entry.format(i=i)
        i += 1
    return text


def alias_bomb(layers: list[Layer]) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\nlayers:\n- image: 000-g0.sqsh\n  metadata: {name: b, " \
        "version: '1', compatibility: {x: *a8}}\n"


def deep_json(layers: list[Layer]) -> str:
    return "[" * (listfile.MAX_LIST_BYTES - 1)


LISTS: dict[str, Callable[[list[Layer]], str]] = {
    "4 MiB JSON, 1000 entries, no images": big_json,
    "64 KiB YAML (Talos style, the slow reader)": big_yaml,
    "YAML alias bomb": alias_bomb,
    "4 MiB of '[' (deep JSON)": deep_json,
}


def image_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def image_sparse(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(1 << 40)


def image_dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


IMAGES: dict[str, Callable[[Path], None]] = {
    "image 1 a fifo": image_fifo,
    "image 1 sparse, 1 TiB": image_sparse,
    "image 1 a symlink to /dev/zero": image_dev_zero,
}


def once(work: Path, pool: Path, layers: list[Layer], text: str | None,
         spoil: Callable[[Path], None] | None) -> tuple[float, int, int]:
    """One activation; (ms, console lines, layers active)."""
    if work.exists():
        shutil.rmtree(work)
    for d in ("base", "root", "images", "s", "run"):
        (work / d).mkdir(parents=True)
    for layer in layers:
        shutil.copy(pool / layer.image, work / "images" / layer.image)
    (work / "extensions.yaml").write_text(dump_list(layers) if text is None else text)
    if spoil is not None:
        spoil(work / "images" / layers[1].image)
    settings = ActivationSettings(list_path=str(work / "extensions.yaml"),
                                  images_dir=str(work / "images"),
                                  status_path=str(work / "run/status.json"),
                                  staging_dir=str(work / "s"))
    lines: list[str] = []
    real, activate.report = activate.report, lines.append
    start = time.monotonic()
    try:
        root = finish_activation(start_activation(settings), str(work / "base"),
                                 str(work / "root"))
    finally:
        activate.report = real
    elapsed = (time.monotonic() - start) * 1000
    if root != str(work / "base"):
        syscalls.umount2(root, syscalls.MNT_DETACH)
    active = sum(e.phase == "active" for e in read_status(settings.status_path).extensions)
    return elapsed, len(lines), active


def run(out: Path, kernels: Path) -> None:
    del kernels
    with tempfile.TemporaryDirectory(prefix="oah", dir="/tmp") as tmp:
        syscalls.mount("bench", tmp, "tmpfs", 0, "mode=0755")
        try:
            pool = Path(tmp) / "pool"
            pool.mkdir()
            layers = build_pool(pool)
            cases: dict[str, tuple[str | None, Callable[[Path], None] | None]] = {
                "3 good layers (baseline)": (None, None)}
            cases.update({k: (make(layers), None) for k, make in LISTS.items()})
            cases.update({k: (None, spoil) for k, spoil in IMAGES.items()})
            rows = []
            for name, (text, spoil) in cases.items():
                results = [once(Path(tmp) / "w", pool, layers, text, spoil)
                           for _ in range(RUNS)]
                rows.append((name, statistics.median(r[0] for r in results), results[0][1],
                             results[0][2]))
        finally:
            syscalls.umount2(tmp, syscalls.MNT_DETACH)
    base = rows[0][1]
    table = ("| case | activation (ms) | added (ms) | console lines | layers active |\n"
             "|---|---:|---:|---:|---:|\n")
    table += "".join(f"| {name} | {ms:.1f} | {ms - base:+.1f} | {lines} | {active} |\n"
                     for name, ms, lines, active in rows)
    worst = max(ms - base for _, ms, _, _ in rows[1:])
    out.write_text(
        "## Hostile lists and images at boot (bench/bench_hostile.py)\n\n"
        f"Both activation halves in process (as PID 1 runs them), median of {RUNS} runs, "
        f"{GOOD} good squashfs layers in every case; each hostile case is the worst its "
        "reader's limits let through (agent/listfile.py). Every case boots (the bad list's "
        "layers skipped, the bad image failed), and at most 20 console lines plus one "
        f"summary are printed. Worst added time: {worst:.0f} ms (the bound: 1000 ms).\n\n"
        + table)
