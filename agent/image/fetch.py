"""fetch_extension: turn any source string into an unpacked extension folder under staging."""

from __future__ import annotations

import tempfile
from pathlib import Path

from agent.errors import SourceError
from agent.image.manifest import load_manifest
from agent.image.model import FetchOptions, UnpackedExtension
from agent.image.source import Source, Transport, parse_source


def open_dir(src: Source) -> UnpackedExtension:
    root = Path(src.path)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise SourceError(f"{src.text}: {root} {what}")
    return UnpackedExtension(src.text, root, None, load_manifest(root).metadata)


def fetch_extension(source: str, staging: Path, options: FetchOptions) -> UnpackedExtension:
    """Fetch and unpack one source under `staging` (dir: sources are used in place).

    Raises SourceError / UnpackError with one line naming the source.
    """
    src = parse_source(source)
    if src.transport is Transport.DIR:
        return open_dir(src)
    staging.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ext-", dir=staging))
    from agent.image.layers import fetch_image

    return fetch_image(src, work, options)
