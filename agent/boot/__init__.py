"""PID 1 of the initramfs and the boot-time activation of extensions.

The boot-path import rule, stated once here: every module PID 1 imports
(agent.boot.*, and agent.listfile, agent.statusfile, agent.lightjson, agent.values,
agent.paths, agent.syscalls, agent.files, agent.escape, agent.yamltext) imports only the interpreter's built-in and frozen modules,
os, time, errno, stat, _thread, _json, _ctypes and fcntl, and other modules of that set.
No dataclasses, enum, json, re, typing, collections, threading, subprocess, logging,
yaml or structlog: each costs milliseconds on a host and tens of them under emulation,
paid on every boot (figures: bench/results.md, "Boot"). Types for mypy sit under
`TYPE_CHECKING = False` / `if TYPE_CHECKING:`. Two imports are allowed late, only when
needed: agent.syscalls (libffi) once something is mounted, and pyroute2's uevent socket
(agent.boot.uevent) when the root device must be waited for.
tests/unit/test_boot_imports.py guards the rule.
"""
