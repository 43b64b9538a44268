"""Size of the agent's Python runtime inside the initramfs, and of the whole initramfs for each
fetched stock kernel (zstd, the builder's defaults)."""

from __future__ import annotations

import io
import stat
import tempfile
import time
from pathlib import Path

from agent import cpio
from agent.initramfs.build import InitramfsSpec, make_initramfs
from agent.initramfs.pyruntime import ENTRY_MODULES, build_runtime
from agent.kernels import SUITES, load_kernel

RUNTIME_GOAL = 6 << 20
MIB = float(1 << 20)


def runtime_figures(entry_modules: tuple[str, ...] = ENTRY_MODULES,
                    ) -> tuple[int, int, int, int]:
    """(compressed bytes, uncompressed bytes, .pyc count, ELF count) of the runtime alone."""
    runtime = build_runtime(entry_modules, mtime=0)
    members = cpio.with_parents(runtime.entries)
    buf = io.BytesIO()
    cpio.write(members, buf)
    pycs = sum(1 for e in members if e.name.endswith(".pyc"))
    raw = sum(len(e.content()) for e in members if stat.S_ISREG(e.mode))
    return len(cpio.compress(buf.getvalue(), "zstd")), raw, pycs, len(runtime.elf_files)


def run(out: Path, kernels: Path) -> None:
    packed, raw, pycs, elves = runtime_figures()
    verdict = "met" if packed <= RUNTIME_GOAL else "NOT met"
    lines = [
        "## Initramfs size (`bench/bench_initramfs.py`)\n",
        "| figure | value | goal |",
        "| --- | --- | --- |",
        f"| Python runtime + agent, zstd -19 | {packed / MIB:.2f} MiB "
        f"({raw / MIB:.1f} MiB unpacked, {pycs} .pyc, {elves} ELF files) "
        f"| at most {RUNTIME_GOAL / MIB:.0f} MiB ({verdict}) |",
    ]
    light = tuple(m for m in ENTRY_MODULES if m != "agent.boot.uevent")
    packed, raw, pycs, elves = runtime_figures(light)
    lines.append(f"| the same without pyroute2 (uevent wait) | {packed / MIB:.2f} MiB "
                 f"({raw / MIB:.1f} MiB unpacked, {pycs} .pyc, {elves} ELF files) "
                 "| for comparison |")
    with tempfile.TemporaryDirectory() as tmp:
        for suite in SUITES:
            if not (kernels / suite / "kernel-release").exists():
                lines.append(f"| initramfs, {suite} | not fetched | |")
                continue
            k = load_kernel(kernels, suite)
            for disk in (True, False):
                start = time.monotonic()
                report = make_initramfs(
                    InitramfsSpec(k.release, k.modules_dir, disk_modules=disk, mtime=0),
                    Path(tmp) / f"{suite}-{disk}.img")
                took = time.monotonic() - start
                what = "with disk modules" if disk else "`--no-disk-modules`"
                lines.append(
                    f"| initramfs, {suite} ({k.release}), {what} | {report.size / MIB:.2f} MiB "
                    f"({len(report.modules)} modules; built and verified in {took:.1f} s) "
                    "| runtime + modules, no root image |")
    lines.append("")
    no_ssl = tuple(m for m in ENTRY_MODULES if m != "_hashlib")
    packed, raw, pycs, elves = runtime_figures(no_ssl)
    lines.insert(5, f"| the same without OpenSSL's sha256 (`_hashlib`, libcrypto) | "
                 f"{packed / MIB:.2f} MiB ({raw / MIB:.1f} MiB unpacked) | for comparison |")
    lines.append("")
    lines.append("The runtime figure is the archive of the interpreter, its shared libraries "
                 "and the imported modules alone (.pyc compiled with -OO). Its largest parts: "
                 "the interpreter, libcrypto (kept: OpenSSL hashes extension images about 5x "
                 "faster than Python's built-in sha256), and asyncio under pyroute2's uevent "
                 "socket (pyroute2's package import, with its ssl and sqlite3 users, is "
                 "bypassed by agent/boot/uevent.py).\n")
    out.write_text("\n".join(lines))
