"""`make demo`: build the demo root and an initramfs for a fetched stock kernel, boot them under
QEMU and stream the guest's serial console to the terminal.

Fetches nothing itself (`make kernels` does). Exit status 0 when the demo root printed its
marker with this run's token and reached its end.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))     # devtools/ lives beside agent/, outside the installed package

from agent.errors import AgentError  # noqa: E402
from agent.initramfs.build import InitramfsSpec, build_initramfs  # noqa: E402
from agent.kernels import SUITES, load_kernel  # noqa: E402
from agent.output import source_date_epoch  # noqa: E402
from devtools import qemu  # noqa: E402
from devtools.demo import DONE_MARKER, MARKER, build_demo_root  # noqa: E402
from devtools.examples import EXAMPLES_INIT, bake_examples  # noqa: E402


def stream(path: Path, stop: threading.Event) -> None:
    """Copy what the guest writes to its serial log onto our stdout while it runs."""
    pos = 0
    while True:
        done = stop.is_set()
        try:
            with open(path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            pos += len(chunk)
            sys.stdout.write(chunk.decode(errors="replace").replace("\r\n", "\n"))
            sys.stdout.flush()
        if done:
            return
        time.sleep(0.1)


def demo_suite(suite: str, kernels: Path, out: Path, timeout: float) -> bool:
    kernel = load_kernel(kernels, suite)
    out.mkdir(parents=True, exist_ok=True)
    print(f"demo: building the demo root and the initramfs for {suite} ({kernel.release})",
          flush=True)
    root = build_demo_root(out / "demo-root.sqsh", extra_init=EXAMPLES_INIT)
    plain = out / f"initrd-{suite}-plain.img"
    build_initramfs(InitramfsSpec(kernel.release, kernel.modules_dir, root_image=root,
                                  disk_modules=False), plain)
    initrd = out / f"initrd-{suite}.img"
    baked = bake_examples(ROOT / "examples", plain, initrd, out / "bake", base_root=root,
                          epoch=source_date_epoch())
    print(f"demo: baked {', '.join(x.image for x in baked.layers)} into {initrd.name} "
          f"(packed examples, built from examples/machine.yaml)", flush=True)
    token = secrets.token_hex(6)
    log = out / f"serial-{suite}.log"
    log.write_bytes(b"")
    append = f"loglevel=3 panic=5 {qemu.TOKEN_KEY}={token}"
    print(f"demo: booting {kernel.vmlinuz} with {initrd.name} ({append})", flush=True)
    stop = threading.Event()
    reader = threading.Thread(target=stream, args=(log, stop), daemon=True)
    reader.start()
    try:
        result = qemu.boot(kernel.vmlinuz, initrd, append, timeout=timeout, serial_log=log)
    finally:
        stop.set()
        reader.join()
    ok = bool(result.has(f"{MARKER} {token}") and result.has(f"{DONE_MARKER} {token}"))
    state = "timed out" if result.timed_out else f"QEMU exited after {result.seconds:.1f} s"
    print(f"\ndemo: {suite}: {'OK' if ok else 'FAILED'} ({state}); serial log in {log}",
          flush=True)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kernels", type=Path, required=True, help="cache of `make kernels`")
    ap.add_argument("--out", type=Path, required=True, help="folder for images and logs")
    ap.add_argument("--suite", action="append", choices=SUITES,
                    help="kernel to boot (repeatable; default bookworm)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per boot")
    args = ap.parse_args()
    try:
        results = [demo_suite(s, args.kernels, args.out, args.timeout)
                   for s in (args.suite or ["bookworm"])]
    except AgentError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
