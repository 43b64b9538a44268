"""JSON for the boot path without the json package, which imports re.

The parsing and the string quoting are json's own C accelerator (_json); only the
top-level whitespace and the walk over values live here. Output is compact, keys sorted.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:   # collections.abc imports the whole collections package
    from collections.abc import Callable

try:
    import _json
except ImportError:   # an interpreter without the accelerator: the json package then
    _json = None  # type: ignore[assignment]


class _Context:
    """The attributes _json.make_scanner reads from a json.JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"),
                      "-Infinity": float("-inf")}.__getitem__


_WS = " \t\n\r"
_scan: Callable[[str, int], tuple[object, int]] | None = (
    _json.make_scanner(_Context()) if _json is not None else None)  # type: ignore[arg-type]


def loads(text: str) -> object:
    """Parse one JSON document; ValueError when `text` is not exactly that."""
    if _scan is None:
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_WS))
    try:
        value, end = _scan(text, start)
    except StopIteration:
        raise ValueError(f"Expecting value at char {start}") from None
    except ImportError:   # _json builds its error from json.decoder, absent from a slim runtime
        raise ValueError("not valid JSON") from None
    if text[end:].strip(_WS):
        raise ValueError(f"Extra data at char {end}")
    return value


def dumps(value: object) -> str:
    """Compact JSON with sorted keys (what json.dumps(v, sort_keys=True) means)."""
    if _json is None:
        import json

        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    out: list[str] = []
    _emit(value, out, _json.encode_basestring_ascii)
    return "".join(out)


def _emit(value: object, out: list[str], quote: Callable[[str], str]) -> None:
    if value is None or isinstance(value, bool):
        out.append({None: "null", True: "true", False: "false"}[value])
    elif isinstance(value, (int, float)):
        out.append(repr(value))
    elif isinstance(value, str):
        out.append(quote(value))
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            out.append("," if i else "")
            _emit(item, out, quote)
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value)):
            out.append(("," if i else "") + quote(str(key)) + ":")
            _emit(value[key], out, quote)
        out.append("}")
    else:
        raise TypeError(f"not JSON: {type(value).__name__}")
