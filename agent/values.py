"""Frozen records and an undo stack shared by build, boot and runtime.

Written without dataclasses or contextlib because PID 1 imports them: see the boot-path
import rule in agent/boot/__init__.py.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Self


class Value:
    """Immutable record: fields in __slots__, equality, hash and repr by field."""

    __slots__: tuple[str, ...] = ()

    def _set(self, **fields: object) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name}")

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._fields() == other._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._fields())

    def replace(self, **changes: object) -> Self:
        """A copy with some fields changed (dataclasses.replace)."""
        fields = dict(zip(self.__slots__, self._fields(), strict=True))
        return type(self)(**{**fields, **changes})  # type: ignore[call-arg]

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({inner})"


class Undo:
    """Undo actions run in reverse when the `with` block ends (as contextlib.ExitStack);
    pop_all() keeps everything done so far."""

    def __init__(self) -> None:
        self._actions: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def callback(self, func: Callable[..., object], *args: object) -> None:
        self._actions.append((func, args))

    def pop_all(self) -> None:
        self._actions.clear()

    def close(self) -> None:
        while self._actions:
            func, args = self._actions.pop()
            try:
                func(*args)
            except OSError:
                pass  # undo is best effort: the error that started it is what gets reported

    def __enter__(self) -> Undo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
