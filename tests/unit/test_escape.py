"""The one escaping rule: text from inputs reaches a terminal as one line, no control codes."""

from __future__ import annotations

import json

import pytest

from agent.escape import escape, escape_json


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


@pytest.mark.parametrize(("value", "shown"), [
    ("a\u2028b", '"a\\u2028b"'),
    ("x\x9b[2J", '"x\\u009b[2J"'),
    ("bad\udcff", '"bad\\udcff"'),
    ("\U000e0001t", '"\\udb40\\udc01t"'),
    ("é名", '"é名"'),
])
def test_escape_json_keeps_the_value_and_one_line(value: str, shown: str) -> None:
    text = escape_json(json.dumps(value, ensure_ascii=False))
    assert text == shown
    assert json.loads(text) == value
    assert len(text.splitlines()) == 1
