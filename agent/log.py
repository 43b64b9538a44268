"""Logging for the build-side commands: stdlib logging records rendered by structlog.

The boot path never imports this module (structlog pulls in asyncio and ssl); boot
code writes to the console through agent.boot.console instead.
"""

from __future__ import annotations

import logging
import sys
from typing import Any


def setup(verbosity: int) -> None:
    """Send every `logging` record to stderr as one structlog-rendered line."""
    import structlog

    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    pre: list[Any] = [structlog.stdlib.add_log_level, structlog.processors.TimeStamper(fmt="%H:%M:%S")]
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())],
        foreign_pre_chain=pre,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    structlog.configure(
        processors=[*pre, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
