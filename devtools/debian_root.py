"""Real Debian systems for the VM tier: a minimal root made with mmdebstrap (systemd, the
stock kernel, initramfs-tools or dracut), the built .deb installed with apt inside it, the
example extensions listed in /etc/overlay-agent/machine.yaml, the initramfs rebuilt by the
distribution's own tool, then an immutable root: `/` read-only in fstab on one ext4 disk,
`/var` on a second, writable one. Free of pytest (the boot benchmark uses it too).

Cached under .cache/debian: the mmdebstrap root by suite and package list, the prepared
root and its disk images by every input (base, .deb, examples, scenario). Everything run in
the chroot runs in a private mount namespace of its own, so its proc/sys/dev mounts end with
it, whatever happens.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.kernels import derive_mirrors, render_sources
from agent.tools import run
from devtools.qemu import TOKEN_KEY, BootResult, _run_group, accel_args

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "debian"
LOGS = CACHE / "logs"
EXAMPLES = ROOT / "examples"
MEMORY_MB = 1024
BOOT_TIMEOUT = 420.0      # systemd under TCG on a shared 2-core machine: 40-120 s a boot
FAKE_TIME = "1700000000"
MACHINE_ID = "0a6e9e8b7c4d4f1e9a2b3c4d5e6f7a8b\n"

# The package's dependencies come with the root, so `apt-get install ./x.deb` needs no mirror.
BASE_PACKAGES = ("systemd", "systemd-sysv", "udev", "kmod", "linux-image-amd64",
                 "initramfs-tools", "python3", "python3-yaml", "python3-pyroute2",
                 "python3-psutil", "python3-structlog", "python3-pyelftools", "squashfs-tools",
                 "zstd")
SECOND_KERNEL = "linux-image-cloud-amd64"   # another flavour: another release, small

# Runs once the system is up (Type=simple: its start job ends at once, so the boot can
# finish while it waits for that); prints what it finds on the console, then powers off.
CHECK_SCRIPT = r"""#!/bin/sh
token=$(sed -n 's/.*oa_test\.token=\([^ ]*\).*/\1/p' /proc/cmdline)
say() { echo "$1 $token $2" > /dev/console; }
check() { name=$1; shift; if "$@" > /dev/null 2>&1; then say PASS "$name"; else say FAIL "$name"; fi; }
state=$(systemctl is-system-running --wait)
say STATE "$state"
systemd-analyze time 2>&1 | while read -r line; do say ANALYZE "$line"; done
say MULTI-USER-US "$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)"
systemctl --failed --no-legend --plain | while read -r unit rest; do say FAILED-UNIT "$unit"; done
check hello-runs sh -c '/usr/local/bin/hello-extension | grep -q "hello from the hello extension"'
check firmware-readable sh -c 'test "$(cat /usr/lib/firmware/overlay-agent/example.bin)" != ""'
overlay-agent get extensions 2>&1 | while read -r line; do say GET "$line"; done
check journal-status-unit sh -c 'journalctl -b -o cat -u overlay-agent-status.service | grep -q "000-hello"'
check metrics-file test -s /var/lib/prometheus/node-exporter/overlay_agent.prom
grep -h '^overlay_agent_layer_mounted' /var/lib/prometheus/node-exporter/overlay_agent.prom 2>/dev/null |
  while read -r line; do say METRIC "$line"; done
say ROOT "$(python3 -c 'import json; d = json.load(open("/run/overlay-agent/status.json")); u = d["upper"] or {}; print(d["root_mode"], u.get("source", "-"), u.get("shadowed_count", "-"))' 2>&1)"
if grep -q 'overlay_agent\.upper=' /proc/cmdline; then
  check root-remount-rw mount -o remount,rw /
  check root-writable sh -c 'echo oa > /etc/oa-rw-probe && test "$(cat /etc/oa-rw-probe)" = oa'
  check write-in-upper sh -c 'test "$(cat /run/oa/upper/upper/etc/oa-rw-probe)" = oa'
else
  check root-read-only sh -c '! touch /.oa-rw-probe'
fi
check base-read-only awk '$1 == "/dev/vda" && $4 !~ /^ro(,|$)/ { bad = 1 } END { exit bad }' /proc/mounts
check var-writable sh -c 'touch /var/.oa-rw-probe'
say DONE "$(uname -r)"
systemctl poweroff --no-block
"""
CHECK_UNIT = """[Unit]
Description=overlay-agent VM checks
After=multi-user.target

[Service]
Type=simple
ExecStart=/usr/local/sbin/oa-vm-checks

