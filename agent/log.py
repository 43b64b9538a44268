"""Logging for the build-side commands: structlog events, rendered for a person or as JSON.

Build-side modules log key-value events through get_logger(); `--log-format console`
(the default) renders them as aligned lines on stderr, `--log-format json` as one JSON
object per line for CI pipelines. Loggers wrap stdlib loggers, so levels and a missing
setup() behave as stdlib logging does (warnings only, to stderr). The boot path never
imports this module (structlog pulls in asyncio and ssl); boot code writes to the
console through agent.boot.console instead.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

FORMATS = ("console", "json")


def get_logger(name: str) -> Any:
    """A structlog logger over the stdlib logger `name` (events as keyword fields)."""
    return _LOGGERS.get(name) or _LOGGERS.setdefault(name, structlog.wrap_logger(
        logging.getLogger(name), wrapper_class=structlog.stdlib.BoundLogger,
        processors=[structlog.stdlib.ProcessorFormatter.wrap_for_formatter]))


_LOGGERS: dict[str, Any] = {}


def setup(verbosity: int, fmt: str = "console") -> None:
    """Send every record to stderr as one line: -v info, -vv debug, else warnings only."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    pre: list[Any] = [structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                      structlog.processors.TimeStamper(fmt="iso" if fmt == "json" else "%H:%M:%S",
                                                       utc=True)]
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json" else
                     structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    formatter = structlog.stdlib.ProcessorFormatter(   # for structlog and stdlib records
        processors=[*pre, structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
