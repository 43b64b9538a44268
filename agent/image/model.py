"""The records the image side hands to the rest of the project (fetched, unpacked, checked)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.listfile import Metadata

DEFAULT_MAX_LAYER_SIZE = 4 * 2**30


@dataclass(frozen=True)
class Problem:
    """One validation finding: `SOURCE: path: reason` (path empty for whole-image problems)."""

    source: str
    path: str
    reason: str

    def __str__(self) -> str:
        if self.path:
            return f"{self.source}: {self.path}: {self.reason}"
        return f"{self.source}: {self.reason}"


@dataclass(frozen=True)
class UnpackedExtension:
    source: str                 # as written by the user
    root: Path                  # folder holding manifest.yaml and rootfs/
    digest: str | None          # manifest digest for image sources, None for dir:
    metadata: Metadata | None   # None when the manifest did not load


@dataclass(frozen=True)
class FetchOptions:
    insecure_registries: tuple[str, ...] = ()
    arch: str = "amd64"
    max_layer_size: int = DEFAULT_MAX_LAYER_SIZE
    cache: Path | None = None   # registry images kept by digest (see agent.image.pull)
