"""Activate extensions: verify each squashfs, loop-mount it, stack all on the root, record.

Never brick: a layer that fails its check or mount is undone and recorded, the others
go on; when the overlay itself fails the bare root boots. Only `strict` raises.

Two halves: start_activation() reads the list, opens the images and starts their checks
in the background (agent.boot.verify); finish_activation() mounts the checked layers and
stacks them. PID 1 runs the first half before modules and the root device, so hashing
overlaps them; together (activate_extensions) they are the hook and the benchmark.

The activation budget (whole process, N=10: 25 ms) is mostly interpreter start and
imports, so this path imports no dataclasses, enum, json, re or threading (about 30 ms
together on this project's machines): plain classes, agent.lightjson and _thread. The
mount half's modules (agent.syscalls loads libffi) load while the checks already run.
"""

from __future__ import annotations

import os
import time

from agent import listfile, statusfile
from agent.boot import overlay
from agent.boot.values import Value
from agent.boot.verify import Candidate, LayerFailed, open_candidate, start_checks
from agent.boot.workers import share_out
from agent.errors import BootError, ListFileError
from agent.listfile import ListEntry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

MOUNT_THREADS = 3  # mounts at once; they mostly wait on the loop worker (2 to 4: alike here)
LOOP_BLOCK = 4096
LIST_LAYER = "l"   # staging name of the tmpfs layer that carries /etc/extensions.yaml
_NO = ("0", "n", "no", "false", "off")


class ActivationSettings(Value):
    """Frozen settings (a frozen dataclass in behaviour: keyword constructor, ==, hash)."""

    __slots__ = ("disable", "images_dir", "list_path", "skip", "staging_dir", "status_path",
                 "strict")
    disable: bool             # overlay_agent.disable
    skip: frozenset[str]      # overlay_agent.skip=NAME[,NAME] (metadata names or IDs)
    strict: bool              # overlay_agent.strict: any failure -> raise BootError
    list_path: str
    images_dir: str
    status_path: str          # /run is moved into the new root later
    staging_dir: str          # short: every layer path goes into one mount(2) page

    def __init__(self, disable: bool = False, skip: frozenset[str] = frozenset(),
                 strict: bool = False, list_path: str = listfile.LIST_PATH,
                 images_dir: str = listfile.IMAGES_DIR,
                 status_path: str = listfile.STATUS_PATH, staging_dir: str = "/run/oa") -> None:
        self._set(disable=disable, skip=frozenset(skip), strict=strict, list_path=list_path,
                  images_dir=images_dir, status_path=status_path, staging_dir=staging_dir)

    def replace(self, **changes: object) -> ActivationSettings:
        fields = dict(zip(self.__slots__, self._fields(), strict=True))
        return ActivationSettings(**{**fields, **changes})  # type: ignore[arg-type]


def settings_from_cmdline(text: str, **paths: str) -> ActivationSettings:
    """Only the overlay_agent.* keys; `paths` overrides list/images/status/staging paths."""
    from agent.boot.cmdline import PREFIX, split_cmdline

    disable = strict = False
    skip: set[str] = set()
    for word in split_cmdline(text)[0]:
        key, _, value = word.partition("=")
        if key == PREFIX + "disable":
            disable = value.lower() not in _NO
        elif key == PREFIX + "strict":
            strict = value.lower() not in _NO
        elif key == PREFIX + "skip":
            skip.update(part for part in value.split(",") if part)
    return ActivationSettings(disable, frozenset(skip), strict, **paths)


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

    def record(self, index: int, entry: ListEntry, phase: str, reason: str = "") -> None:
        self.records[index] = statusfile.extension_doc(
            index=index, image=entry.image, kind=entry.kind, name=entry.name,
            version=entry.version, phase=phase, reason=reason, author=entry.author,
            description=entry.description, compatibility=entry.compatibility,
            created=self.stamp, updated=self.stamp)
        if phase != statusfile.ACTIVE:
            report(f"extension {entry.id}: {phase}: {reason}")

    def fail(self, index: int, entry: ListEntry, reason: str) -> None:
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