[Install]
WantedBy=multi-user.target
"""
# a generic image, not tuned to the machine that builds it (this chroot's host); zstd as
# initramfs-tools (dracut's default gzip -9 of a generic image takes minutes)
DRACUT_CONF = 'hostonly="no"\ncompress="zstd"\n'
ROOT_UUID = "5e0c1f2a-9b7d-4e36-a1c8-0d2f4b6e8a13"
VAR_UUID = "9c3b7a1e-2f4d-4b8a-8e6c-1d0f2a3b4c5d"
# as Debian's installer writes it: the `/` line asks systemd-remount-fs for read-write
FSTAB = f"""# /etc/fstab: static file system information.
UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1
UUID={VAR_UUID} /var ext4 defaults 0 2
tmpfs /tmp tmpfs defaults,nosuid,nodev 0 0
"""
UPPER_LABEL = "oa-upper"     # the blank third disk of a device-upper boot


def key_of(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def tree_key(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def in_chroot(tree: Path, script: str, *, check: bool = True, network: bool = False,
              timeout: float = 1800, scratch: Path | None = None, var: Path | None = None,
              ) -> subprocess.CompletedProcess[str]:
    """Run `script` with sh in the chroot, /proc /sys /dev mounted in a private mount
    namespace that ends with the command (nothing can be left mounted); with `network`,
    the host's resolv.conf is bound over the root's for apt. With `scratch`, the chroot is
    an overlay on the tree (and on `var` at /var: a prepared root's, moved out) whose changes
    land in scratch/upper and scratch/var-upper: the tree stays as it was."""
    setup = f'set -e; r="{tree}"; '
    if scratch is not None:
        setup += (f's="{scratch}"; mkdir -p "$s/upper" "$s/work" "$s/merged"; mount -t overlay '
                  'oa-scratch -o "lowerdir=$r,upperdir=$s/upper,workdir=$s/work" "$s/merged"; '
                  'r="$s/merged"; ')
        if var is not None:
            setup += (f'mkdir -p "$s/var-upper" "$s/var-work"; mount -t overlay oa-scratch -o '
                      f'"lowerdir={var},upperdir=$s/var-upper,workdir=$s/var-work" "$r/var"; ')
    setup += ('mount -t proc proc "$r/proc"; mount -t sysfs sys "$r/sys"; '
              'mount --rbind /dev "$r/dev"; ')
    if network:
        setup += ('[ -e "$r/etc/resolv.conf" ] || : > "$r/etc/resolv.conf"; '
                  'mount --bind /etc/resolv.conf "$r/etc/resolv.conf"; ')
    setup += 'exec chroot "$r" /bin/sh -c "$1"'

    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LC_ALL": "C.UTF-8", "HOME": "/root", "SOURCE_DATE_EPOCH": FAKE_TIME}
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", setup,
                           "chroot", script], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"chroot {tree}: {script!r} exited {proc.returncode}:\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def base_root(suite: str, cache: Path = CACHE) -> Path:
    """mmdebstrap's minimal root for `suite` (initramfs-tools); built once."""
    packages = sorted(BASE_PACKAGES)
    folder = cache / f"base-{suite}-{key_of(suite, *packages)}"
    tree = folder / "root"
    if (folder / "done").exists():
        return tree
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sources = render_sources(suite, derive_mirrors()).splitlines()
    # its own proc/dev mounts in the target end with its namespace, even if it is killed
    run(["unshare", "--mount", "--propagation", "private", "mmdebstrap", "--variant=apt",
         "--mode=root", "--format=directory", f"--include={','.join(packages)}", "--skip=cleanup/apt/lists",
         "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
         "--dpkgopt=path-exclude=/usr/share/doc/*", suite, str(tree), *sources],
        capture=True, timeout=3600)
    (folder / "done").write_text("")
    return tree


@dataclass(frozen=True)
class Scenario:
    """What goes into a prepared root besides the base."""

    suite: str
    tool: str = "initramfs-tools"     # or dracut, installed over the base with apt
    second_kernel: bool = False       # SECOND_KERNEL installed once the agent is set up

    @property
    def label(self) -> str:
        return f"{self.suite}-{self.tool}" + ("-2k" if self.second_kernel else "")


BOOKWORM = Scenario("bookworm", second_kernel=True)   # the VM tier's and the benchmark's


@dataclass(frozen=True)
class Prepared:
    scenario: Scenario
    folder: Path
    tree: Path                 # the root, /var moved out to var/
    var: Path
    root_disk: Path
    var_disk: Path
    kernels: tuple[str, ...] = field(default=())   # releases with /boot/vmlinuz-R and initrd

    @property
    def main_release(self) -> str:
        """The release of linux-image-amd64 (SECOND_KERNEL is the cloud flavour)."""
        return next(r for r in self.kernels if "cloud" not in r)

    def vmlinuz(self, release: str) -> Path:
        return self.tree / "boot" / f"vmlinuz-{release}"

    def initrd(self, release: str) -> Path:
        return self.tree / "boot" / f"initrd.img-{release}"


def pack_examples(dest: Path) -> None:
    """oci-archives of the two examples, listed by a config relative to its folder."""
    from agent.image.pack import PackOptions, pack_extension

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("hello", "example-firmware"):
        pack_extension(EXAMPLES / name, dest / f"{name}.oci.tar", PackOptions(mtime=int(FAKE_TIME)))


MACHINE_YAML = """version: v1alpha1
machine:
  install:
    extensions:
      - image: oci-archive:images/hello.oci.tar
      - image: oci-archive:images/example-firmware.oci.tar
"""


def install_agent(tree: Path, deb: Path) -> None:
    shutil.copy(deb, tree / "tmp" / deb.name)
    in_chroot(tree, f"apt-get install -y -q --no-install-recommends /tmp/{deb.name}")
    (tree / "tmp" / deb.name).unlink()
    pack_examples(tree / "etc/overlay-agent/images")
    (tree / "etc/overlay-agent/machine.yaml").write_text(MACHINE_YAML)


def install_checks(tree: Path) -> None:
    script = tree / "usr/local/sbin/oa-vm-checks"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(CHECK_SCRIPT)
    script.chmod(0o755)
    (tree / "etc/systemd/system/oa-vm-checks.service").write_text(CHECK_UNIT)
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "oa-vm-checks.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/oa-vm-checks.service")
    (tree / "var/lib/prometheus/node-exporter").mkdir(parents=True, exist_ok=True)
    (tree / "etc/fstab").write_text(FSTAB)
    (tree / "etc/machine-id").write_text(MACHINE_ID)
    (tree / "etc/hostname").write_text("oa-debian\n")


