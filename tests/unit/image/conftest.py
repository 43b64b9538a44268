from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.image.registry import Registry, serve


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A docker-registry server on a free 127.0.0.1 port, stopped after the module."""
    yield from serve(Path(tmp_path_factory.mktemp("registry")))
