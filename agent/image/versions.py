"""Version ranges as Talos manifests write them: `>= v1.0.0`, `>= 1.2, < 2`, `~> 1.3`.

Comma-separated constraints must all hold; `~> X.Y` means `>= X.Y, < X+1` and
`~> X.Y.Z` means `>= X.Y.Z, < X.Y+1` (the pessimistic operator of Hashicorp's
go-version, which Talos uses). A leading `v` is optional everywhere.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from agent.escape import clip

_VERSION = re.compile(r"v?(\d+(?:\.\d+)*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")
_CONSTRAINT = re.compile(r"\s*(>=|<=|!=|~>|=|>|<)?\s*(v?\d\S*)\s*")
_OPS: dict[str, Callable[[tuple[int, ...], tuple[int, ...]], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
    "=": operator.eq, "!=": operator.ne,
}


MAX_DIGITS = 18     # per component: fits 64 bits, far below Python's int digit limit


class VersionRangeError(ValueError):
    """A version or range that cannot be parsed; str() is the reason."""


@dataclass(frozen=True, order=True)
class Version:
    numbers: tuple[int, ...]
    prerelease: bool = False     # 1.2.0-alpha.1 sorts before 1.2.0: only relevant for `<`

    def __str__(self) -> str:
        return ".".join(map(str, self.numbers))


@dataclass(frozen=True)
class Constraint:
    op: str
    version: Version

    def allows(self, v: Version) -> bool:
        if self.op == "~>":
            upper = list(self.version.numbers[:-1])
            upper[-1] += 1
            return (_padded(v, self.version) >= _padded(self.version, v)
                    and v.numbers[:len(upper)] < tuple(upper))
        left, right = _padded(v, self.version), _padded(self.version, v)
        if left == right and v.prerelease != self.version.prerelease:
            # a pre-release of X sorts just below X
            left = left + ((-1,) if v.prerelease else (0,))
            right = right + ((-1,) if self.version.prerelease else (0,))
        return _OPS[self.op](left, right)


@dataclass(frozen=True)
class VersionRange:
    text: str
    constraints: tuple[Constraint, ...]

    def allows(self, version: Version) -> bool:
        return all(c.allows(version) for c in self.constraints)


def _padded(a: Version, b: Version) -> tuple[int, ...]:
    return a.numbers + (0,) * max(0, len(b.numbers) - len(a.numbers))


def parse_version(text: str) -> Version:
    """Parse `v1.2.3`, `1.2`, `12`, `1.10.0-alpha.1`; raise VersionRangeError."""
    m = _VERSION.fullmatch(text.strip())
    if m is None:
        raise VersionRangeError(f"{clip(text)!r} is not a version")
    numbers = m.group(1).split(".")
    if any(len(n) > MAX_DIGITS for n in numbers):
        raise VersionRangeError(f"a number has more than {MAX_DIGITS} digits")
    return Version(tuple(int(n) for n in numbers), m.group(2) is not None)


def parse_range(text: str) -> VersionRange:
    """Parse a comma-separated list of constraints; raise VersionRangeError with the reason."""
    if not text.strip():
        raise VersionRangeError("empty version range")
    constraints = []
    for part in text.split(","):
        m = _CONSTRAINT.fullmatch(part)
        if m is None:
            raise VersionRangeError(f"cannot parse constraint {clip(part.strip())!r}")
        op = m.group(1) or "="
        version = parse_version(m.group(2))
        if op == "~>" and len(version.numbers) < 2:
            raise VersionRangeError(f"'~>' needs at least major.minor in {clip(part.strip())!r}")
        constraints.append(Constraint(op, version))
    return VersionRange(text, tuple(constraints))
