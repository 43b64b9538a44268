"""Activate extensions: verify each squashfs, loop-mount it, stack all on the root, record.

Never brick: a layer that fails its check or mount is undone and recorded, the others
go on; when the overlay itself fails the bare root boots. Only `strict` raises.

Two halves: start_activation() reads the list, opens the images and starts their checks
in the background (agent.boot.verify); finish_activation() mounts the checked layers and
stacks them. PID 1 runs the first half before modules and the root device, so hashing
overlaps them; together (activate_extensions) they are the hook and the benchmark.

The mount half's modules (agent.syscalls loads libffi) load while the checks already run.
"""

from __future__ import annotations

import os
import time

from agent import listfile, statusfile
from agent.boot import upper
from agent.boot.cmdline import DEFAULT_ROOT_WAIT, UpperSpec
from agent.boot.stack import stack_layers, unmount_staging
from agent.boot.store import open_store_layers
from agent.boot.verify import Candidate, LayerFailed, open_candidate, start_checks
from agent.boot.workers import share_out
from agent.errors import BootError, ListFileError
from agent.files import read_regular
from agent.listfile import Layer
from agent.values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.boot.cmdline import BootParams
    from agent.boot.upper import Upper

MOUNT_THREADS = 3  # mounts at once; they mostly wait on the loop worker (2 to 4: alike here)
# Console lines for layer problems; the rest go to the status only, with one line saying so:
# a serial console prints about a hundred lines a second, and a list of a thousand bad
# entries must not hold the boot for ten.
MAX_PROBLEM_LINES = 20
LOOP_BLOCK = 4096


class ActivationSettings(Value):
    """Frozen settings (a frozen dataclass in behaviour: keyword constructor, ==, hash)."""

    __slots__ = ("disable", "images_dir", "list_path", "problem", "skip", "staging_dir",
                 "status_path", "strict", "upper", "upper_wait")
    disable: bool             # overlay_agent.disable
    skip: frozenset[str]      # overlay_agent.skip=NAME[,NAME] (metadata names or IDs)
    strict: bool              # overlay_agent.strict: any failure -> raise BootError
    list_path: str
    images_dir: str
    status_path: str          # /run is moved into the new root later
    staging_dir: str          # short: every layer path goes into one mount(2) page
    problem: str              # an unusable overlay_agent.* key: nothing activates
    upper: UpperSpec | None   # overlay_agent.upper= (agent.boot.upper); None: read-only
    upper_wait: float         # seconds to wait for the upper's device (never forever)

    def __init__(self, disable: bool = False, skip: frozenset[str] = frozenset(),
                 strict: bool = False, list_path: str = listfile.LIST_PATH,
                 images_dir: str = listfile.IMAGES_DIR,
                 status_path: str = statusfile.STATUS_PATH, staging_dir: str = "/run/oa",
                 problem: str = "", upper: UpperSpec | None = None,
                 upper_wait: float = DEFAULT_ROOT_WAIT) -> None:
        self._set(disable=disable, skip=frozenset(skip), strict=strict, list_path=list_path,
                  images_dir=images_dir, status_path=status_path, staging_dir=staging_dir,
                  problem=problem, upper=upper, upper_wait=upper_wait)


def settings_from_params(params: BootParams, **paths: str) -> ActivationSettings:
    """The overlay_agent.* keys of a scanned command line (agent.boot.cmdline);
    `paths` overrides the list, images, status and staging paths."""
    wait = params.root_timeout
    return ActivationSettings(params.disable, params.skip, params.strict,
                              problem="; ".join(params.own_problems), upper=params.upper,
                              upper_wait=DEFAULT_ROOT_WAIT if wait is None else wait, **paths)


def report(line: str) -> None:
    """One line on the console and in kmsg (a seam tests replace)."""
    from agent.boot import console

    console.say(line, level=console.KERN_WARNING)


def mount_in_order(cands: list[Candidate], staging_dir: str) -> None:
    """Mount every candidate that passes its checks, several at a time: a squashfs mount
    mostly waits for the loop device's kernel worker, so a few threads overlap the waits
    (and the checks still running). Each takes the next layer in list order."""
    def work(take: Callable[[], Candidate | None]) -> None:
        while (cand := take()) is not None:
            mount_checked(cand, os.path.join(staging_dir, str(cand.index)))

    share_out(cands, max(1, min(len(cands), MOUNT_THREADS)), work, wait=True)


def mount_checked(cand: Candidate, staging: str) -> None:
    """Wait for the layer's checks, then attach and mount it; the outcome lands on `cand`."""
    cand.wait_checked()
    try:
        if not cand.error:
            mount_layer(cand, staging)
            cand.staging = staging
    except LayerFailed as exc:
        cand.error = str(exc)
    except Exception as exc:  # a worker thread must not lose a layer silently
        cand.error = f"{type(exc).__name__}: {exc}"
    finally:
        cand.close()