def rebuild_initramfs(tree: Path, tool: str) -> str:
    """The distribution's own rebuild of every installed kernel's initramfs; its output."""
    if tool == "dracut":
        return in_chroot(tree, "dracut --force --regenerate-all 2>&1").stdout
    return in_chroot(tree, "update-initramfs -u -k all 2>&1").stdout


def kernel_releases(tree: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name.removeprefix("vmlinuz-") for p in (tree / "boot").glob("vmlinuz-*")))


def make_disk(src: Path | None, image: Path, label: str, uuid: str = "",
              slack: float = 1.3) -> None:
    """An ext4 image holding `src` (sized to it), or a blank 64 MiB one."""
    used = int(run(["du", "-sb", src], capture=True).stdout.split()[0]) if src else 0
    size_mb = max(64, int(used * slack / 2**20) + 64) if src else 64
    tmp = image.with_suffix(".tmp")
    fill = ["-d", str(src)] if src else []
    run(["mkfs.ext4", "-q", "-F", "-L", label, "-E", "root_owner=0:0", *fill,
         *(["-U", uuid] if uuid else []), tmp, f"{size_mb}M"],
        env={**os.environ, "E2FSPROGS_FAKE_TIME": FAKE_TIME}, capture=True)
    os.replace(tmp, image)


def prepare(scenario: Scenario, deb: Path, cache: Path = CACHE) -> Prepared:
    """The scenario's root with the agent installed and the initramfs rebuilt, and its two
    disk images; built once per set of inputs."""
    base = base_root(scenario.suite, cache)
    key = key_of(str(base), hashlib.sha256(deb.read_bytes()).hexdigest(), tree_key(EXAMPLES),
                 CHECK_SCRIPT, CHECK_UNIT, FSTAB, MACHINE_YAML, DRACUT_CONF, repr(scenario))
    folder = cache / f"prepared-{scenario.label}-{key}"
    tree, var = folder / "root", folder / "var"
    result = Prepared(scenario, folder, tree, var, folder / "root.ext4", folder / "var.ext4")
    if (folder / "done").exists():
        return replace(result, kernels=kernel_releases(tree))
    for stale in cache.glob(f"prepared-{scenario.label}-*"):
        shutil.rmtree(stale)
    folder.mkdir(parents=True)
    run(["cp", "-a", "--reflink=auto", base, tree])
    if scenario.tool == "dracut":     # replaces initramfs-tools
        conf = tree / "etc/dracut.conf.d"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "90-generic.conf").write_text(DRACUT_CONF)
        in_chroot(tree, "apt-get install -y -q --no-install-recommends dracut", network=True)
    install_agent(tree, deb)
    install_checks(tree)
    log = rebuild_initramfs(tree, scenario.tool)
    if scenario.second_kernel:        # its postinst builds its initramfs: the hook runs
        log += in_chroot(tree, f"apt-get install -y -q --no-install-recommends {SECOND_KERNEL} "
                         "2>&1", network=True).stdout
    (folder / "rebuild.log").write_text(log)
    shutil.move(tree / "var", var)
    (tree / "var").mkdir()
    make_disk(tree, result.root_disk, "oa-root", ROOT_UUID)
    make_disk(var, result.var_disk, "oa-var", VAR_UUID, slack=1.5)
    (folder / "done").write_text("")
    return replace(result, kernels=kernel_releases(tree))


