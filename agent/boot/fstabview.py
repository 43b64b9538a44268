"""The fstab the booted system sees when `/` is an overlay: the base root's own
/etc/fstab with its `/` line rewritten to say what is mounted there.

An installer's line (`UUID=... / ext4 errors=remount-ro 0 1`) makes
systemd-remount-fs run `mount -o remount /` with those options: on a read-only overlay
that asks for read-write and fails (the unit fails, the system is `degraded`); on a
writable one the ext4 option reaches overlayfs, which the new mount API refuses on
reconfigure. The view says `overlay / overlay ro` (or `rw`): the remount asks for what is
already there, and pass 0 keeps fsck off the base, which lies read-only below. The file
sits in the overlay's top read-only layer, so the base root is not touched; the
installer's line stays in it as a comment. Pure but for write_view(); boot-path imports.
"""

from __future__ import annotations

import os

FSTAB = "etc/fstab"
MAX_FSTAB = 1 << 20       # bytes read from the base's fstab; a larger one is not viewed


def root_view(text: str, writable: bool) -> str | None:
    """`text` with each `/` entry replaced; None when it has none (nothing to correct)."""
    out: list[str] = []
    changed = False
    mode = "rw" if writable else "ro"
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and fields[1] == "/":
            out += [f"# overlay-agent: / is an overlay of system extensions, {mode} by design; "
                    "the base root's line was:", f"# {line}", f"overlay / overlay {mode} 0 0"]
            changed = True
        else:
            out.append(line)
    return "\n".join(out) + "\n" if changed else None


def write_view(base_root: str, layer: str, writable: bool) -> bool:
    """Write the view of base_root's etc/fstab (a regular file, not a link into the
    initramfs) into `layer`/etc; False when there is nothing to view."""
    try:
        fd = os.open(os.path.join(base_root, FSTAB), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        data = os.read(fd, MAX_FSTAB + 1)
    finally:
        os.close(fd)
    view = root_view(data.decode("utf-8", "surrogateescape"), writable) \
        if len(data) <= MAX_FSTAB else None
    if view is None:
        return False
    out = os.open(os.path.join(layer, FSTAB), os.O_WRONLY | os.O_CREAT | os.O_EXCL
                  | os.O_CLOEXEC, 0o644)
    try:
        os.write(out, view.encode("utf-8", "surrogateescape"))
    finally:
        os.close(out)
    return True
