"""Image sources (registry, OCI layout, archives) -> verified layers -> unpacked folder."""

from __future__ import annotations

from pathlib import Path

from agent.errors import SourceError
from agent.image.model import FetchOptions, UnpackedExtension
from agent.image.source import Source


def fetch_image(src: Source, work: Path, options: FetchOptions) -> UnpackedExtension:
    raise SourceError(f"{src.text}: transport {src.transport.value} is not supported yet")
