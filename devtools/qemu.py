"""Boot a kernel + initramfs (+ optional raw disk) under QEMU, serial output to a file.

Free of pytest so scripts and benchmarks import it too. QEMU always runs in its own
process group and is killed with it, whatever happens. KVM is used only when a probe
shows it works and is fast (a /dev/kvm that opens is not enough: without nested
virtualisation a guest may crawl or hang), else TCG.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KVM_CACHE = ROOT / ".cache" / "kvm-probe"   # "BOOT_ID 0|1": not in /tmp, which tests keep clean
QEMU = "qemu-system-x86_64"
# The kernel command line key a boot's token travels under; the test and demo roots read it
# from /proc/cmdline (PID 1 passes it through).
TOKEN_KEY = "oa_test.token"   # not ours, so PID 1 leaves it alone; dotted: kept from init
MEMORY_MB = 512
KVM_PROBE_LIMIT = 2.0   # seconds; TCG runs the probe in about 0.1 s, a working KVM faster
KVM_ENV = "OVERLAY_AGENT_KVM"  # "1"/"0" overrides the probe
_kvm_answer: bool | None = None

# A boot sector that writes 1 to the isa-debug-exit port and halts: QEMU exits with 3.
_PROBE_SECTOR = bytes([0xB0, 0x01, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD])
_PROBE_EXIT = 3


@dataclass(frozen=True)
class BootResult:
    output: str
    exit_code: int | None   # None when killed at the timeout
    timed_out: bool
    seconds: float

    def has(self, text: str) -> bool:
        return text in self.output


def _probe_image(folder: Path) -> Path:
    image = folder / "kvm-probe.img"
    image.write_bytes(_PROBE_SECTOR + bytes(510 - len(_PROBE_SECTOR)) + b"\x55\xaa")
    return image


def _run_group(argv: list[str], timeout: float,
               log: Path | None = None) -> tuple[int | None, float]:
    """Run in a new process group; kill the whole group at the timeout or on any error."""
    start = time.monotonic()
    with open(log or os.devnull, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait(timeout=timeout), time.monotonic() - start
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _probe_kvm() -> bool:
    if not (os.access("/dev/kvm", os.R_OK | os.W_OK) and shutil.which(QEMU)):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        argv = [QEMU, "-accel", "kvm", "-M", "pc", "-m", "16", "-nodefaults",
                "-display", "none", "-no-reboot",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "-drive", f"file={_probe_image(Path(tmp))},format=raw,if=floppy"]
        code, _ = _run_group(argv, timeout=KVM_PROBE_LIMIT)
    return code == _PROBE_EXIT


def kvm_works() -> bool:
    """Probe once per host boot (answer cached in .cache under the boot id)."""
    global _kvm_answer
    if os.environ.get(KVM_ENV) in ("0", "1"):
        return os.environ[KVM_ENV] == "1"
    if _kvm_answer is None:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        try:
            cached_id, answer = KVM_CACHE.read_text().split()
        except (OSError, ValueError):
            cached_id, answer = "", ""
        if cached_id == boot_id:
            _kvm_answer = answer == "1"
        else:
            _kvm_answer = _probe_kvm()
            KVM_CACHE.parent.mkdir(parents=True, exist_ok=True)
            KVM_CACHE.write_text(f"{boot_id} {int(_kvm_answer)}\n")
    return _kvm_answer


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
