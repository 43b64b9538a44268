"""A real registry server (Debian's docker-registry) on 127.0.0.1, for the registry tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARY = "docker-registry"   # Debian package docker-registry (bookworm 2.8.2, trixie 2.8.3)


@dataclass(frozen=True)
class Registry:
    host: str          # "127.0.0.1:PORT"

    def ref(self, repo: str) -> str:
        return f"{self.host}/{repo}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(host: str, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{BINARY} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://{host}/v2/", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    raise RuntimeError(f"{BINARY} did not answer on {host} within {timeout} s")


def serve(tmp: Path) -> Iterator[Registry]:
    if shutil.which(BINARY) is None:
        pytest.skip(f"{BINARY} not installed (Debian package docker-registry; "
                    "scripts/ensure-deps.sh installs it)")
    host = f"127.0.0.1:{free_port()}"
    config = tmp / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {tmp / 'data'}\nhttp:\n  addr: {host}\n")
    with open(tmp / "registry.log", "wb") as log:
        proc = subprocess.Popen([BINARY, "serve", str(config)], stdout=log, stderr=log)
        try:
            wait_ready(host, proc)
            yield Registry(host)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
