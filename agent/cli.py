"""Command line: the only place that turns typed errors into messages and exit codes.

Each subcommand lives in its own module that exposes `register(subparsers)`; the
parser it adds sets `func` (called with the parsed namespace, returning an exit
code) and may set `light=True` to skip structlog (commands run on the boot path or
in the booted system); the others log through agent.log.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from agent import __version__
from agent.errors import AgentError, ValidationFailed
from agent.escape import escape

# Modules that add subcommands, in the order `--help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "agent.commands.fetch_kernels",
    "agent.commands.mkinitramfs",
    "agent.commands.validate",
    "agent.commands.pack",
    "agent.commands.build",
    "agent.commands.inspect",
    "agent.commands.gc",
    "agent.commands.get",
    "agent.commands.boot",
    "agent.commands.initramfs_hook",
    "agent.commands.metrics",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overlay-agent",
        description="Talos-style system extensions: build them into an initramfs, "
                    "stack them read-only at boot, show what booted.")
    parser.add_argument("--version", action="version", version=f"overlay-agent {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress (-vv for debug detail)")
    parser.add_argument("--log-format", choices=("console", "json"), default="console",
                        help="log lines for a person (default) or JSON lines for CI")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # a name the terminal's locale cannot encode is shown as \xNN, never a traceback
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except AgentError as exc:   # an option's type (a size) refused its value
        print(f"overlay-agent: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    if not getattr(args, "light", False):
        from agent import log

        log.setup(args.verbose + (2 if args.debug else 0), args.log_format)
    try:
        return int(args.func(args) or 0)
    except AgentError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"overlay-agent: error: {error_text(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("overlay-agent: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


def error_text(exc: AgentError) -> str:
    """The message, escaped: a ValidationFailed keeps one line per problem."""
    if isinstance(exc, ValidationFailed):
        return "\n".join([f"{len(exc.problems)} problem(s) found:",
                          *(escape(p) for p in exc.problems)])
    return escape(str(exc))