def build_deb() -> Path:
    """dist/overlay-agent_VERSION_all.deb, built by `make deb`'s script."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build-deb.sh")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"build-deb.sh exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return ROOT / proc.stdout.strip().splitlines()[-1]


def boot_debian(prepared: Prepared, release: str, append: str, log: Path, *,
                initrd: Path | None = None, token: str = "", upper_disk: bool = False,
                root_disk: Path | None = None, timeout: float = BOOT_TIMEOUT) -> BootResult:
    """Boot the root's own kernel and initramfs (or `initrd`) with the root disk (or
    `root_disk`) writable as an installed system's is (writes go to a scratch snapshot; the
    image stays as it was), a fresh copy of the /var disk, and with `upper_disk` a blank
    ext4 third disk labelled UPPER_LABEL."""
    log.parent.mkdir(parents=True, exist_ok=True)
    scratch = log.with_suffix(".scratch")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    var = scratch / "var.ext4"
    run(["cp", "--sparse=always", "--reflink=auto", prepared.var_disk, var])
    disks = [f"file={root_disk or prepared.root_disk},format=raw,if=virtio,snapshot=on",
             f"file={var},format=raw,if=virtio"]
    if upper_disk:
        make_disk(None, scratch / "upper.ext4", UPPER_LABEL)
        disks.append(f"file={scratch / 'upper.ext4'},format=raw,if=virtio")
    cmdline = f"console=ttyS0 root=/dev/vda ro panic=-1 {append}"
    if token:
        cmdline += f" {TOKEN_KEY}={token}"
    argv = ["qemu-system-x86_64", "-nographic", "-no-reboot", "-m", str(MEMORY_MB),
            "-smp", "1", *accel_args(),
            "-kernel", str(prepared.vmlinuz(release)),
            "-initrd", str(initrd or prepared.initrd(release)), "-append", cmdline,
            "-serial", f"file:{log}", "-monitor", "none"]
    for disk in disks:
        argv += ["-drive", disk]
    log.write_bytes(b"")
    try:    # snapshot=on keeps its scratch file in TMPDIR: this boot's folder
        code, seconds = _run_group(argv, timeout, log.with_name(log.name + ".qemu"),
                                   env={**os.environ, "TMPDIR": str(scratch)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    output = log.read_bytes().decode(errors="replace").replace("\r\n", "\n")
    return BootResult(output=output, exit_code=code, timed_out=code is None, seconds=seconds)


@dataclass(frozen=True)
class GuestReport:
    """One boot through the check unit (CHECK_SCRIPT): the console, and what it said."""

    result: BootResult
    token: str
    log: Path

    def lines(self, kind: str) -> list[str]:
        """What the check script said of one kind (PASS, FAIL, GET, STATE, ROOT...)."""
        prefix = f"{kind} {self.token} "
        return [line.split(prefix, 1)[1].rstrip() for line in self.result.output.splitlines()
                if prefix in line]


def run_checks(prepared: Prepared, name: str, append: str = "", *,
               release: str | None = None, initrd: Path | None = None,
               upper_disk: bool = False, root_disk: Path | None = None) -> GuestReport:
    """Boot `prepared` (its main kernel unless `release`) with `append` on the command
    line; the console goes to LOGS/<label>-<name>.log. RuntimeError, with the console's
    end, when the guest did not get through its checks."""
    token = secrets.token_hex(6)
    log = LOGS / f"{prepared.scenario.label}-{name}.log"
    result = boot_debian(prepared, release or prepared.main_release, append, log,
                         initrd=initrd, token=token, upper_disk=upper_disk,
                         root_disk=root_disk)
    report = GuestReport(result, token, log)
    if result.timed_out or not report.lines("DONE"):
        why = "timed out" if result.timed_out else "ended before its checks were done"
        raise RuntimeError(f"{log}: the guest {why} ({result.seconds:.0f} s):\n"
                           f"{result.output[-4000:]}")
    return report