def load_entries(run: Activation) -> tuple[ListEntry, ...]:
    """The list's layers; missing list = none; an unusable list = all skipped with the reason."""
    path = run.settings.list_path
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return ()
    except OSError as exc:
        run.note(f"{path}: cannot read: {exc.strerror}; no extension activated")
        return ()
    try:
        return listfile.read_list(text, path)
    except ListFileError as exc:
        reason = str(exc)
    salvaged = salvage_entries(text)
    if not salvaged:
        run.note(f"{reason}; no extension activated")
    for index, entry in enumerate(salvaged):
        run.record(index, entry, statusfile.SKIPPED, reason)
    if run.settings.strict:
        run.note(f"{reason}; every extension skipped")
    return ()


def salvage_entries(text: str) -> list[ListEntry]:
    """Best effort for a list we cannot use: its layers by image, to record them as skipped."""
    try:
        doc = listfile.load_document(text, "")
    except (ListFileError, ImportError):
        return []
    raws = doc.get("layers") if isinstance(doc, dict) else None
    found = []
    for raw in raws if isinstance(raws, list) else []:
        if isinstance(raw, dict) and isinstance(raw.get("image"), str):
            meta = raw.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            found.append(ListEntry(raw["image"], str(raw.get("kind", "")), "", -1,
                                   str(meta.get("name") or raw["image"]),
                                   str(meta.get("version") or ""), "", "", {}))
    return found


def skip_reason(entry: ListEntry, settings: ActivationSettings) -> str:
    if settings.disable:
        return "overlay_agent.disable"
    hit = sorted({entry.name, entry.id, entry.image} & settings.skip)
    return f"overlay_agent.skip={hit[0]}" if hit else ""


def mount_layer(cand: Candidate, staging: str) -> None:
    """Loop-attach read-only and mount squashfs ro,nodev at `staging`; undo on failure."""
    from agent import syscalls
    from agent.boot import loop

    # 4 KiB blocks halve a squashfs mount here (fewer, larger reads through the loop
    # worker); mksquashfs pads images to 4 KiB unless told -nopad, so the last block is whole
    block = LOOP_BLOCK if cand.size % LOOP_BLOCK == 0 else 0
    try:
        dev = loop.attach_readonly(cand.fd, cand.path, block)
    except OSError as exc:
        raise LayerFailed(f"loop device for {cand.path}: {exc.strerror}") from None
    try:
        os.makedirs(staging, exist_ok=True)
        syscalls.mount(dev.path, staging, "squashfs", syscalls.MS_RDONLY | syscalls.MS_NODEV)
    except OSError as exc:
        loop.detach(dev)
        raise LayerFailed(f"mount squashfs {cand.path} from {dev.path}: {exc.strerror}") from None
    loop.release(dev)


def unmount_staging(mounted: list[tuple[int, str]]) -> None:
    """Staging mounts go once the overlay holds its own clones (or on undo); loops autoclear."""
    from agent import syscalls

    for _, path in reversed(mounted):
        try:
            syscalls.umount2(path)
        except OSError:
            syscalls.umount2(path, syscalls.MNT_DETACH)
        try:
            os.rmdir(path)
        except OSError:
            pass


def mount_list_layer(run: Activation, staging: str) -> str | None:
    """A tiny tmpfs holding etc/extensions.yaml, stacked topmost.

    Binding the list over /etc/extensions.yaml needs that file in the root already (a bind
    needs a mount point, and neither a read-only root nor an overlay without upperdir can
    create one); a top layer shows the list read-only at that path on any root.
    """
    from agent import syscalls

    try:
        os.makedirs(staging, exist_ok=True)
        syscalls.mount("oa-list", staging, "tmpfs", syscalls.MS_NODEV | syscalls.MS_NOSUID,
                       "mode=0755,size=1m")
    except OSError as exc:
        run.notes.append(f"{listfile.BOUND_LIST_PATH}: not shown: tmpfs: {exc.strerror}")
        return None
    try:
        os.mkdir(os.path.join(staging, "etc"), 0o755)
        with open(run.settings.list_path, "rb") as src, open(
                os.path.join(staging, listfile.BOUND_LIST_PATH.lstrip("/")), "xb") as dst:
            dst.write(src.read())
    except OSError as exc:
        unmount_staging([(-1, staging)])
        run.notes.append(f"{listfile.BOUND_LIST_PATH}: not shown: {exc.strerror}")
        return None
    return staging


