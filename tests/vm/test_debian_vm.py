"""Real Debian systems end to end: the .deb installed with apt in a debootstrapped root, the
two examples listed in /etc/overlay-agent/machine.yaml, the initramfs rebuilt by the
distribution's tool, the installer's fstab (`UUID=... / ext4 errors=remount-ro 0 1`, `/var`
on its own disk), booted with the root's own kernel and initramfs. The guest's check unit
prints what it finds on the console (see devtools.debian_root.CHECK_SCRIPT); the
assertions here read those lines.

Both suites: the happy path (the read-only root). Bookworm: a second kernel installed after
the agent gets the extensions in its own initramfs (read back with `inspect`; booting it
would add minutes), overlay_agent.disable, an image corrupted after baking (with a tmpfs
upper: one boot for both), an unreachable extension failing update-initramfs, dracut with
systemd in the initramfs, and a store setting: the images on the root filesystem, checked
by dm-verity. Trixie: a device upper on a third disk.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent import cpio, listfile
from devtools.debian_root import (
    BOOKWORM,
    LOGS,
    UPPER_LABEL,
    GuestReport,
    Prepared,
    Scenario,
    in_chroot,
    prepare,
    run_checks,
)

ROOT = Path(__file__).resolve().parents[2]
SUITES = ("bookworm", "trixie")
# what the check unit finds on the read-only root, and with a writable upper
ALL_CHECKS = {"hello-runs", "firmware-readable", "journal-status-unit", "metrics-file",
              "root-read-only", "base-read-only", "var-writable"}
WRITABLE_CHECKS = ALL_CHECKS - {"root-read-only"} | {"root-remount-rw", "root-writable",
                                                    "write-in-upper"}


@pytest.fixture(scope="session", params=SUITES)
def debian(request: pytest.FixtureRequest, deb_package: Path) -> Prepared:
    return prepare(BOOKWORM if request.param == "bookworm" else Scenario(request.param),
                   deb_package)


@pytest.fixture(scope="session")
def bookworm(deb_package: Path) -> Prepared:
    return prepare(BOOKWORM, deb_package)


@pytest.fixture(scope="session")
def trixie(deb_package: Path) -> Prepared:
    return prepare(Scenario("trixie"), deb_package)


def boot(prepared: Prepared, name: str, append: str = "", **kwargs: object) -> GuestReport:
    try:
        report = run_checks(prepared, name, append, **kwargs)  # type: ignore[arg-type]
    except RuntimeError as exc:
        pytest.fail(str(exc))
    assert "Traceback" not in report.result.output
    return report


def extension_rows(report: GuestReport) -> dict[str, list[str]]:
    """`overlay-agent get extensions` as the guest printed it: ID -> the other columns."""
    rows = [line.split() for line in report.lines("GET")]
    assert rows and rows[0][:4] == ["NODE", "NAMESPACE", "TYPE", "ID"], rows
    return {row[3]: row[4:] for row in rows[1:] if not row[0].startswith("overlay-agent:")}


def assert_running(report: GuestReport) -> None:
    assert report.lines("STATE") == ["running"], (
        report.lines("FAILED-UNIT"), report.result.output[-4000:])
    assert report.lines("FAILED-UNIT") == []


def inspect(initrd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "agent", "inspect", str(initrd)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_happy_path(debian: Prepared) -> None:
    """The read-only root with the installer's fstab: systemd does not remount it."""
    report = boot(debian, "happy")
    assert_running(report)
    assert set(report.lines("PASS")) == ALL_CHECKS
    assert report.lines("FAIL") == []
    assert report.lines("ROOT") == ["read-only - -"]
    rows = extension_rows(report)
    assert sorted(rows) == ["000-hello", "001-example-firmware"]
    assert rows["000-hello"][:3] == ["1", "hello", "1.0.0"]
    assert report.lines("METRIC") == [
        'overlay_agent_layer_mounted{id="000-hello",name="hello"} 1',
        'overlay_agent_layer_mounted{id="001-example-firmware",name="example-firmware"} 1']
    assert report.lines("DONE") == [debian.main_release]


def test_device_upper(trixie: Prepared) -> None:
    """A blank ext4 third disk named by its label: `/` writable, remount-rw works, the
    write lands on the device, the base still read-only below; the status unit counted
    no shadowing file."""
    report = boot(trixie, "device-upper", f"overlay_agent.upper=LABEL={UPPER_LABEL}",
                  upper_disk=True)
    assert_running(report)
    assert set(report.lines("PASS")) == WRITABLE_CHECKS, report.lines("FAIL")
    assert report.lines("FAIL") == []
    assert report.lines("ROOT") == ["persistent /dev/vdc 0"]
    assert sorted(extension_rows(report)) == ["000-hello", "001-example-firmware"]
    assert not [line for line in report.lines("GET") if line.startswith("overlay-agent:")]


