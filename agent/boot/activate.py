"""Activate extensions: verify each squashfs, loop-mount it, stack all on the root, record.

Never brick: a layer that fails its check or mount is undone and recorded, the others
go on; when the overlay itself fails the bare root boots. Only `strict` raises.
On the boot path: imports json, hashlib, threading and ctypes only (no yaml, no structlog).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field, replace

from agent import contract, syscalls
from agent.boot import console, loop, overlay
from agent.boot.cmdline import PREFIX, split_cmdline
from agent.errors import BootError, ListFileError
from agent.status import BootStatus, ExtensionStatus, OverlayApi, Phase, utc_now, write_status

CHUNK = 1 << 20
LIST_LAYER = "l"   # staging name of the tmpfs layer that carries /etc/extensions.yaml
_NO = ("0", "n", "no", "false", "off")


@dataclass(frozen=True)
class ActivationSettings:
    disable: bool = False            # overlay_agent.disable
    skip: frozenset[str] = frozenset()  # overlay_agent.skip=NAME[,NAME] (metadata names or IDs)
    strict: bool = False             # overlay_agent.strict: any failure -> raise BootError
    list_path: str = contract.LIST_PATH
    images_dir: str = contract.IMAGES_DIR
    status_path: str = contract.STATUS_PATH  # /run is moved into the new root later
    staging_dir: str = "/run/oa"     # short: every layer path goes into one mount(2) page


def settings_from_cmdline(text: str, **paths: str) -> ActivationSettings:
    """Only the overlay_agent.* keys; `paths` overrides list/images/status/staging paths."""
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
    return ActivationSettings(disable=disable, skip=frozenset(skip), strict=strict, **paths)


def report(line: str) -> None:
    """One line on the console and in kmsg (a seam tests replace)."""
    console.say(line, level=console.KERN_WARNING)


class LayerFailed(Exception):
    """One layer failed a check or a mount; the message is its recorded reason."""


@dataclass
class _Candidate:
    index: int
    layer: contract.Layer
    path: str
    fd: int = -1
    digest: str | None = None
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Run:
    """What one activation has done so far (mutable while it runs, frozen into BootStatus)."""

    settings: ActivationSettings
    records: dict[int, ExtensionStatus] = field(default_factory=dict)
    mounted: list[tuple[int, str]] = field(default_factory=list)   # (index, staging path)
    notes: list[str] = field(default_factory=list)
    stamp: str = field(default_factory=utc_now)

    def record(self, index: int, layer: contract.Layer, phase: Phase, reason: str = "") -> None:
        meta = layer.metadata
        self.records[index] = ExtensionStatus(
            index=index, id=layer.id, image=layer.image, kind=layer.kind.value, name=meta.name,
            version=meta.version, phase=phase, reason=reason, author=meta.author,
            description=meta.description, compatibility=dict(meta.compatibility),
            created=self.stamp, updated=self.stamp)
        if phase is not Phase.ACTIVE:
            report(f"extension {layer.id}: {phase.value}: {reason}")

    def fail(self, index: int, layer: contract.Layer, reason: str) -> None:
        self.record(index, layer, Phase.FAILED, reason)
        if self.settings.strict:
            self.undo()
            raise BootError(f"extension {layer.id}: {reason} (overlay_agent.strict)")

    def note(self, text: str) -> None:
        self.notes.append(text)
        report(text)
        if self.settings.strict:
            self.undo()
            raise BootError(f"{text} (overlay_agent.strict)")

    def undo(self) -> None:
        unmount_staging(self.mounted)
        self.mounted.clear()


def load_layers(run: _Run) -> tuple[contract.Layer, ...]:
    """The list's layers; missing list = none; unusable list = none, with a note."""
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
        return contract.parse_list(text, path).layers
    except ListFileError as exc:
        reason = str(exc)
    salvaged = salvage_layers(text)
    if not salvaged:
        run.note(f"{reason}; no extension activated")
    for index, layer in enumerate(salvaged):
        run.record(index, layer, Phase.SKIPPED, reason)
    if run.settings.strict:
        run.note(f"{reason}; every extension skipped")
    return ()


def salvage_layers(text: str) -> list[contract.Layer]:
    """Best effort for a list we cannot use: its layers by image, to record them as skipped."""
    try:
        doc = json.loads(text)
        raws = doc.get("layers") or []
        return [contract.Layer(image=raw["image"], metadata=contract.ExtensionMetadata(
                    name=str((raw.get("metadata") or {}).get("name") or raw["image"]),
                    version=str((raw.get("metadata") or {}).get("version") or "")))
                for raw in raws if isinstance(raw, dict) and isinstance(raw.get("image"), str)]
    except (ValueError, AttributeError, TypeError):
        return []


