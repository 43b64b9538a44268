"""fetch_extension: turn any source string into an unpacked extension folder under staging."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.errors import AgentError, SourceError
from agent.image.manifest import load_manifest
from agent.image.model import FetchOptions, Problem, UnpackedExtension
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
    from agent.image.pull import fetch_image

    return fetch_image(src, work, options)


def fetch_all(sources: Sequence[str], staging: Path, options: FetchOptions,
              on_fetched: Callable[[int, UnpackedExtension], None] | None = None,
              ) -> tuple[list[UnpackedExtension], list[Problem]]:
    """Fetch every source, even after one fails, so that every problem is reported at once;
    a source that cannot be fetched is one whole-image problem."""
    exts: list[UnpackedExtension] = []
    problems: list[Problem] = []
    for i, source in enumerate(sources):
        try:
            ext = fetch_extension(source, staging / f"{i:03d}", options)
        except AgentError as exc:
            text = str(exc)
            reason = text[len(source) + 2:] if text.startswith(f"{source}: ") else text
            problems.append(Problem(source, "", reason))
            continue
        exts.append(ext)
        if on_fetched is not None:
            on_fetched(i, ext)
    return exts, problems
