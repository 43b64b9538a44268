"""Extension activation under QEMU on both stock kernels: the checks run in the guest.

Every boot runs the demo root (busybox + Python + agent); its /sbin/init runs the checks
of the scenario named on the command line and prints one PASS/FAIL line per check with
this boot's token. Six boots per kernel: happy path (with firmware and an extension-only
module), 12 layers with an override and a skip, a corrupted image, the same strict,
disable, and hook mode under a busybox shell /init.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from extensions import (
    RELEASE,
    Check,
    ExtensionSpec,
    append_archive,
    assert_all_passed,
    bake,
    boot_scenario,
    checks_root,
    flip_bytes,
    listing_checks,
    module_files,
    suite_kernel,
)
from test_boot import assert_fatal

from agent import cpio
from agent.kernels import Kernel
from devtools.demo import CLI_WRAPPER, MARKER
from devtools.images import BUSYBOX, initramfs

ROOT = Path(__file__).resolve().parents[2]
SUITES = ("bookworm", "trixie")
SHA_REASON = (r"/extensions/000-hello-tool\.sqsh: sha256 [0-9a-f]{16}\.\.\., "
              r"the list says [0-9a-f]{16}\.\.\.")

HELLO = ExtensionSpec("hello-tool", {"usr/local/share/oa-hello/greeting":
                                     b"hello from hello-tool\n"}, "1.2.3")
FIRMWARE = ExtensionSpec("fw-blob", {"usr/lib/firmware/oa-test/blob.bin": b"firmware-ok\n"})
MODULE = "zram"    # in the stock kernel package, in neither the demo root nor the initramfs


def twelve() -> list[ExtensionSpec]:
    """Names sort against list order (layer 0 is ext-l, layer 11 ext-a): the list decides."""
    specs = []
    for i in range(12):
        files = {f"usr/local/share/oa/layer-{i:02d}": f"{i}\n".encode()}
        if i in (2, 10):
            files["usr/local/share/oa/winner"] = f"layer {i}\n".encode()
        specs.append(ExtensionSpec(f"ext-{chr(ord('l') - i)}", files))
    return specs


SKIPPED = 6        # twelve()[6] is ext-f, skipped by name on the command line

# ---------------------------------------------------------------- checks in the guest

THREE = [("000-hello-tool", "hello-tool", "1.2.3"), ("001-fw-blob", "fw-blob", "1.0.0"),
         ("002-zram-module", "zram-module", "1.0.0"), ("003-modules.dep", "modules.dep", RELEASE)]
GREETING = '[ "$(cat /usr/local/share/oa-hello/greeting)" = "hello from hello-tool" ]'
FIRMWARE_READ = Check("firmware", '[ "$(cat /lib/firmware/oa-test/blob.bin)" = firmware-ok ]')
MODPROBE = Check("modprobe", f"modprobe {MODULE} num_devices=1 && "
                             f"grep -q '^{MODULE} ' /proc/modules && [ -e /sys/block/zram0 ]")
ROOT_IS_OVERLAY = "awk '$2 == \"/\" {print $3, $4}' /proc/mounts | grep -Eq '^overlay ro(,|$)'"


def happy_checks() -> list[Check]:
    return [Check("files", GREETING), FIRMWARE_READ, MODPROBE, *listing_checks(THREE),
            Check("list-bound", "grep -q '000-hello-tool.sqsh' /etc/extensions.yaml"),
            Check("overlay-ro", ROOT_IS_OVERLAY + " && ! touch /usr/local/probe 2>/dev/null")]


def twelve_checks() -> list[Check]:
    names = [s.name for s in twelve()]
    shown = " ".join([f"layer-{i:02d}" for i in range(12) if i != SKIPPED] + ["winner"])
    skip = ("skipped", r"overlay_agent\.skip=ext-f")
    return [Check("override", '[ "$(cat /usr/local/share/oa/winner)" = "layer 10" ]'),
            Check("layers", f'[ "$(ls /usr/local/share/oa | tr "\\n" " ")" = "{shown} " ]'),
            *listing_checks([(f"{i:03d}-{n}", n, "1.0.0") for i, n in enumerate(names)],
                            [skip if i == SKIPPED else ("active", "") for i in range(12)])]


def corrupt_checks() -> list[Check]:
    return [Check("tool-gone", "[ ! -e /usr/local/share/oa-hello ]"), FIRMWARE_READ, MODPROBE,
            *listing_checks(THREE, [("failed", SHA_REASON)] + [("active", "")] * 3)]


def disable_checks() -> list[Check]:
    bare = ("[ ! -e /usr/local/share/oa-hello ] && [ ! -e /lib/firmware/oa-test ] && "
            "[ ! -e /etc/extensions.yaml ] && ! " + ROOT_IS_OVERLAY)
    return [Check("bare", bare), Check("no-module", f"! modprobe {MODULE}"),
            *listing_checks(THREE, [("skipped", r"overlay_agent\.disable")] * len(THREE))]


SCENARIOS: Mapping[str, Sequence[Check]] = {
    "happy": happy_checks(), "twelve": twelve_checks(), "corrupt": corrupt_checks(),
    "disable": disable_checks(), "hook": happy_checks(),
}

# ---------------------------------------------------------------- hook-mode initramfs

HOOK_DIR = "oa-hook"
HOOK_INIT = f"""#!/{HOOK_DIR}/busybox sh
/{HOOK_DIR}/busybox --install -s /{HOOK_DIR}
export PATH=/{HOOK_DIR}:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
while read -r m; do insmod "$m" || echo "HOOK-INIT insmod $m failed"; done \\
  < /etc/overlay-agent/modules.load
