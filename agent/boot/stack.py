"""Stacking: the extension layers mounted at staging, a tmpfs list layer on top, the base
root at the bottom, as one overlay (read-only, or writable over the upper of
overlay_agent.upper=); when the overlay fails, the bare root. Mounts undone in reverse.
"""

from __future__ import annotations

import os

from agent import listfile, statusfile
from agent.boot import fstabview, overlay, upper

TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.boot.activate import Activation

LIST_LAYER = "l"   # staging name of the tmpfs layer that carries /etc/extensions.yaml


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


def mount_list_layer(run: Activation, staging: str, base_root: str) -> str | None:
    """A tiny tmpfs holding etc/extensions.yaml and the fstab view (agent.boot.fstabview),
    stacked topmost.

    Binding the list over /etc/extensions.yaml needs that file in the root already (a bind
    needs a mount point, and neither a read-only root nor an overlay without upperdir can
    create one); a top layer shows the list read-only at that path on any root.
    """
    from agent import syscalls

    try:
        os.makedirs(staging, exist_ok=True)
        size = max(1 << 20, 2 * len(run.list_data))   # a list may be up to 4 MiB
        syscalls.mount("oa-list", staging, "tmpfs", syscalls.MS_NODEV | syscalls.MS_NOSUID,
                       f"mode=0755,size={size}")
    except OSError as exc:
        run.notes.append(f"{listfile.BOUND_LIST_PATH}: not shown: tmpfs: {exc.strerror}")
        return None
    try:
        os.mkdir(os.path.join(staging, "etc"), 0o755)
        if run.mounted:
            # the bytes read and checked at the start, not whatever the path holds now
            with open(os.path.join(staging, listfile.BOUND_LIST_PATH.lstrip("/")), "xb") as dst:
                dst.write(run.list_data)
        fstabview.write_view(base_root, staging, run.upper is not None)
    except OSError as exc:
        unmount_staging([(-1, staging)])
        run.notes.append(f"{listfile.BOUND_LIST_PATH}: not shown: {exc.strerror}")
        return None
    return staging


def stack_layers(run: Activation, base_root: str, target: str) -> tuple[str, str]:
    """One overlay: read-only, or writable over the upper of overlay_agent.upper=
    (agent.boot.upper); return (root to switch into, statusfile.API_*)."""
    if not run.mounted and run.upper is None:
        return base_root, statusfile.API_NONE
    list_layer = None
    if len(run.mounted) + 2 <= listfile.KERNEL_MAX_LOWER:
        list_layer = mount_list_layer(run, os.path.join(run.settings.staging_dir, LIST_LAYER),
                                      base_root)
    else:
        run.notes.append(f"{listfile.BOUND_LIST_PATH}: not shown: no room left under the "
                         f"kernel's {listfile.KERNEL_MAX_LOWER}-layer limit")
    # overlayfs reads lowerdir leftmost = topmost: the LAST list entry goes first, so later
    # entries win over earlier ones; the base root is the bottom; the list layer tops all.
    lowers = [path for _, path in reversed(run.mounted)] + [base_root]
    if list_layer is not None:
        lowers.insert(0, list_layer)
        run.mounted.append((-1, list_layer))
    try:
        if run.upper is None:
            api = overlay.mount_overlay(lowers, target)
        else:
            api = upper.mount_writable(lowers, target, run.upper, run.note)
    except OSError as exc:
        if run.upper is not None:
            run.upper.release()
            run.upper = None
        reason = f"overlay at {target}: {exc.strerror}; booting the bare root"
        for index, _ in run.mounted:
            if index in run.records:
                run.records[index].update(phase=statusfile.FAILED, reason=reason)
        run.note(reason)
        run.undo()
        return base_root, statusfile.API_NONE
    run.undo()
    upper.announce_root(run.upper)
    return target, api