def collect_candidates(run: Activation, entries: tuple[ListEntry, ...]) -> list[Candidate]:
    """Skip what the command line says, open every other image and check its size."""
    settings = run.settings
    room = overlay.OVL_MAX_STACK - 1          # below them all, the base root
    cands: list[Candidate] = []
    try:
        for index, entry in enumerate(entries):
            reason = skip_reason(entry, settings)
            if reason:
                run.record(index, entry, statusfile.SKIPPED, reason)
                continue
            if len(cands) >= room:
                run.fail(index, entry, f"over the {room} extensions an overlay can stack")
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
    try:
        mount_in_order(run.cands, run.settings.staging_dir)
    finally:
        for cand in run.cands:
            cand.close()
    # every mount first, so that a strict failure below undoes them all
    run.mounted.extend((cand.index, cand.staging) for cand in run.cands if cand.staging)
    for cand in run.cands:
        if cand.staging:
            run.record(cand.index, cand.entry, statusfile.ACTIVE)
        else:
            run.fail(cand.index, cand.entry, cand.error)


def stack_layers(run: Activation, base_root: str, target: str) -> tuple[str, str]:
    """One read-only overlay; return (root to switch into, statusfile.API_*)."""
    if not run.mounted:
        return base_root, statusfile.API_NONE
    list_layer = None
    if len(run.mounted) + 2 <= overlay.OVL_MAX_STACK:
        list_layer = mount_list_layer(run, os.path.join(run.settings.staging_dir, LIST_LAYER))
    else:
        run.notes.append(f"{listfile.BOUND_LIST_PATH}: not shown: no room left under the "
                         f"kernel's {overlay.OVL_MAX_STACK}-layer limit")
    # overlayfs reads lowerdir leftmost = topmost: the LAST list entry goes first, so later
    # entries win over earlier ones; the base root is the bottom; the list layer tops all.
    lowers = [path for _, path in reversed(run.mounted)] + [base_root]
    if list_layer is not None:
        lowers.insert(0, list_layer)
        run.mounted.append((-1, list_layer))
    try:
        api = overlay.mount_overlay(lowers, target)
    except OSError as exc:
        reason = f"overlay at {target}: {exc.strerror}; booting the bare root"
        for index, _ in run.mounted:
            if index in run.records:
                run.records[index].update(phase=statusfile.FAILED, reason=reason)
        run.note(reason)
        run.undo()
        return base_root, statusfile.API_NONE
    run.undo()
    return target, api


def start_activation(settings: ActivationSettings) -> Activation:
    """First half: read the list, open every image not skipped, check sizes, and start the
    sha256 checks in the background. Needs only the initramfs, not the root."""
    start = time.monotonic()
    run = Activation(settings)
    try:
        run.cands = collect_candidates(run, load_entries(run))
        start_checks(run.cands)
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
        mount_layers(run)
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
    save_status(settings.status_path, statusfile.boot_doc(
        extensions=[run.records[i] for i in sorted(run.records)], root=root,
        overlay=api, notes=run.notes, disabled=settings.disable, strict=settings.strict,
        list_path=settings.list_path, activated=run.stamp, duration_ms=run.busy * 1000))


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
        result = activate_extensions(base, root_dir, settings)
    except BaseException:
        syscalls.mount(base, root_dir, None, syscalls.MS_MOVE)
        raise
    if result == base:
        syscalls.mount(base, root_dir, None, syscalls.MS_MOVE)
    return root_dir