mkdir -p /root
mount -t squashfs -o ro,loop /rootfs.sqsh /root && echo "HOOK-INIT root mounted"
overlay-agent boot --root /root && echo "HOOK-INIT activated"
for m in dev proc sys run; do mount --move /$m /root/$m; done
exec switch_root /root /sbin/init
"""


def hook_entries() -> list[cpio.Entry]:
    """A busybox shell /init that mounts the root itself and calls the agent as a hook."""
    return [cpio.regular("init", HOOK_INIT.encode(), 0o755),
            cpio.regular(f"{HOOK_DIR}/busybox", BUSYBOX, 0o755),
            cpio.regular(f"{HOOK_DIR}/overlay-agent", CLI_WRAPPER.encode(), 0o755)]


# ---------------------------------------------------------------- fixtures

@dataclass(frozen=True)
class Images:
    kernel: Kernel
    happy: Path       # agent initramfs + demo root + hello-tool, fw-blob, zram-module
    twelve: Path
    corrupt: Path     # happy with 000-hello-tool.sqsh flipped after baking
    hook: Path        # shell /init + the three extensions
    logs: Path


@pytest.fixture(scope="session")
def scenario_root() -> Path:
    """The demo root with every scenario's checks in its /sbin/init (kernel-independent)."""
    return checks_root("activate", SCENARIOS)


@pytest.fixture(scope="session", params=SUITES)
def images(request: pytest.FixtureRequest, scenario_root: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Images:
    kernel = suite_kernel(request.param)
    work = tmp_path_factory.mktemp(f"activate-{kernel.suite}")
    three = [HELLO, FIRMWARE, ExtensionSpec("zram-module", module_files(kernel, MODULE))]
    agent_initrd = initramfs(kernel, scenario_root)
    happy = bake(kernel, agent_initrd, scenario_root, three, "happy", work)
    flipped = flip_bytes(extension_image(happy, "000-hello-tool"))
    corrupt = append_archive(happy, [cpio.regular("extensions/000-hello-tool.sqsh", flipped)],
                             work / "corrupt.img")
    many = bake(kernel, agent_initrd, scenario_root, twelve(), "twelve", work, later_wins=True)
    hook_input = append_archive(agent_initrd, hook_entries(), work / "hook-input.img")
    hook = bake(kernel, hook_input, scenario_root, three, "hook", work)
    return Images(kernel, happy, many, corrupt, hook, work)


def extension_image(baked: Path, ext_id: str) -> bytes:
    from agent.bake.segments import merged_members, split_segments

    members = merged_members(split_segments(baked.read_bytes(), str(baked)))
    return members[f"extensions/{ext_id}.sqsh"].content()


# ---------------------------------------------------------------- scenarios

def test_three_extensions_with_firmware_and_module(images: Images) -> None:
    result, verdicts = boot_scenario(images.kernel, images.happy, "happy", images.logs)
    assert_all_passed(result, verdicts, SCENARIOS, "happy")
    assert "overlay-agent: extension" not in result.output   # no layer reported a problem


def test_twelve_layers_list_order_wins_and_skip(images: Images) -> None:
    result, verdicts = boot_scenario(images.kernel, images.twelve, "twelve", images.logs,
                                     f"overlay_agent.skip={twelve()[SKIPPED].name}")
    assert_all_passed(result, verdicts, SCENARIOS, "twelve")
    assert "overlay-agent: extension 006-ext-f: skipped: overlay_agent.skip=ext-f" \
        in result.output


def test_corrupted_image_is_skipped_the_others_work(images: Images) -> None:
    result, verdicts = boot_scenario(images.kernel, images.corrupt, "corrupt", images.logs)
    assert_all_passed(result, verdicts, SCENARIOS, "corrupt")
    assert re.search(rf"^overlay-agent: extension 000-hello-tool: failed: {SHA_REASON}$",
                     result.output, re.M), result.output[-3000:]


def test_corrupted_image_strict_is_fatal(images: Images) -> None:
    result, verdicts = boot_scenario(images.kernel, images.corrupt, "corrupt", images.logs,
                                     "overlay_agent.strict", log="strict")
    assert_fatal(result, re.compile(rf"extension 000-hello-tool: {SHA_REASON} "
                                    r"\(overlay_agent\.strict\)"), panic=-1)
    assert MARKER not in result.output and verdicts.passed == ()


def test_disable_boots_the_bare_root(images: Images) -> None:
    result, verdicts = boot_scenario(images.kernel, images.happy, "disable", images.logs,
                                     "overlay_agent.disable")
    assert_all_passed(result, verdicts, SCENARIOS, "disable")


def test_hook_mode_under_a_shell_init(images: Images) -> None:
    result, verdicts = boot_scenario(images.kernel, images.hook, "hook", images.logs)
    assert_all_passed(result, verdicts, SCENARIOS, "hook")
    assert "HOOK-INIT root mounted" in result.output
    assert "HOOK-INIT activated" in result.output
    assert "HOOK-INIT insmod" not in result.output                # every module loaded
    assert "overlay-agent: exec /sbin/init" not in result.output  # PID 1 was the shell
