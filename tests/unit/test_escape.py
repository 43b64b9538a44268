"""The one escaping rule: text from inputs reaches a terminal as one line, no control codes."""

from __future__ import annotations

import pytest

from agent.escape import escape


@pytest.mark.parametrize(("text", "shown"), [
    ("plain name-1.0", "plain name-1.0"),
    ("café ü 名前", "café ü 名前"),
    ("a\nb", "a\\nb"),
    ("a\r\nb\tc", "a\\r\\nb\\tc"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("bell\x07 del\x7f c1\x85", "bell\\x07 del\\x7f c1\\x85"),
    ("line\u2028sep", "line\\u2028sep"),
    ("bidi\u202eevil", "bidi\\u202eevil"),
    ("nbsp\u00a0", "nbsp\\xa0"),
    ("bad\udcffbyte", "bad\\xffbyte"),
    ("lone\ud800", "lone\\ud800"),
    ("\U000e0001tag", "\\U000e0001tag"),
    ("back\\slash", "back\\slash"),
])
def test_escape(text: str, shown: str) -> None:
    assert escape(text) == shown
    assert escape(text).isprintable()