class Activation:
    """One activation between its halves: records by index, candidates, staging mounts."""

    def __init__(self, settings: ActivationSettings) -> None:
        self.settings = settings
        self.records: dict[int, dict[str, object]] = {}
        self.mounted: list[tuple[int, str]] = []     # (index, staging path)
        self.notes: list[str] = []
        self.stamp = statusfile.utc_now()
        self.cands: list[Candidate] = []
        self.busy = 0.0     # seconds spent in the two halves (not the wait between them)
        self.upper: Upper | None = None
        self.list_data = b""  # the list file's bytes, as read once
        self.problems = 0     # layers recorded as not active

    def record(self, index: int, entry: Layer, phase: str, reason: str = "") -> None:
        meta = entry.metadata
        self.records[index] = statusfile.extension_doc(
            index=index, image=entry.image, kind=entry.kind, name=meta.name,
            version=meta.version, phase=phase, reason=reason, author=meta.author,
            description=meta.description, compatibility=meta.compatibility,
            created=self.stamp, updated=self.stamp)
        if phase != statusfile.ACTIVE:
            self.problems += 1
            if self.problems <= MAX_PROBLEM_LINES:
                report(f"extension {entry.id}: {phase}: {reason}")

    def fail(self, index: int, entry: Layer, reason: str) -> None:
        self.record(index, entry, statusfile.FAILED, reason)
        if self.settings.strict:
            self.undo()
            raise BootError(f"extension {entry.id}: {reason} (overlay_agent.strict)")

    def note(self, text: str) -> None:
        self.notes.append(text)
        report(text)
        if self.settings.strict:
            self.undo()
            raise BootError(f"{text} (overlay_agent.strict)")

    def undo(self) -> None:
        unmount_staging(self.mounted)
        self.mounted.clear()


def load_entries(run: Activation) -> tuple[Layer, ...]:
    """The list's layers; missing list = none; an unusable list = all skipped with the reason."""
    path = run.settings.list_path
    if run.settings.problem:
        run.note(f"kernel command line: {run.settings.problem}; no extension activated")
        return ()
    try:
        # never a fifo, a device or a symlink; a bounded read (agent.files)
        run.list_data = read_regular(path, listfile.MAX_LIST_BYTES)
    except FileNotFoundError:
        return ()
    except OSError as exc:
        run.note(f"{path}: cannot read: {exc.strerror}; no extension activated")
        return ()
    doc: object = None
    try:
        doc = listfile.load_document(listfile.decode_list(run.list_data, path), path)
        return listfile.check_list(doc, path)
    except ListFileError as exc:
        reason = str(exc)
    salvaged = listfile.salvage_layers(doc)   # parsed once: YAML is slow in pure Python
    if not salvaged:
        run.note(f"{reason}; no extension activated")
    for index, entry in enumerate(salvaged):
        run.record(index, entry, statusfile.SKIPPED, reason)
    if run.settings.strict:
        run.note(f"{reason}; every extension skipped")
    return ()


def skip_reason(entry: Layer, settings: ActivationSettings) -> str:
    if settings.disable:
        return "overlay_agent.disable"
    hit = sorted({entry.name, entry.id, entry.image} & settings.skip)
    return f"overlay_agent.skip={hit[0]}" if hit else ""


def mount_layer(cand: Candidate, staging: str) -> None:
    """Loop-attach read-only (through dm-verity when that is the layer's check) and mount
    squashfs ro,nodev at `staging`; undo on failure."""
    from agent import syscalls
    from agent.boot import loop, verity

    # 4 KiB blocks halve a squashfs mount here (fewer, larger reads through the loop
    # worker); mksquashfs pads images to 4 KiB unless told -nopad, so the last block is whole
    block = LOOP_BLOCK if cand.size % LOOP_BLOCK == 0 else 0
    try:
        dev = loop.attach_readonly(cand.fd, cand.path, block)
    except OSError as exc:
        raise LayerFailed(f"loop device for {cand.path}: {exc.strerror}") from None
    source = verity.attach(cand, dev) if cand.check == statusfile.CHECK_VERITY else dev.path
    try:
        os.makedirs(staging, exist_ok=True)
        syscalls.mount(source, staging, "squashfs", syscalls.MS_RDONLY | syscalls.MS_NODEV)
    except OSError as exc:
        verity.detach(cand)
        loop.detach(dev)
        raise LayerFailed(f"mount squashfs {cand.path} from {source}: {exc.strerror}") from None
    cand.loop = dev.path
    loop.release(dev)


def collect_candidates(run: Activation, entries: tuple[Layer, ...]) -> list[Candidate]:
    """Skip what the command line says, open every other image and check its size."""
    settings = run.settings
    cands: list[Candidate] = []
    try:
        for index, entry in enumerate(entries):
            reason = skip_reason(entry, settings)
            if reason:
                run.record(index, entry, statusfile.SKIPPED, reason)
                continue
            if len(cands) >= listfile.MAX_LAYERS:
                run.fail(index, entry, f"over the {listfile.MAX_LAYERS} extensions an overlay "
                                       "can stack above the root")
                continue
            cand = Candidate(index, entry, os.path.join(settings.images_dir, entry.image))
            try:
                open_candidate(cand)
            except LayerFailed as exc:
                cand.close()
                run.fail(index, entry, str(exc))
                continue
            cands.append(cand)
    except BaseException:
        for cand in cands:
            cand.close()
        raise
    return cands


