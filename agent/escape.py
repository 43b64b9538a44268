"""Escaping of text that came from an input (a file name, a version, a reason quoting one)
before it reaches a terminal, a table row, the console or the journal: the one home of it.

A newline, a carriage return or an escape sequence inside a name must not forge a line, a
row or a colour. Printable characters pass unchanged; every other character becomes a
Python-style escape (`\\n`, `\\t`, `\\x1b`, `\\u2028`), and a byte that was not UTF-8 (kept
by surrogateescape, e.g. in a file name) becomes `\\xNN`. Light enough for the boot path
(str methods only).
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_char(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:        # an undecodable byte, through surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """`text` with every non-printable character escaped: one line, no control sequence."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else escape_char(ch) for ch in text)



def escape_json(text: str) -> str:
    """JSON text with every non-printable character left raw by `ensure_ascii=False`
    (U+2028, a C1 control such as the 8-bit CSI, an undecodable byte) as a \\u escape:
    still the same JSON, and one line on any terminal."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch.isprintable() or ch == "\n":
            out.append(ch)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:   # a surrogate pair, as JSON spells characters past the BMP
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    return "".join(out)


def clip(text: str, limit: int = 80) -> str:
    """At most `limit` characters of `text`, with `...` where it was cut (for quoting an
    input inside a one-line message)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."