def test_second_kernel_gets_the_extensions(bookworm: Prepared) -> None:
    """Installed after the agent: its postinst's update-initramfs ran the hook."""
    second = [r for r in bookworm.kernels if "cloud" in r]
    assert len(second) == 1 and len(bookworm.kernels) == 2, bookworm.kernels
    for release in bookworm.kernels:
        listing = inspect(bookworm.initrd(release))
        assert re.search(r"000-hello\b.*\bok\b", listing), listing
        assert re.search(r"001-example-firmware\b.*\bok\b", listing), listing
    log = (bookworm.folder / "rebuild.log").read_text()
    assert f"update-initramfs: Generating /boot/initrd.img-{second[0]}" in log
    assert (f"overlay-agent: initramfs for {second[0]}: agent runtime " in log), log[-3000:]


def test_disable(bookworm: Prepared) -> None:
    """The stock system: systemd remounts the root read-write, as the fstab says."""
    report = boot(bookworm, "disable", "overlay_agent.disable")
    assert_running(report)
    fails = report.lines("FAIL")
    assert set(fails) == {"hello-runs", "firmware-readable", "root-read-only", "base-read-only"}
    rows = extension_rows(report)
    assert [rows[i][3:] for i in sorted(rows)] == [["skipped", "overlay_agent.disable"]] * 2


def corrupted_initrd(prepared: Prepared, out: Path) -> Path:
    """The initrd with an appended archive whose 000-hello.sqsh has one byte flipped (the
    kernel unpacks concatenated archives in order: later members win)."""
    from agent.bake.segments import merged_members, split_segments

    initrd = prepared.initrd(prepared.main_release)
    blob = initrd.read_bytes()
    members = merged_members(split_segments(blob, str(initrd)))
    image = bytearray(members["extensions/000-hello.sqsh"].content())
    image[len(image) // 2] ^= 0xFF
    buf = io.BytesIO()
    cpio.write(cpio.with_parents([cpio.regular("extensions/000-hello.sqsh", bytes(image))]),
               buf)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob + b"\0" * (-len(blob) % 4) + buf.getvalue())
    return out


def test_corrupted_image_is_skipped_the_other_activates(bookworm: Prepared) -> None:
    """With a tmpfs upper (one boot shows both): the layer that passes its check stacks
    under a writable `/`."""
    initrd = corrupted_initrd(bookworm, LOGS / "initrd-corrupted")
    try:
        report = boot(bookworm, "corrupted-tmpfs", "overlay_agent.upper=tmpfs", initrd=initrd)
    finally:
        initrd.unlink()
    assert_running(report)
    assert report.lines("FAIL") == ["hello-runs"]
    assert set(report.lines("PASS")) == WRITABLE_CHECKS - {"hello-runs"}
    assert report.lines("ROOT") == ["volatile tmpfs 0"]
    rows = extension_rows(report)
    assert rows["000-hello"][3:5] == ["sha256", "failed"]     # CHECK, PHASE
    assert "sha256" in " ".join(rows["000-hello"][5:])
    assert rows["001-example-firmware"][3:] == ["sha256", "active"]


def test_unreachable_uncached_extension_fails_update_initramfs(bookworm: Prepared) -> None:
    """One line names the extension; update-initramfs fails and the old initrd stays."""
    config = bookworm.tree / "etc/overlay-agent/machine.yaml"
    release = bookworm.main_release
    before = bookworm.initrd(release).read_bytes()
    good = config.read_text()
    source = "docker://127.0.0.1:9/oa/none:1.0"
    config.write_text(good.replace("      - image: oci-archive:images/hello.oci.tar\n",
                                   f"      - image: {source}\n"))
    try:
        proc = in_chroot(bookworm.tree, f"TMPDIR=/tmp update-initramfs -u -k {release} 2>&1",
                         check=False)
    finally:
        config.write_text(good)
    assert proc.returncode != 0, proc.stdout
    named = [line for line in proc.stdout.splitlines() if line.startswith(f"{source}: ")]
    assert len(named) == 1, proc.stdout
    assert named[0].endswith("; not in the cache /var/cache/overlay-agent"), named
    assert bookworm.initrd(release).read_bytes() == before
    assert not list((bookworm.tree / "boot").glob("*.new")) + \
        list((bookworm.tree / "boot").glob("*.dpkg-bak"))


