"""The boot-path import rule (agent/boot/__init__.py): PID 1, activation and the status
writer import none of the heavy modules, each of which costs every boot milliseconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"dataclasses", "enum", "json", "re", "threading", "typing", "inspect", "yaml",
         "structlog", "collections", "logging", "subprocess", "pyroute2", "psutil",
         "asyncio", "ctypes"}


@pytest.mark.parametrize("module", ["agent.boot.main", "agent.boot.activate",
                                    "agent.statusfile",
                                    "agent.listfile"])
def test_boot_path_modules_import_nothing_heavy(module: str) -> None:
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import {module}; "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], check=True,
                         capture_output=True, text=True).stdout.split()
    assert sorted(HEAVY & set(out)) == []
    assert module in out
