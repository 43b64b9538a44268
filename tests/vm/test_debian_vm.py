"""Real Debian systems end to end: the .deb installed with apt in a debootstrapped root, the
two examples listed in /etc/overlay-agent/machine.yaml, the initramfs rebuilt by the
distribution's tool, an immutable root (`/` ro, `/var` its own disk), booted with the root's
own kernel and initramfs. The guest's check unit prints what it finds on the console (see
devtools.debian_root.CHECK_SCRIPT); the assertions here read those lines.

Both suites: the happy path. Bookworm: a second kernel installed after the agent gets the
extensions in its own initramfs (read back with `inspect`; booting it would add minutes),
overlay_agent.disable, an image corrupted after baking, an unreachable extension failing
update-initramfs, dracut with systemd in the initramfs, and a store setting: the images on
the root filesystem, checked by dm-verity.
"""

from __future__ import annotations

import io
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent import cpio, listfile
from devtools.debian_root import (
    Prepared,
    Scenario,
    boot_debian,
    guest_lines,
    in_chroot,
    prepare,
)
from devtools.qemu import BootResult

ROOT = Path(__file__).resolve().parents[2]
SUITES = ("bookworm", "trixie")
ALL_CHECKS = {"hello-runs", "firmware-readable", "journal-status-unit", "metrics-file",
              "root-read-only", "var-writable"}
LOGS = ROOT / ".cache" / "debian" / "logs"


@pytest.fixture(scope="session", params=SUITES)
def debian(request: pytest.FixtureRequest, deb_package: Path) -> Prepared:
    return prepare(Scenario(request.param, second_kernel=request.param == "bookworm"),
                   deb_package)


@pytest.fixture(scope="session")
def bookworm(deb_package: Path) -> Prepared:
    return prepare(Scenario("bookworm", second_kernel=True), deb_package)


def main_release(prepared: Prepared) -> str:
    """The release of linux-image-amd64 (the second kernel is the cloud flavour)."""
    return next(r for r in prepared.kernels if r.endswith("-amd64") and "cloud" not in r)


def boot(prepared: Prepared, name: str, append: str = "", release: str | None = None,
         initrd: Path | None = None, root_disk: Path | None = None) -> tuple[BootResult, str]:
    token = secrets.token_hex(6)
    result = boot_debian(prepared, release or main_release(prepared), append,
                         LOGS / f"{prepared.scenario.label}-{name}.log", token=token,
                         initrd=initrd, root_disk=root_disk)
    assert not result.timed_out, result.output[-4000:]
    assert guest_lines(result.output, token, "DONE"), result.output[-4000:]
    assert "Traceback" not in result.output
    return result, token


def extension_rows(result: BootResult, token: str) -> dict[str, list[str]]:
    """`overlay-agent get extensions` as the guest printed it: ID -> the other columns."""
    rows = [line.split() for line in guest_lines(result.output, token, "GET")]
    assert rows and rows[0][:4] == ["NODE", "NAMESPACE", "TYPE", "ID"], rows
    return {row[3]: row[4:] for row in rows[1:]}


def assert_running(result: BootResult, token: str) -> None:
    assert guest_lines(result.output, token, "STATE") == ["running"], (
        guest_lines(result.output, token, "FAILED-UNIT"), result.output[-4000:])
    assert guest_lines(result.output, token, "FAILED-UNIT") == []


def inspect(initrd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "agent", "inspect", str(initrd)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_happy_path(debian: Prepared) -> None:
    result, token = boot(debian, "happy")
    assert_running(result, token)
    assert set(guest_lines(result.output, token, "PASS")) == ALL_CHECKS
    assert guest_lines(result.output, token, "FAIL") == []
    rows = extension_rows(result, token)
    assert sorted(rows) == ["000-hello", "001-example-firmware"]
    assert rows["000-hello"][:3] == ["1", "hello", "1.0.0"]
    assert guest_lines(result.output, token, "METRIC") == [
        'overlay_agent_layer_mounted{id="000-hello",name="hello"} 1',
        'overlay_agent_layer_mounted{id="001-example-firmware",name="example-firmware"} 1']
    assert guest_lines(result.output, token, "DONE") == [main_release(debian)]


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
    result, token = boot(bookworm, "disable", "overlay_agent.disable")
    assert_running(result, token)
    fails = guest_lines(result.output, token, "FAIL")
    assert set(fails) == {"hello-runs", "firmware-readable"}
    rows = extension_rows(result, token)
    assert [rows[i][3:] for i in sorted(rows)] == [["skipped", "overlay_agent.disable"]] * 2


def corrupted_initrd(prepared: Prepared, out: Path) -> Path:
    """The initrd with an appended archive whose 000-hello.sqsh has one byte flipped (the
    kernel unpacks concatenated archives in order: later members win)."""
    from agent.bake.segments import merged_members, split_segments

    initrd = prepared.initrd(main_release(prepared))
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
    initrd = corrupted_initrd(bookworm, LOGS / "initrd-corrupted")
    try:
        result, token = boot(bookworm, "corrupted", initrd=initrd)
    finally:
        initrd.unlink()
    assert_running(result, token)
    assert guest_lines(result.output, token, "FAIL") == ["hello-runs"]
    rows = extension_rows(result, token)
    assert rows["000-hello"][3:5] == ["sha256", "failed"]     # CHECK, PHASE
    assert "sha256" in " ".join(rows["000-hello"][5:])
    assert rows["001-example-firmware"][3:] == ["sha256", "active"]


def test_unreachable_uncached_extension_fails_update_initramfs(bookworm: Prepared) -> None:
    """One line names the extension; update-initramfs fails and the old initrd stays."""
    config = bookworm.tree / "etc/overlay-agent/machine.yaml"
    release = main_release(bookworm)
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
    listing = inspect(prepared.initrd(main_release(prepared)))
    assert re.search(r"000-hello\b.*\bok\b", listing), listing
    result, token = boot(prepared, "happy")
    assert_running(result, token)
    assert set(guest_lines(result.output, token, "PASS")) == ALL_CHECKS
    assert sorted(extension_rows(result, token)) == ["000-hello", "001-example-firmware"]


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

    release = main_release(bookworm)
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
        result, token = boot(bookworm, "store", initrd=initrd,
                             root_disk=root_disk_with(bookworm, store, disk))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        disk.unlink(missing_ok=True)
    assert_running(result, token)
    assert set(guest_lines(result.output, token, "PASS")) == ALL_CHECKS
    rows = extension_rows(result, token)     # all active: no PHASE column, CHECK last
    assert {i: rows[i][3:] for i in rows} == {"000-hello": ["verity"],
                                              "001-example-firmware": ["verity"]}
    assert "store UUID=" not in result.output       # the root filesystem was not mounted again
