"""Options several commands share, declared once: sizes and the image-fetching options."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.errors import UsageError

# The image modules (tarfile, lzma, bz2...) are imported when a command runs, not when the
# parser is built: the booted system's `overlay-agent get` must not carry them.
if TYPE_CHECKING:
    from agent.image import FetchOptions

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str, flag: str = "--max-size") -> int:
    """Bytes from `123`, `64M`, `64MiB` or `1.5G` (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if match is None:
        raise UsageError(f"{flag} {text!r}: not a size (e.g. 64M, 1G, 123456)")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise UsageError(f"{flag} {text!r}: must be positive")
    return size


def size_type(flag: str) -> Callable[[str], int]:
    """An argparse type for a size option, its errors naming `flag`."""
    return lambda text: parse_size(text, flag)


def add_fetch_arguments(p: argparse.ArgumentParser) -> None:
    """Options every command that reads image sources shares."""
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                   help="allow plain HTTP / unverified TLS for this registry (repeatable)")
    p.add_argument("--arch", default="amd64", help="platform to pick from multi-arch images")
    p.add_argument("--max-layer-size", type=size_type("--max-layer-size"), default=None,
                   metavar="SIZE", help="refuse a layer that unpacks to more (default 4G)")


def fetch_options(args: argparse.Namespace) -> FetchOptions:
    from agent.image import FetchOptions
    from agent.image.model import DEFAULT_MAX_LAYER_SIZE

    size = DEFAULT_MAX_LAYER_SIZE if args.max_layer_size is None else args.max_layer_size
    return FetchOptions(tuple(args.insecure_registry), args.arch, size)