def test_dracut_systemd_initrd(deb_package: Path) -> None:
    """dracut with systemd in the initramfs: the unit stacks the root under systemd's shared
    propagation, before initrd-root-fs.target."""
    prepared = prepare(Scenario("bookworm", tool="dracut"), deb_package)
    listing = inspect(prepared.initrd(prepared.main_release))
    assert re.search(r"000-hello\b.*\bok\b", listing), listing
    report = boot(prepared, "happy")
    assert_running(report)
    assert set(report.lines("PASS")) == ALL_CHECKS
    assert sorted(extension_rows(report)) == ["000-hello", "001-example-firmware"]


STORE_DIR = "srv/overlay-agent/store"


def store_initrd(prepared: Prepared, release: str, scratch: Path) -> tuple[Path, Path, str]:
    """mkinitramfs (as update-initramfs runs it) with cryptsetup-bin installed and a store
    setting naming a folder of the root filesystem, in an overlay on the prepared root (which
    stays as it was): the initrd, the store folder, and the root filesystem's UUID."""
    from agent.boot.rootdev import probe_filesystem

    info = probe_filesystem(str(prepared.root_disk))
    assert info is not None and info.uuid
    upper = scratch / "upper"
    (upper / STORE_DIR).mkdir(parents=True)
    (upper / "etc/overlay-agent").mkdir(parents=True)
    # a folder inside the chroot is not where the root filesystem is mounted at boot:
    # STORE_UUID and STORE_PATH say where it will be
    (upper / "etc/overlay-agent/store.conf").write_text(
        f"STORE=/{STORE_DIR}\nSTORE_UUID={info.uuid}\nSTORE_PATH={STORE_DIR}\n")
    log = in_chroot(prepared.tree, "apt-get install -y -q --no-install-recommends "
                    f"cryptsetup-bin >/dev/null && TMPDIR=/tmp mkinitramfs -o /tmp/oa-store.img "
                    f"{release} 2>&1", network=True, scratch=scratch,
                    var=prepared.var).stdout
    assert f"2 extension(s) in the store /{STORE_DIR}: hello 1.0.0" in log, log[-3000:]
    return upper / "tmp/oa-store.img", upper / STORE_DIR, info.uuid


def root_disk_with(prepared: Prepared, store: Path, out: Path) -> Path:
    """A copy of the root disk with the store's images written into STORE_DIR (debugfs)."""
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", prepared.root_disk, out],
                   check=True)
    parts = STORE_DIR.split("/")
    commands = [f"mkdir /{'/'.join(parts[:i + 1])}" for i in range(len(parts))]
    commands += [f"write {image} /{STORE_DIR}/{image.name}" for image in store.glob("*.sqsh")]
    subprocess.run(["debugfs", "-w", "-f", "-", out], input="\n".join(commands) + "\n",
                   capture_output=True, text=True, check=True)
    listing = subprocess.run(["debugfs", "-R", f"ls -l /{STORE_DIR}", out], check=True,
                             capture_output=True, text=True).stdout
    for image in store.glob("*.sqsh"):
        assert f"{image.stat().st_size} " in listing and image.name in listing, listing
    return out


def test_store_setting_images_on_the_root_filesystem_checked_by_verity(
        bookworm: Prepared, tmp_path: Path) -> None:
    """store.conf names a folder of the root filesystem: the initrd carries only the list;
    hook mode reads the images where the root is mounted and attaches them through dm-verity
    (Debian's kernel has it; the hook copies the module)."""
    from agent.bake.segments import merged_members, split_segments

    release = bookworm.main_release
    scratch = LOGS / "store-scratch"
    disk = LOGS / "store-root.ext4"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        initrd, store, uuid = store_initrd(bookworm, release, scratch)
        members = merged_members(split_segments(initrd.read_bytes(), str(initrd)))
        assert not [name for name in members if name.startswith("extensions/")]
        layers = listfile.read_list(members["extensions.yaml"].content().decode())
        assert [(la.metadata.name, la.store, la.verity is not None) for la in layers] == [
            ("hello", uuid, True), ("example-firmware", uuid, True)]
        assert sorted(p.name for p in store.glob("*.sqsh")) == sorted(
            f"{la.sha256}.sqsh" for la in layers)
        report = boot(bookworm, "store", initrd=initrd,
                      root_disk=root_disk_with(bookworm, store, disk))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        disk.unlink(missing_ok=True)
    assert_running(report)
    assert set(report.lines("PASS")) == ALL_CHECKS
    rows = extension_rows(report)     # all active: no PHASE column, CHECK last
    assert {i: rows[i][3:] for i in rows} == {"000-hello": ["verity"],
                                              "001-example-firmware": ["verity"]}
    assert "store UUID=" not in report.result.output       # the root filesystem was not mounted again
