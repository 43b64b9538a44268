"""Activation on this machine's kernel: real mksquashfs images, loop devices, overlayfs.

Each layer i ships usr/local/share/layer (= "i": the topmost wins) and a unique
usr/local/share/only-i. Faults are injected at the agent.syscalls seam or made for real.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import listfile, syscalls
from agent.boot import activate, overlay, upper, verify
from agent.boot.activate import (
    ActivationSettings,
    activate_extensions,
    activate_mounted_root,
    finish_activation,
    start_activation,
)
from agent.boot.cmdline import scan_cmdline
from agent.cli import main
from agent.errors import BootError
from agent.listfile import Layer, Metadata, dump_list
from agent.livecheck import with_live_phases
from agent.statusfile import (
    ACTIVE,
    API_FSCONFIG,
    API_MOUNT,
    API_NONE,
    FAILED,
    SKIPPED,
    read_status,
)
from agent.tools import run

SHARE = "usr/local/share"
MS_SHARED = 1 << 20


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """Layer images built once per session, on demand."""
    root = tmp_path_factory.mktemp("images")

    def build(i: int) -> Path:
        image = root / f"{i:03d}-ext{i}.sqsh"
        if not image.exists():
            src = root / f"src{i}"
            (src / SHARE).mkdir(parents=True)
            (src / SHARE / "layer").write_text(str(i))
            (src / SHARE / f"only-{i}").write_text(f"from {i}")
            run(["mksquashfs", src, image, "-quiet", "-no-progress", "-noappend", "-all-root",
                 "-processors", "1"])
            shutil.rmtree(src)
        return image

    return build


def no_processes(*args: object, **kwargs: object) -> None:
    raise AssertionError("activation started a process (mount, losetup...)")


@dataclass
class Env:
    work: Path          # short path: staging dirs must fit one mount(2) page for 120 layers
    base: Path
    target: Path
    images: Path
    lines: list[str]

    @property
    def settings(self) -> ActivationSettings:
        return ActivationSettings(list_path=str(self.work / "extensions.yaml"),
                                  images_dir=str(self.images),
                                  status_path=str(self.work / "run/status.json"),
                                  staging_dir=str(self.work / "s"))

    def write_list(self, layers: list[Layer], text: str | None = None) -> None:
        (self.work / "extensions.yaml").write_text(
            dump_list(layers) if text is None else text)

    def add(self, cache: Callable[[int], Path], indices: list[int]) -> list[Layer]:
        """Copy cached images in; the list describes them in the given order."""
        layers = []
        for i in indices:
            src = cache(i)
            shutil.copy(src, self.images / src.name)
            data = src.read_bytes()
            layers.append(Layer(src.name, Metadata(f"ext{i}", f"1.{i}", "tests",
                                                            f"layer {i}\n"),
                                hashlib.sha256(data).hexdigest(), len(data)))
        self.write_list(layers)
        return layers

    def activate(self, settings: ActivationSettings | None = None) -> str:
        """activate_extensions on base -> target; starting any process fails the test."""
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(subprocess.Popen, "__init__", no_processes)
            return activate_extensions(str(self.base), str(self.target),
                                       settings or self.settings)

    def read(self, rel: str) -> str:
        return (self.target / rel).read_text()


def mounts_under(prefix: str) -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p.startswith(prefix)]


def attached_backing_files() -> set[str]:
    found = set()
    for entry in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            found.add(entry.read_text().strip())
        except OSError:
            pass
    return found


@pytest.fixture
def env(private_mounts: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    work = Path(tempfile.mkdtemp(prefix="oa", dir="/tmp"))
    lines: list[str] = []
    monkeypatch.setattr(activate, "report", lines.append)
    monkeypatch.setattr(upper, "announce", lambda line, warning=False: None)  # not host kmsg
    e = Env(work, work / "base", work / "root", work / "images", lines)
    for d in (e.base, e.target, e.images):
        d.mkdir()
    syscalls.mount("base", str(e.base), "tmpfs", 0, "mode=0755")
    (e.base / SHARE).mkdir(parents=True)
    (e.base / SHARE / "layer").write_text("base")
    (e.base / "etc").mkdir()
    syscalls.mount(None, str(e.base), None, syscalls.MS_REMOUNT | syscalls.MS_RDONLY)
    yield e
    monkeypatch.undo()
    for point in reversed(mounts_under(str(work))):
        syscalls.umount2(point, syscalls.MNT_DETACH)
    shutil.rmtree(work)


def still_attached(images: list[Path], wait: float = 2.0) -> list[str]:
    """Those of `images` a loop device still holds, after up to `wait` s: an autoclear that
    follows the last unmount may complete after umount2 returns."""
    deadline = time.monotonic() + wait
    while True:
        held = attached_backing_files()
        left = [str(i) for i in images if str(i) in held]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def assert_no_leftovers(env: Env, images: list[Path]) -> None:
    """No staging mount stays and no loop device still holds one of `images`."""
    assert mounts_under(str(env.work / "s")) == []
    assert still_attached(images) == []


def force_api(monkeypatch: pytest.MonkeyPatch, api: str) -> None:
    monkeypatch.setattr(overlay, "MOUNT_DATA_LIMIT", 0 if api == API_FSCONFIG else 4096)


@pytest.mark.parametrize("api", [API_MOUNT, API_FSCONFIG])
@pytest.mark.parametrize("count", [1, 12, 120])
def test_layers_stack_in_list_order(env: Env, image_cache: Callable[[int], Path],
                                    monkeypatch: pytest.MonkeyPatch, count: int,
                                    api: str) -> None:
    force_api(monkeypatch, api)
    env.add(image_cache, list(range(count)))
    assert env.activate() == str(env.target)
    assert env.read(f"{SHARE}/layer") == str(count - 1)
    assert [env.read(f"{SHARE}/only-{i}") for i in range(count)] == \
        [f"from {i}" for i in range(count)]
    assert env.read("etc/extensions.yaml") == (env.work / "extensions.yaml").read_text()
    with pytest.raises(OSError) as exc:
        (env.target / "new").write_text("x")
    assert exc.value.errno == errno.EROFS
    status = read_status(env.settings.status_path)
    assert status.overlay == api
    assert [e.phase for e in status.extensions] == [ACTIVE] * count
    assert status.extensions[-1].id == f"{count - 1:03d}-ext{count - 1}"
    assert mounts_under(str(env.work / "s")) == []
    assert str(env.images / "000-ext0.sqsh") in attached_backing_files()   # held by the overlay
    assert env.lines == []


def test_later_layer_overrides_earlier(env: Env, image_cache: Callable[[int], Path]) -> None:
    """Layer 10 over layer 2 (Talos sorted names as text: "10" before "2")."""
    env.add(image_cache, [2, 10])
    env.activate()
    assert env.read(f"{SHARE}/layer") == "10"
    env2_list = [(e.index, e.id) for e in read_status(env.settings.status_path).extensions]
    assert env2_list == [(0, "002-ext2"), (1, "010-ext10")]


def test_no_list_file_boots_bare_root(env: Env) -> None:
    assert env.activate() == str(env.base)
    assert not os.path.ismount(env.target)
    assert read_status(env.settings.status_path).extensions == ()


def fail_nth(monkeypatch: pytest.MonkeyPatch, name: str, match: Callable[..., bool]) -> None:
    """Make agent.syscalls.<name> raise EIO for calls where match(*args) is true."""
    real = getattr(syscalls, name)

    def faulty(*args: object, **kwargs: object) -> object:
        if match(*args):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(syscalls, name, faulty)


def configure_of(image: str) -> Callable[..., bool]:
    """LOOP_CONFIGURE for `image` (its name is in the struct's lo_file_name)."""

    def match(fd: int, request: int, arg: object = 0, *rest: object) -> bool:
        return request == 0x4C0A and isinstance(arg, bytearray) and image.encode() in arg

    return match


FAULTS: dict[str, tuple[str, Callable[[], Callable[..., bool]], str]] = {
    "loop attach": ("ioctl", lambda: configure_of("001-ext1.sqsh"),
                    "extension 001-ext1: failed: loop device for {img}: Input/output error"),
    "squashfs mount": ("mount", lambda: lambda src, dst, fstype=None, *r: fstype == "squashfs"
                       and dst.endswith("/s/1"),
                       "extension 001-ext1: failed: mount squashfs {img} from /dev/loop"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_injected_layer_fault_skips_only_that_layer(env: Env, image_cache: Callable[[int], Path],
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    fault: str) -> None:
    name, make, line = FAULTS[fault]
    env.add(image_cache, [0, 1, 2])
    fail_nth(monkeypatch, name, make())
    assert env.activate() == str(env.target)
    monkeypatch.undo()
    bad = env.images / "001-ext1.sqsh"
    assert len(env.lines) == 1 and env.lines[0].startswith(line.format(img=bad))
    assert env.read(f"{SHARE}/layer") == "2"
    assert not (env.target / SHARE / "only-1").exists()
    assert (env.target / SHARE / "only-0").exists()
    assert still_attached([bad]) == []
    phases = [e.phase for e in read_status(env.settings.status_path).extensions]
    assert phases == [ACTIVE, FAILED, ACTIVE]


def no_lowerdir_plus(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel before 6.8: fsconfig refuses the lowerdir+ key."""
    real = syscalls.fsconfig

    def old_kernel(fd: int, cmd: int, key: str | None = None, value: str | None = None,
                   aux: int = 0) -> None:
        if key == "lowerdir+":
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), f"{key}={value}")
        real(fd, cmd, key, value, aux)

    monkeypatch.setattr(syscalls, "fsconfig", old_kernel)


OVERLAY_FAULTS: dict[str, tuple[str, Callable[[pytest.MonkeyPatch], None], str]] = {
    "mount(2)": (API_MOUNT, lambda mp: fail_nth(
        mp, "mount", lambda src, dst, fstype=None, *r: fstype == "overlay"),
        "Input/output error"),
    "fsmount": (API_FSCONFIG, lambda mp: fail_nth(mp, "fsmount", lambda *a: True),
                "Input/output error"),
    "no lowerdir+": (API_FSCONFIG, no_lowerdir_plus,
                     "this kernel has no overlayfs lowerdir+ (Linux 6.8+) and the layer paths "
                     "exceed one page"),
}


@pytest.mark.parametrize("fault", sorted(OVERLAY_FAULTS))
def test_overlay_failure_boots_bare_root(env: Env, image_cache: Callable[[int], Path],
                                         monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    api, inject, error = OVERLAY_FAULTS[fault]
    force_api(monkeypatch, api)
    env.add(image_cache, [0, 1])
    inject(monkeypatch)
    assert env.activate() == str(env.base)
    monkeypatch.undo()
    assert not os.path.ismount(env.target)
    assert env.lines == [f"overlay at {env.target}: {error}; booting the bare root"]
    status = read_status(env.settings.status_path)
    assert status.overlay == API_NONE and status.notes == tuple(env.lines)
    assert {(e.phase, e.reason) for e in status.extensions} == {(FAILED, env.lines[0])}
    assert_no_leftovers(env, sorted(env.images.iterdir()))


def corrupt(env: Env, layers: list[Layer]) -> None:
    path = env.images / layers[1].image
    data = bytearray(path.read_bytes())
    data[200:210] = bytes(b ^ 0xFF for b in data[200:210])
    path.write_bytes(bytes(data))


def wrong_size(env: Env, layers: list[Layer]) -> None:
    layers[1] = Layer(layers[1].image, layers[1].metadata, layers[1].sha256, layers[1].size + 1)
    env.write_list(layers)


def missing(env: Env, layers: list[Layer]) -> None:
    (env.images / layers[1].image).unlink()


def garbage(env: Env, layers: list[Layer]) -> None:
    data = os.urandom(8192)
    (env.images / layers[1].image).write_bytes(data)
    layers[1] = Layer(layers[1].image, layers[1].metadata, hashlib.sha256(data).hexdigest(), 8192)
    env.write_list(layers)


REAL_FAULTS: dict[str, tuple[Callable[[Env, list[Layer]], None], str]] = {
    "corrupted bytes": (corrupt, "{img}: sha256 "),
    "wrong size": (wrong_size, "{img}: size 4096 bytes, the list says 4097"),
    "missing image": (missing, "cannot open {img}: No such file or directory"),
    "garbage squashfs": (garbage, "mount squashfs {img} from /dev/loop"),
}


@pytest.mark.parametrize("fault", sorted(REAL_FAULTS))
def test_real_fault_skips_only_that_layer(env: Env, image_cache: Callable[[int], Path],
                                          fault: str) -> None:
    spoil, reason = REAL_FAULTS[fault]
    layers = env.add(image_cache, [0, 1, 2])
    spoil(env, layers)
    assert env.activate() == str(env.target)
    bad = env.images / "001-ext1.sqsh"
    expected = "extension 001-ext1: failed: " + reason.format(img=bad)
    assert len(env.lines) == 1 and env.lines[0].startswith(expected), env.lines
    assert env.read(f"{SHARE}/layer") == "2"
    assert still_attached([bad]) == []
    records = read_status(env.settings.status_path).extensions
    assert [e.phase for e in records] == [ACTIVE, FAILED, ACTIVE]
    assert records[1].reason == env.lines[0].split(": failed: ", 1)[1]


def test_unknown_schema_version_skips_all(env: Env, image_cache: Callable[[int], Path]) -> None:
    env.add(image_cache, [0, 1])
    text = (env.work / "extensions.yaml").read_text().replace('"version": 1', '"version": 7')
    env.write_list([], text)
    assert env.activate() == str(env.base)
    reason = (f"{env.settings.list_path}: unknown schema version 7 "
              "(this agent reads version 1)")
    records = read_status(env.settings.status_path).extensions
    assert [(e.id, e.phase, e.reason) for e in records] == [
        ("000-ext0", SKIPPED, reason), ("001-ext1", SKIPPED, reason)]
    assert env.lines == [f"extension {e.id}: skipped: {reason}" for e in records]


def test_strict_makes_a_failure_fatal_and_undoes(env: Env,
                                                 image_cache: Callable[[int], Path]) -> None:
    layers = env.add(image_cache, [0, 1, 2])
    corrupt(env, layers)
    settings = env.settings.replace(strict=True)
    with pytest.raises(BootError, match=r"^extension 001-ext1: .*sha256.*overlay_agent.strict"):
        env.activate(settings)
    assert not os.path.ismount(env.target)
    assert_no_leftovers(env, sorted(env.images.iterdir()))
    phases = [e.phase for e in read_status(env.settings.status_path).extensions]
    assert phases == [ACTIVE, FAILED]


@pytest.mark.parametrize(("cmdline", "phases", "layer"), [
    ("quiet overlay_agent.disable", ["skipped"] * 3, "base"),
    ("overlay_agent.skip=ext2,001-ext1", ["active", "skipped", "skipped"], "0"),
    ("overlay_agent.skip=000-ext0.sqsh", ["skipped", "active", "active"], "2"),
])
def test_command_line_disable_and_skip(env: Env, image_cache: Callable[[int], Path],
                                       cmdline: str, phases: list[str], layer: str) -> None:
    env.add(image_cache, [0, 1, 2])
    s = env.settings
    settings = activate.settings_from_params(
        scan_cmdline(cmdline), list_path=s.list_path, images_dir=s.images_dir, status_path=s.status_path,
        staging_dir=s.staging_dir)
    root = env.activate(settings)
    assert Path(root, SHARE, "layer").read_text() == layer
    records = read_status(env.settings.status_path).extensions
    assert [e.phase for e in records] == phases
    assert len(env.lines) == phases.count("skipped")


def test_hook_mode_puts_overlay_at_the_mounted_root(env: Env,
                                                    image_cache: Callable[[int], Path]) -> None:
    env.add(image_cache, [0, 1])
    syscalls.mount(str(env.base), str(env.target), None, syscalls.MS_BIND)
    assert activate_mounted_root(str(env.target), env.settings) == str(env.target)
    assert env.read(f"{SHARE}/layer") == "1"
    assert os.path.ismount(env.settings.staging_dir + "/base")


def test_hook_mode_without_layers_leaves_the_root(env: Env) -> None:
    syscalls.mount(str(env.base), str(env.target), None, syscalls.MS_BIND)
    assert activate_mounted_root(str(env.target), env.settings) == str(env.target)
    assert env.read(f"{SHARE}/layer") == "base"
    assert not os.path.ismount(env.settings.staging_dir + "/base")


def shared_parent_root(env: Env) -> Path:
    """The base bound at a mount point whose parent mount is shared, as under systemd (which
    makes / shared): the kernel refuses to MS_MOVE a mount out of a shared parent."""
    parent = env.work / "p"
    parent.mkdir()
    syscalls.mount("p", str(parent), "tmpfs", 0, "mode=0755")
    syscalls.mount(None, str(parent), None, MS_SHARED)
    for name in ("root", "probe", "aside"):
        (parent / name).mkdir()
    root = parent / "root"
    syscalls.mount(str(env.base), str(root), None, syscalls.MS_BIND)
    # the case under test is real: a plain move out of this parent fails
    syscalls.mount(str(env.base), str(parent / "probe"), None, syscalls.MS_BIND)
    with pytest.raises(OSError) as exc:
        syscalls.mount(str(parent / "probe"), str(parent / "aside"), None, syscalls.MS_MOVE)
    assert exc.value.errno == errno.EINVAL
    return root


def test_hook_mode_under_a_shared_parent_mount(env: Env,
                                                image_cache: Callable[[int], Path]) -> None:
    env.add(image_cache, [0, 1])
    root = shared_parent_root(env)
    assert activate_mounted_root(str(root), env.settings) == str(root)
    assert (root / SHARE / "layer").read_text() == "1"
    assert (root / SHARE / "only-0").read_text() == "from 0"
    assert os.path.ismount(env.settings.staging_dir + "/base")
    status = read_status(env.settings.status_path)
    assert [e.phase for e in status.extensions] == [ACTIVE, ACTIVE]
    assert env.lines == []


@pytest.mark.parametrize("strict", [False, True])
def test_hook_mode_failure_is_recorded(env: Env, image_cache: Callable[[int], Path],
                                       strict: bool) -> None:
    """A root that cannot be moved aside (here: not a mount point) boots bare, and the status
    says why for every layer, so `get extensions` does not claim the agent never ran."""
    env.add(image_cache, [0, 1])
    settings = env.settings.replace(strict=strict)
    reason = f"{env.target}: cannot move the root mount aside: Invalid argument"
    if strict:
        with pytest.raises(BootError, match=f"^{reason} \\(overlay_agent.strict\\)$"):
            activate_mounted_root(str(env.target), settings)
    else:
        assert activate_mounted_root(str(env.target), settings) == str(env.target)
    status = read_status(env.settings.status_path)
    assert [(e.phase, e.reason) for e in status.extensions] == [(FAILED, reason)] * 2
    assert status.notes == (reason,)
    assert mounts_under(str(env.work / "s")) == []
    assert not any(str(env.images) in f for f in attached_backing_files())


def test_boot_command_loads_its_modules_first(env: Env, image_cache: Callable[[int], Path]
                                              ) -> None:
    """Hook mode loads the modules of its list itself; one that fails is one line, and the
    activation goes on (on this kernel they are built in)."""
    env.add(image_cache, [0])
    (env.work / "cmdline").write_text("root=/dev/sda1\n")
    (env.work / "modules.load").write_text("/lib/modules/none/loop.ko\n")
    syscalls.mount(str(env.base), str(env.target), None, syscalls.MS_BIND)
    s = env.settings
    assert main(["boot", "--root", str(env.target), "--list", s.list_path, "--images",
                 s.images_dir, "--status", s.status_path, "--staging", s.staging_dir,
                 "--cmdline", str(env.work / "cmdline"),
                 "--modules", str(env.work / "modules.load")]) == 0
    assert env.lines == ["kernel module /lib/modules/none/loop.ko: No such file or directory"]
    assert env.read(f"{SHARE}/layer") == "0"


def loop_of(image: Path) -> Path:
    for entry in Path("/sys/block").glob("loop*/loop/backing_file"):
        if entry.read_text().strip() == str(image):
            return entry.parent.parent
    raise AssertionError(f"no loop device holds {image}")


LOOP_CONFIGURE, LOOP_SET_STATUS64 = 0x4C0A, 0x4C04


@pytest.mark.parametrize(("errnos", "configures", "set_status"), [
    ([errno.EINVAL] * 99, 2, 2),     # a kernel before 5.8: LOOP_SET_FD + LOOP_SET_STATUS64
    ([errno.ENOTTY] * 99, 2, 2),
    ([errno.EBUSY], 3, 0),           # lost the GET_FREE race: ask for another device
])
def test_loop_configure_fallbacks(env: Env, image_cache: Callable[[int], Path],
                                  monkeypatch: pytest.MonkeyPatch, errnos: list[int],
                                  configures: int, set_status: int) -> None:
    env.add(image_cache, [0, 1])
    left = list(errnos)
    requests: list[int] = []
    real = syscalls.ioctl

    def flaky(fd: int, request: int, arg: int | bytes | bytearray = 0,
              path: str | None = None) -> int:
        requests.append(request)
        if request == LOOP_CONFIGURE and left:
            code = left.pop(0)
            raise OSError(code, os.strerror(code), path)
        return real(fd, request, arg, path)

    monkeypatch.setattr(syscalls, "ioctl", flaky)
    assert env.activate() == str(env.target)
    monkeypatch.undo()
    assert env.read(f"{SHARE}/layer") == "1" and env.lines == []
    # layers attach in parallel: one may lose a device to the other and ask again
    assert requests.count(LOOP_CONFIGURE) >= configures
    assert requests.count(LOOP_SET_STATUS64) == set_status
    for image in sorted(env.images.iterdir()):
        dev = loop_of(image)
        assert (dev / "ro").read_text().strip() == "1"
        assert (dev / "loop/autoclear").read_text().strip() == "1"
        assert (dev / "queue/logical_block_size").read_text().strip() == "4096"


def test_boot_command_hook_mode(env: Env, image_cache: Callable[[int], Path],
                                capsys: pytest.CaptureFixture[str]) -> None:
    env.add(image_cache, [0, 1, 2])
    (env.work / "cmdline").write_text("root=/dev/sda1 ro overlay_agent.skip=ext2\n")
    syscalls.mount(str(env.base), str(env.target), None, syscalls.MS_BIND)
    s = env.settings
    assert main(["boot", "--root", str(env.target), "--list", s.list_path, "--images",
                 s.images_dir, "--status", s.status_path, "--staging", s.staging_dir,
                 "--cmdline", str(env.work / "cmdline")]) == 0
    assert env.read(f"{SHARE}/layer") == "1"
    assert main(["get", "extensions", "--status", s.status_path, "--root", str(env.target)]) == 0
    rows = [line.split()[3:] for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows == [["000-ext0", "1", "ext0", "1.0", "sha256", "active"],
                    ["001-ext1", "1", "ext1", "1.1", "sha256", "active"],
                    ["002-ext2", "1", "ext2", "1.2", "none", "skipped",
                     "overlay_agent.skip=ext2"]]


@pytest.mark.parametrize(("cmdline", "code", "line"), [
    ("root=/dev/sda1", 0, ""),     # recorded in the status; the bare root boots
    ("overlay_agent.strict", 1, "overlay-agent: error: {root}: cannot move the root mount "
                                "aside: Invalid argument (overlay_agent.strict)\n"),
])
def test_hook_mode_exits_non_zero_only_under_strict(env: Env, capsys: pytest.CaptureFixture[str],
                                                    cmdline: str, code: int, line: str) -> None:
    (env.work / "cmdline").write_text(cmdline)
    s = env.settings
    assert main(["boot", "--root", str(env.target), "--list", s.list_path, "--images",
                 s.images_dir, "--status", s.status_path, "--staging", s.staging_dir,
                 "--cmdline", str(env.work / "cmdline")]) == code     # not a mount point
    assert capsys.readouterr().err == line.format(root=env.target)


@pytest.mark.parametrize(("count", "phases", "shown"), [
    (2, ["active"] * 2, True),
    (3, ["active"] * 3, False),            # the list layer gives way to extensions
    (4, ["active"] * 3 + ["failed"], False),
])
def test_overlay_layer_limit(env: Env, image_cache: Callable[[int], Path],
                             monkeypatch: pytest.MonkeyPatch, count: int, phases: list[str],
                             shown: bool) -> None:
    monkeypatch.setattr(listfile, "KERNEL_MAX_LOWER", 4)   # the kernel's is 500
    monkeypatch.setattr(listfile, "MAX_LAYERS", 3)
    env.add(image_cache, list(range(count)))
    env.activate()
    status = read_status(env.settings.status_path)
    assert [e.phase for e in status.extensions] == phases
    assert (env.target / "etc/extensions.yaml").exists() == shown
    assert env.read(f"{SHARE}/layer") == ("2" if count > 2 else "1")
    if count == 4:
        assert env.lines == ["extension 003-ext3: failed: over the 3 extensions an overlay "
                             "can stack above the root"]


def test_sha256_choice_small_builtin_large_openssl() -> None:
    small, large = verify.sha256_constructor(0), verify.sha256_constructor(1 << 30)
    assert small.__module__ != large.__module__
    assert large.__module__ == "_hashlib"
    data = os.urandom(100_000)
    digests = []
    for make in (small, large):
        digest = make()
        digest.update(data)
        digests.append(digest.hexdigest())
    assert digests == [hashlib.sha256(data).hexdigest()] * 2


def test_openssl_sha256_path_catches_corruption(env: Env, image_cache: Callable[[int], Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "SMALL_HASH_TOTAL", 0)
    layers = env.add(image_cache, [0, 1, 2])
    corrupt(env, layers)
    assert env.activate() == str(env.target)
    phases = [e.phase for e in read_status(env.settings.status_path).extensions]
    assert phases == [ACTIVE, FAILED, ACTIVE]
    assert "sha256" in env.lines[0]


def test_halves_mount_the_image_opened_first(env: Env,
                                             image_cache: Callable[[int], Path]) -> None:
    """PID 1 starts the checks before the root is up and mounts later: the layer mounted is
    the file opened and hashed by the first half, even if the path changes in between."""
    env.add(image_cache, [0, 1])
    run = start_activation(env.settings)
    # replace 001's file by another valid image (a different digest) after the open
    replacement = env.images / "tmp.sqsh"
    shutil.copy(image_cache(5), replacement)
    os.rename(replacement, env.images / image_cache(1).name)
    time.sleep(0.5)   # the gap between the halves is not counted as activation time
    assert finish_activation(run, str(env.base), str(env.target)) == str(env.target)
    status = read_status(env.settings.status_path)
    assert [e.phase for e in status.extensions] == [ACTIVE, ACTIVE]
    assert env.read(f"{SHARE}/layer") == "1"
    assert not (env.target / SHARE / "only-5").exists()
    assert status.duration_ms < 500
    assert env.lines == []


def test_strict_failure_in_first_half_raises_and_records(env: Env,
                                                        image_cache: Callable[[int], Path]) -> None:
    env.add(image_cache, [0, 1])
    (env.images / image_cache(1).name).unlink()
    with pytest.raises(BootError, match=r"^extension 001-ext1: cannot open .*strict"):
        start_activation(env.settings.replace(strict=True))
    status = read_status(env.settings.status_path)
    assert [e.phase for e in status.extensions] == [FAILED]
    assert status.root == ""
    assert mounts_under(str(env.work / "s")) == []


def test_unpadded_image_gets_512_byte_blocks(env: Env, image_cache: Callable[[int], Path]) -> None:
    """4 KiB loop blocks only when the image is a whole number of them: the last block must
    be readable. (squashfs reads 1 KiB device blocks, so any image needs whole KiBs.)"""
    padded = env.add(image_cache, [0])[0]
    src = env.work / "src"
    (src / SHARE).mkdir(parents=True)
    (src / SHARE / "layer").write_text("nopad")
    image = env.images / "001-nopad.sqsh"
    run(["mksquashfs", src, image, "-quiet", "-no-progress", "-noappend", "-all-root", "-nopad"])
    size = -(-image.stat().st_size // 1024) * 1024     # squashfs ignores bytes past its end
    size += 1024 if size % 4096 == 0 else 0
    with image.open("r+b") as f:
        f.truncate(size)
    data = image.read_bytes()
    env.write_list([padded, Layer(image.name, Metadata("nopad", "1"),
                                  hashlib.sha256(data).hexdigest(), len(data))])
    assert env.activate() == str(env.target)
    assert env.lines == []
    assert env.read(f"{SHARE}/layer") == "nopad"
    blocks = {path.name: (loop_of(path) / "queue/logical_block_size").read_text().strip()
              for path in (env.images / padded.image, image)}
    assert blocks == {padded.image: "4096", image.name: "512"}


def test_read_error_fails_that_layer_only(env: Env, image_cache: Callable[[int], Path],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    env.add(image_cache, [0, 1, 2])
    bad = env.images / image_cache(1).name
    real = os.preadv

    def failing(fd: int, buffers: list[bytearray], offset: int) -> int:
        if os.readlink(f"/proc/self/fd/{fd}") == str(bad):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", failing)
    assert env.activate() == str(env.target)
    monkeypatch.undo()
    phases = [e.phase for e in read_status(env.settings.status_path).extensions]
    assert phases == [ACTIVE, FAILED, ACTIVE]
    assert env.lines == [f"extension 001-ext1: failed: cannot read {bad}: Input/output error"]
    assert env.read(f"{SHARE}/layer") == "2"
    assert still_attached([bad]) == []


def test_without_threads_the_main_thread_does_it_all(env: Env,
                                                     image_cache: Callable[[int], Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """No thread can be started (a tight pid limit): checks and mounts still all happen."""
    import _thread

    def refuse(*args: object) -> int:
        raise RuntimeError("can't start new thread")

    env.add(image_cache, [0, 1, 2, 3])
    monkeypatch.setattr(_thread, "start_new_thread", refuse)
    assert env.activate() == str(env.target)
    monkeypatch.undo()
    phases = [e.phase for e in read_status(env.settings.status_path).extensions]
    assert phases == [ACTIVE] * 4 and env.lines == []
    assert env.read(f"{SHARE}/layer") == "3"


@pytest.mark.parametrize("count", [listfile.MAX_LAYERS, listfile.MAX_LAYERS + 1])
def test_the_layer_limit_build_enforces_is_what_boot_stacks(
        env: Env, image_cache: Callable[[int], Path], count: int) -> None:
    """At the list's limit every layer stacks on a real overlay; one past it, only the
    last fails (the base root takes the kernel's 500th lower layer)."""
    src = image_cache(0)
    data = src.read_bytes()
    layer = Layer("", Metadata("x", "1"), hashlib.sha256(data).hexdigest(), len(data))
    layers = []
    for i in range(count):
        name = listfile.image_name(i, f"x{i}")
        os.link(src, env.images / name)
        layers.append(layer.replace(image=name))
    env.write_list(layers)
    assert env.activate() == str(env.target)
    status = read_status(env.settings.status_path)
    phases = [e.phase for e in status.extensions]
    assert phases[:listfile.MAX_LAYERS] == [ACTIVE] * listfile.MAX_LAYERS
    assert status.overlay == API_FSCONFIG
    if count > listfile.MAX_LAYERS:
        assert phases[-1] == FAILED
        assert status.extensions[-1].reason == (
            "over the 499 extensions an overlay can stack above the root")
    assert env.read(f"{SHARE}/layer") == "0"


def test_get_marks_layers_whose_overlay_or_loop_device_is_gone(
        env: Env, image_cache: Callable[[int], Path], capsys: pytest.CaptureFixture[str]) -> None:
    env.add(image_cache, [0, 1])
    env.activate()
    status = read_status(env.settings.status_path)
    assert all(e.loop.startswith("/dev/loop") for e in status.extensions)
    get = ["get", "extensions", "-o", "json", "--status", env.settings.status_path]

    def phases(root: Path) -> list[tuple[str, str]]:
        assert main([*get, "--root", str(root)]) == 0
        out = capsys.readouterr().out.splitlines()
        docs = [json.loads(line) for line in out]
        return [(d["metadata"]["phase"], d["spec"].get("reason", "")) for d in docs]

    assert phases(env.target) == [("running", ""), ("running", "")]
    assert phases(env.base) == [("gone", f"no overlay mounted at {env.base} any more")] * 2
    syscalls.umount2(str(env.target))          # the overlay held the last loop references
    assert still_attached([env.images / "000-ext0.sqsh"]) == []
    dev0 = status.extensions[0].loop
    assert phases(env.base)[0] == ("gone", f"no overlay mounted at {env.base} any more")
    gone = with_live_phases(status.replace(overlay=API_NONE))
    assert gone.extensions[0].reason == f"loop device {dev0} is no longer attached"
