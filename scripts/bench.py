"""`make bench`: run every benchmark module and gather their sections in one results file.

Each module under bench/ exposes `run(out: pathlib.Path, kernels: pathlib.Path) -> None`
that writes its own markdown section; this script describes the machine once and
concatenates the sections in a fixed order.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODULES = (
    "bench_boot",
    "bench_bake",
    "bench_image",
    "bench_activate",
    "bench_upper",
    "bench_initramfs",
    "bench_hostile",
    "bench_verity",
    "bench_debian",
)


def describe_machine() -> str:
    osrel = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines()
                 if "=" in line)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), "unknown")
    return (f"- date: {datetime.date.today().isoformat()}\n"
            f"- OS: {osrel.get('PRETTY_NAME', '?').strip(chr(34))}, host kernel {platform.release()}\n"
            f"- CPU: {os.cpu_count()} x {cpu}; memory {mem:.0f} GiB\n"
            f"- Python {platform.python_version()}; KVM usable: "
            f"{'yes' if os.environ.get('OVERLAY_AGENT_KVM') == '1' else 'probed per run'}\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernels", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", action="append", default=[], help="run only these modules")
    args = ap.parse_args()
    sections = [f"# overlay-agent benchmark results\n\n## Machine\n\n{describe_machine()}"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODULES:
            if args.only and name not in args.only:
                continue
            part = Path(tmp) / f"{name}.md"
            print(f"bench: {name}", flush=True)
            importlib.import_module(f"bench.{name}").run(part, args.kernels)
            sections.append(part.read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text("\n".join(sections))
    tmp_out.replace(args.out)
    print(f"bench: results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