def skip_reason(layer: contract.Layer, settings: ActivationSettings) -> str:
    if settings.disable:
        return "overlay_agent.disable"
    names = {layer.metadata.name, layer.id, layer.image}
    hit = sorted(names & settings.skip)
    return f"overlay_agent.skip={hit[0]}" if hit else ""


def open_candidate(cand: _Candidate) -> None:
    """Open the image and check its size (cheap, before any hashing starts)."""
    try:
        cand.fd = os.open(cand.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LayerFailed(f"cannot open {cand.path}: {exc.strerror}") from None
    size = os.fstat(cand.fd).st_size
    if cand.layer.size >= 0 and size != cand.layer.size:
        raise LayerFailed(f"{cand.path}: size {size} bytes, the list says {cand.layer.size}")


def hash_fd(fd: int) -> str:
    """sha256 of a whole file by positioned 1 MiB reads (hashlib drops the GIL while hashing)."""
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    offset = 0
    while True:
        n = os.preadv(fd, [buf], offset)
        if n <= 0:
            return digest.hexdigest()
        digest.update(view[:n])
        offset += n


def start_hashing(cands: list[_Candidate]) -> None:
    """Hash on worker threads (about one per core) while the main thread mounts in order."""
    todo = [c for c in cands if c.layer.sha256]
    for c in cands:
        if not c.layer.sha256:
            c.done.set()
    lock = threading.Lock()
    queue = iter(todo)

    def work() -> None:
        while True:
            with lock:
                cand = next(queue, None)
            if cand is None:
                return
            try:
                cand.digest = hash_fd(cand.fd)
            except OSError as exc:
                cand.error = f"cannot read {cand.path}: {exc.strerror}"
            cand.done.set()

    for _ in range(min(len(todo), os.cpu_count() or 1, 4)):
        threading.Thread(target=work, daemon=True).start()


def check_digest(cand: _Candidate) -> None:
    cand.done.wait()
    if cand.error:
        raise LayerFailed(cand.error)
    want = cand.layer.sha256.lower()
    if cand.digest is not None and cand.digest != want:
        raise LayerFailed(f"{cand.path}: sha256 {cand.digest[:16]}..., "
                          f"the list says {want[:16]}...")


def mount_layer(cand: _Candidate, staging: str) -> None:
    """Loop-attach read-only and mount squashfs ro,nodev at `staging`; undo on failure."""
    try:
        dev = loop.attach_readonly(cand.fd, cand.path)
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
    for _, path in reversed(mounted):
        try:
            syscalls.umount2(path)
        except OSError:
            syscalls.umount2(path, syscalls.MNT_DETACH)
        try:
            os.rmdir(path)
        except OSError:
            pass


def mount_list_layer(run: _Run, staging: str) -> str | None:
    """A tiny tmpfs holding etc/extensions.yaml, stacked topmost.

    Binding the list over /etc/extensions.yaml needs that file in the root already (a bind
    needs a mount point, and neither a read-only root nor an overlay without upperdir can
    create one); a top layer shows the list read-only at that path on any root.
    """
    try:
        os.makedirs(staging, exist_ok=True)
        syscalls.mount("oa-list", staging, "tmpfs", syscalls.MS_NODEV | syscalls.MS_NOSUID,
                       "mode=0755,size=1m")
    except OSError as exc:
        run.notes.append(f"{contract.BOUND_LIST_PATH}: not shown: tmpfs: {exc.strerror}")
        return None
    try:
        os.mkdir(os.path.join(staging, "etc"), 0o755)
        with open(run.settings.list_path, "rb") as src:
            data = src.read()
        fd = os.open(os.path.join(staging, contract.BOUND_LIST_PATH.lstrip("/")),
                     os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o444)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        unmount_staging([(-1, staging)])
        run.notes.append(f"{contract.BOUND_LIST_PATH}: not shown: {exc.strerror}")
        return None
    return staging


def collect_candidates(run: _Run, layers: tuple[contract.Layer, ...]) -> list[_Candidate]:
    """Skip what the command line says, open every other image and check its size."""
    settings = run.settings
    room = overlay.OVL_MAX_STACK - 2          # the base root and the list layer
    cands: list[_Candidate] = []
    try:
        for index, layer in enumerate(layers):
            reason = skip_reason(layer, settings)
            if reason:
                run.record(index, layer, Phase.SKIPPED, reason)
                continue
            if len(cands) >= room:
                run.fail(index, layer, f"over the {room} extensions an overlay can stack")
                continue
            cand = _Candidate(index, layer, os.path.join(settings.images_dir, layer.image))
            try:
                open_candidate(cand)
            except LayerFailed as exc:
                cand.done.set()
                close_candidate(cand)
                run.fail(index, layer, str(exc))
                continue
            cands.append(cand)
    except BaseException:
        for cand in cands:
            cand.done.set()
            close_candidate(cand)
        raise
    return cands


def activate_layers(run: _Run, layers: tuple[contract.Layer, ...]) -> None:
    """Per layer in list order: sha256 (hashed ahead on threads), loop + squashfs mount."""
    cands = collect_candidates(run, layers)
    start_hashing(cands)
    try:
        for cand in cands:
            staging = os.path.join(run.settings.staging_dir, str(cand.index))
            try:
                check_digest(cand)
                mount_layer(cand, staging)
            except LayerFailed as exc:
                run.fail(cand.index, cand.layer, str(exc))
                continue
            finally:
                close_candidate(cand)
            run.mounted.append((cand.index, staging))
            run.record(cand.index, cand.layer, Phase.ACTIVE)
    finally:
        for cand in cands:
            cand.done.wait()
            close_candidate(cand)


def close_candidate(cand: _Candidate) -> None:
    if cand.fd >= 0 and cand.done.is_set():
        os.close(cand.fd)
        cand.fd = -1


def stack_layers(run: _Run, base_root: str, target: str) -> tuple[str, OverlayApi]:
    """One read-only overlay: the list layer, then the LAST list entry on top, base root last."""
    if not run.mounted:
        return base_root, OverlayApi.NONE
    list_layer = mount_list_layer(run, os.path.join(run.settings.staging_dir, LIST_LAYER))
    # overlayfs takes lowerdir leftmost = topmost: later list entries win over earlier ones.
    lowers = [path for _, path in reversed(run.mounted)] + [base_root]
    if list_layer is not None:
        lowers.insert(0, list_layer)
        run.mounted.append((-1, list_layer))
    try:
        api = overlay.mount_overlay(lowers, target)
    except OSError as exc:
        reason = f"overlay at {target}: {exc.strerror}; booting the bare root"
        for index, _ in run.mounted:
            old = run.records.get(index)
            if old is not None:
                run.records[index] = replace(old, phase=Phase.FAILED, reason=reason)
        run.note(reason)
        run.undo()
        return base_root, OverlayApi.NONE
    run.undo()
    return target, api


def activate_extensions(base_root: str, target: str, settings: ActivationSettings) -> str:
    """Stack the layers on base_root (mounted read-only) as one read-only overlay at `target`;
    return the dir to switch_root into (target, or base_root when no layer is active)."""
    start = time.monotonic()
    run = _Run(settings)
    root, api = base_root, OverlayApi.NONE
    try:
        layers = load_layers(run)
        activate_layers(run, layers)
        root, api = stack_layers(run, base_root, target)
    finally:
        status = BootStatus(
            extensions=tuple(run.records[i] for i in sorted(run.records)), root=root,
            overlay=api, notes=tuple(run.notes), disabled=settings.disable,
            strict=settings.strict, list_path=settings.list_path, activated=run.stamp,
            duration_ms=(time.monotonic() - start) * 1000)
        save_status(settings.status_path, status)
    return root


def save_status(path: str, status: BootStatus) -> None:
    try:
        write_status(path, status)
    except OSError as exc:
        report(f"{path}: cannot write the status: {exc.strerror}")


def activate_mounted_root(root_dir: str, settings: ActivationSettings) -> str:
    """Hook mode: the root is already mounted at root_dir (initramfs-tools ${rootmnt}, dracut
    /sysroot). Move it aside to staging/base and put the overlay at root_dir instead."""
    base = os.path.join(settings.staging_dir, "base")
    os.makedirs(base, exist_ok=True)
    try:
        syscalls.mount(root_dir, base, None, syscalls.MS_MOVE)
    except OSError as exc:
        raise BootError(f"{root_dir}: cannot move the root mount aside: {exc.strerror}") from None
    try:
        result = activate_extensions(base, root_dir, settings)
    except BaseException:
        syscalls.mount(base, root_dir, None, syscalls.MS_MOVE)
        raise
    if result == base:
        syscalls.mount(base, root_dir, None, syscalls.MS_MOVE)
    return root_dir
