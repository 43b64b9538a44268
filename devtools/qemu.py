"""Boot a kernel + initramfs (+ optional raw disk) under QEMU, serial output to a file.

Free of pytest so scripts and benchmarks import it too. QEMU always runs in its own
process group and is killed with it, whatever happens. TCG unless OVERLAY_AGENT_KVM=1
(see kvm_works).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QEMU = "qemu-system-x86_64"
# The kernel command line key a boot's token travels under; the test and demo roots read it
# from /proc/cmdline (PID 1 passes it through).
TOKEN_KEY = "oa_test.token"   # not ours, so PID 1 leaves it alone; dotted: kept from init
MEMORY_MB = 512
KVM_ENV = "OVERLAY_AGENT_KVM"  # "1": use KVM


@dataclass(frozen=True)
class BootResult:
    output: str
    exit_code: int | None   # None when killed at the timeout
    timed_out: bool
    seconds: float

    def has(self, text: str) -> bool:
        return text in self.output


def _run_group(argv: list[str], timeout: float, log: Path | None = None,
               env: dict[str, str] | None = None) -> tuple[int | None, float]:
    """Run in a new process group; kill the whole group at the timeout or on any error."""
    start = time.monotonic()
    with open(log or os.devnull, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        return proc.wait(timeout=timeout), time.monotonic() - start
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def kvm_works() -> bool:
    """KVM only when asked for (OVERLAY_AGENT_KVM=1). On this project's machines /dev/kvm
    exists and a tiny real-mode probe passes under it when the host is idle, yet a guest
    kernel then hangs after "Probing EDD": a probe cannot tell, so TCG is the default."""
    return os.environ.get(KVM_ENV) == "1"


def accel_args(cpu: str | None = None) -> list[str]:
    """KVM with the host CPU, else TCG with RDRAND: without it the guest's crng is not seeded
    at boot and Python's start blocks ~1.5 s on /dev/urandom (real machines have RDRAND).
    `cpu` replaces the model (e.g. another vendor and signature for the microcode loader)."""
    if kvm_works():
        return ["-accel", "kvm", "-cpu", cpu or "host"]
    return ["-accel", "tcg", "-cpu", cpu or "qemu64,+rdrand"]


def qemu_argv(kernel: Path, initrd: Path, append: str, disk: Path | None,
              serial_log: Path, cpu: str | None = None,
              memory_mb: int = MEMORY_MB) -> list[str]:
    argv = [QEMU, "-nographic", "-no-reboot", "-m", str(memory_mb), "-smp", "1",
            *accel_args(cpu),
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", f"console=ttyS0 {append}".strip(),
            "-serial", f"file:{serial_log}", "-monitor", "none"]
    if disk is not None:
        argv += ["-drive", f"file={disk},format=raw,if=virtio,readonly=on"]
    return argv


def boot(kernel: Path, initrd: Path, append: str, *, disk: Path | None = None,
         timeout: float, serial_log: Path, cpu: str | None = None,
         memory_mb: int = MEMORY_MB) -> BootResult:
    """Boot once; the guest's serial console ends up in `serial_log` and in the result."""
    serial_log.parent.mkdir(parents=True, exist_ok=True)
    serial_log.write_bytes(b"")
    argv = qemu_argv(kernel, initrd, append, disk, serial_log, cpu, memory_mb)
    code, seconds = _run_group(argv, timeout, serial_log.with_name(serial_log.name + ".qemu"))
    output = serial_log.read_bytes().decode(errors="replace").replace("\r\n", "\n")
    return BootResult(output=output, exit_code=code, timed_out=code is None, seconds=seconds)
