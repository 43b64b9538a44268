"""Hook mode's edges: moving the mounted root aside under shared propagation, and recording
why nothing was stacked when it cannot be moved."""

from __future__ import annotations

import errno
import os

from agent import statusfile
from agent.boot.activate import ActivationSettings, save_run_status, start_activation
from agent.errors import BootError


def move_mount(src: str, dest: str) -> None:
    """MS_MOVE; under systemd `/` is shared and the kernel refuses to move a mount out of a
    shared parent (EINVAL), so the tree is made private first, as systemd's switch-root does
    before its own move."""
    from agent import syscalls  # ctypes: loaded only once something is mounted

    try:
        syscalls.mount(src, dest, None, syscalls.MS_MOVE)
    except OSError as exc:
        if exc.errno != errno.EINVAL or not os.path.ismount(src):
            raise
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
        syscalls.mount(src, dest, None, syscalls.MS_MOVE)


def record_unmoved(root_dir: str, settings: ActivationSettings, reason: str) -> None:
    """No root to stack on: every layer that would have been stacked is recorded as failed
    with `reason` (so `get extensions` says why), and the bare root boots; strict raises."""
    run = start_activation(settings.replace(strict=False))
    run.settings = settings
    for cand in run.cands:
        cand.wait_checked()
        cand.close()
        run.record(cand.index, cand.entry, statusfile.FAILED, reason)
    run.notes.append(reason)
    save_run_status(run, root_dir, statusfile.API_NONE)
    if settings.strict:
        raise BootError(f"{reason} (overlay_agent.strict)")
