"""`make demo`: build the demo root and, per fetched stock kernel, an initramfs with the example
extensions baked in; boot each under QEMU and stream the guest's serial console to the
terminal. By default every kernel of `make kernels` boots, the host's own Debian release first.

Fetches nothing itself (`make kernels` does). Exit status 0 when every boot printed the demo
root's marker with its run's token and reached its end.
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
from agent.initramfs.build import InitramfsSpec, make_initramfs  # noqa: E402
from agent.kernels import SUITES, load_kernel  # noqa: E402
from agent.output import source_date_epoch  # noqa: E402
from devtools import qemu  # noqa: E402
from devtools.demo import (  # noqa: E402
    DONE_MARKER,
    MARKER,
    build_demo_root,
    default_suites,
    describe,
    host_suite,
)
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


def demo_suite(suite: str, kernels: Path, out: Path, root: Path, timeout: float) -> bool:
    kernel = load_kernel(kernels, suite)
    name = describe(suite, kernel.release)
    print(f"\ndemo: ===== {name} =====", flush=True)
    print(f"demo: building the initramfs for {name}", flush=True)
    plain = out / f"initrd-{suite}-plain.img"
    make_initramfs(InitramfsSpec(kernel.release, kernel.modules_dir, root_image=root,
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
    print(f"demo: booting {name}: {kernel.vmlinuz} with {initrd.name} ({append})", flush=True)
    stop = threading.Event()
    reader = threading.Thread(target=stream, args=(log, stop), daemon=True)
    reader.start()
    try:
        result = qemu.boot(kernel.vmlinuz, initrd, append, timeout=timeout, serial_log=log)
    finally:
        stop.set()
        reader.join()
    ok = all(result.has(line) for line in (f"{MARKER} {token}", f"kernel: Linux {kernel.release}",
                                           f"{DONE_MARKER} {token}"))
    state = "timed out" if result.timed_out else f"QEMU exited after {result.seconds:.1f} s"
    print(f"\ndemo: {name}: {'OK' if ok else 'FAILED'} ({state}); serial log in {log}",
          flush=True)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kernels", type=Path, required=True, help="cache of `make kernels`")
    ap.add_argument("--out", type=Path, required=True, help="folder for images and logs")
    ap.add_argument("--suite", action="append", choices=SUITES,
                    help="kernel to boot (repeatable; default: all, the host's release first)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per boot")
    args = ap.parse_args()
    suites = args.suite or default_suites(host_suite())
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        print("demo: building the demo root", flush=True)
        root = build_demo_root(args.out / "demo-root.sqsh", extra_init=EXAMPLES_INIT)
        results = {s: demo_suite(s, args.kernels, args.out, root, args.timeout) for s in suites}
    except AgentError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    print("\ndemo: summary: " + "; ".join(f"{s} {'OK' if ok else 'FAILED'}"
                                          for s, ok in results.items()), flush=True)
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
