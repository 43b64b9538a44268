"""Typed errors. Library code raises these; only agent.cli turns them into text and exit codes.

Every message is one line that names the input and the problem.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent reports to a user without a traceback."""

    exit_code = 1


class UsageError(AgentError):
    """Bad command-line arguments or option values."""

    exit_code = 2


class ToolError(AgentError):
    """An external tool (mksquashfs, skopeo, depmod, ...) failed or is missing."""


class SourceError(AgentError):
    """An image source could not be read, fetched or resolved."""


class UnpackError(AgentError):
    """A layer archive holds something that must not be unpacked."""


class ValidationFailed(AgentError):
    """One or more extensions failed validation; `problems` holds every one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) found:\n" + "\n".join(self.problems))


class BuildError(AgentError):
    """An image (initramfs, squashfs, archive) could not be built."""


class ListFileError(AgentError):
    """The extension list file is unreadable or of an unknown schema version."""


class BootError(AgentError):
    """A fatal boot problem: PID 1 prints it and follows panic=."""


class StatusError(AgentError):
    """The boot status file is missing (booted without the agent) or unreadable."""