def mount_layers(run: Activation) -> None:
    """Mount every candidate as its checks pass, then record them all in list order."""
    reserves = ""
    if any(cand.check == statusfile.CHECK_VERITY for cand in run.cands):
        from agent.boot import verity

        reserves = verity.lower_reserves()
    try:
        mount_in_order(run.cands, run.settings.staging_dir)
    finally:
        if reserves:
            from agent.boot import verity

            verity.restore_reserves(reserves)
        for cand in run.cands:
            cand.close()
    # every mount first, so that a strict failure below undoes them all
    run.mounted.extend((cand.index, cand.staging) for cand in run.cands if cand.staging)
    for cand in run.cands:
        if cand.staging:
            run.record(cand.index, cand.entry, statusfile.ACTIVE)
        else:
            run.fail(cand.index, cand.entry, cand.error)
        run.records[cand.index].update(check=cand.check, device=cand.device, loop=cand.loop)


def start_activation(settings: ActivationSettings) -> Activation:
    """First half: read the list, open every image not skipped, check sizes, and start the
    sha256 checks in the background. Needs only the initramfs, not the root."""
    start = time.monotonic()
    run = Activation(settings)
    try:
        run.cands = collect_candidates(run, load_entries(run))
        start_checks(run.cands, settings.strict)
    except BaseException:
        save_run_status(run, "", statusfile.API_NONE)   # strict: no root to boot
        raise
    finally:
        run.busy += time.monotonic() - start
    return run


def finish_activation(run: Activation, base_root: str, target: str) -> str:
    """Second half: stack the checked layers on base_root (mounted read-only) as one
    read-only overlay at `target`; return the dir to switch_root into (target, or base_root
    when no layer is active). Writes the status whatever happens."""
    start = time.monotonic()
    root, api = base_root, statusfile.API_NONE
    try:
        from agent import syscalls  # noqa: F401 - libffi loads here, while the checks run
        opening = upper.Opening(run.settings, base_root)   # a device mounts meanwhile
        try:
            open_store_layers(run.cands, run.settings.staging_dir, base_root)
            mount_layers(run)
        except BaseException:
            opening.abandon()
            raise
        run.upper = opening.finish(run.note)
        root, api = stack_layers(run, base_root, target)
    finally:
        run.busy += time.monotonic() - start
        save_run_status(run, root, api)
    return root


def activate_extensions(base_root: str, target: str, settings: ActivationSettings) -> str:
    """Both halves at once (hook mode, tests, the benchmark)."""
    return finish_activation(start_activation(settings), base_root, target)


def save_run_status(run: Activation, root: str, api: str) -> None:
    settings = run.settings
    if run.problems > MAX_PROBLEM_LINES:
        report(f"{run.problems - MAX_PROBLEM_LINES} more extensions not active, not shown "
               f"here: see {settings.status_path}")
    save_status(settings.status_path, statusfile.boot_doc(
        extensions=[run.records[i] for i in sorted(run.records)], root=root,
        overlay=api, notes=run.notes, disabled=settings.disable, strict=settings.strict,
        list_path=settings.list_path, activated=run.stamp, duration_ms=run.busy * 1000,
        root_mode=upper.root_mode(run.upper, api != statusfile.API_NONE),
        upper=None if run.upper is None else run.upper.doc()))


def save_status(path: str, doc: dict[str, object]) -> None:
    try:
        statusfile.write_json_atomic(path, doc)
    except OSError as exc:
        report(f"{path}: cannot write the status: {exc.strerror}")


def activate_mounted_root(root_dir: str, settings: ActivationSettings) -> str:
    """Hook mode: the root is already mounted at root_dir (initramfs-tools ${rootmnt}, dracut
    /sysroot). Move it aside to staging/base and put the overlay at root_dir instead."""
    from agent import syscalls
    from agent.boot.hookmode import move_mount, record_unmoved

    base = os.path.join(settings.staging_dir, "base")
    os.makedirs(base, exist_ok=True)
    try:
        move_mount(root_dir, base)
    except OSError as exc:
        record_unmoved(root_dir, settings,
                       f"{root_dir}: cannot move the root mount aside: {exc.strerror}")
        return root_dir
    try:
        upper.make_base_readonly(base)
        result = activate_extensions(base, root_dir, settings)
    except BaseException:
        syscalls.mount(base, root_dir, None, syscalls.MS_MOVE)
        raise
    if result == base:
        syscalls.mount(base, root_dir, None, syscalls.MS_MOVE)
    return root_dir

