"""Building the parser must stay light: the booted system's runtime carries only what
`agent.cli` imports, so build-side modules are imported when their command runs."""

from __future__ import annotations

import subprocess
import sys

from agent.commands.pack import FORMATS
from agent.image.pack import PackFormat


def test_parser_does_not_import_build_side_modules() -> None:
    code = ("import sys; from agent.cli import build_parser; build_parser(); "
            "print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-I", "-c", code], capture_output=True,
                                text=True, check=True).stdout.split())
    heavy = {"tarfile", "agent.image", "agent.bake.build",
             "agent.initramfs.build", "structlog", "yaml", "pyroute2"}
    assert not heavy & loaded, sorted(heavy & loaded)


def test_pack_format_choices_match_the_pack_module() -> None:
    assert tuple(f.value for f in PackFormat) == FORMATS
