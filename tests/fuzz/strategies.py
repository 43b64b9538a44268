"""Inputs for the fuzz tier: random bytes, and valid inputs broken on purpose (a random
input is rarely well-formed enough to reach the deep parts of a parser)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# text that a hostile name or value might hold: controls, surrogates, separators, quotes
NASTY_TEXT = st.text(alphabet=st.characters(codec=None, categories=None), max_size=40) | \
    st.sampled_from(["", ".", "..", "/", "a/../b", "\0", "\n", "\x1b[2J", "\udcff", "\ud800",
                     "é", "\u2028", "*a", "&a", "!!python/object:os.system", "9" * 5000,
                     "NaN", "1e999", "-1", "true"])

JSON_SCALARS = st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | \
    st.floats(allow_nan=True) | NASTY_TEXT

JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(NASTY_TEXT, inner, max_size=4), max_leaves=20)


@st.composite
def mutated(draw: Any, base: bytes) -> bytes:
    """`base` with a few bytes flipped, a slice cut out or repeated, or truncated."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        how = draw(st.sampled_from(["flip", "cut", "dup", "truncate", "insert"]))
        at = draw(st.integers(0, len(data) - 1))
        if how == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif how == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        elif how == "dup":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
        elif how == "truncate":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(max_size=16))
    return bytes(data)
