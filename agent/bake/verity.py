"""Append a dm-verity hash tree to a squashfs image with `veritysetup format` (cryptsetup's
reference implementation), reproducibly.

The tree goes right after the data, in the same file (`--hash-offset`): one file per layer,
and the list's root hash vouches for all of it. veritysetup draws a random salt and UUID
unless given: both are derived from the data, so the same image gives the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from agent.errors import BuildError
from agent.listfile import VERITY_BLOCK, VERITY_HASH, Verity
from agent.tools import run

_ROOT_HASH = re.compile(rb"^Root hash:\s*([0-9a-f]{64})\s*$", re.M)


def data_digest(path: Path) -> bytes:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def pad_to_block(path: Path) -> int:
    """Zero-pad the image to whole 4 KiB blocks (mksquashfs pads already unless -nopad)."""
    size = path.stat().st_size
    whole = size + (-size % VERITY_BLOCK)
    if whole != size:
        os.truncate(path, whole)
    return whole


def salt_and_uuid(digest: bytes) -> tuple[str, str]:
    """A salt and a superblock UUID fixed by the content: reproducible, and still distinct
    per image (what the salt is for)."""
    salt = hashlib.sha256(b"overlay-agent verity salt\0" + digest).hexdigest()
    raw = hashlib.sha256(b"overlay-agent verity uuid\0" + digest).hexdigest()[:32]
    return salt, f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:32]}"


def verity_argv(image: Path, data_size: int, salt: str, uuid: str) -> list[str]:
    return ["veritysetup", "format", "--hash", VERITY_HASH, "--format", "1",
            "--data-block-size", str(VERITY_BLOCK), "--hash-block-size", str(VERITY_BLOCK),
            "--data-blocks", str(data_size // VERITY_BLOCK), "--hash-offset", str(data_size),
            "--salt", salt, "--uuid", uuid, str(image), str(image)]


def append_hash_tree(image: Path) -> Verity:
    """Format `image` in place (data, then the verity superblock and tree); the facts the
    list records. BuildError names the image when veritysetup fails or says no root hash."""
    data_size = pad_to_block(image)
    salt, uuid = salt_and_uuid(data_digest(image))
    proc = run(verity_argv(image, data_size, salt, uuid), capture=True)
    found = _ROOT_HASH.search(proc.stdout)
    if found is None:
        raise BuildError(f"{image}: veritysetup format printed no root hash")
    return Verity(found.group(1).decode(), salt, data_size, data_size)
