"""Strict JSON: the parser and the value rules for JSON that comes from someone else.

Used for adapter_config.json files and for every structured object
(`mfgit.objects.canonical`). Python's ``json.loads`` on hostile input raises
``RecursionError`` (deep nesting), ``ValueError`` (an integer of more than
4,300 digits), accepts ``NaN`` and ``Infinity``, keeps the last of duplicate
keys, and returns strings holding lone surrogates (``"\\ud800"``) that can
never be written out as UTF-8. Here each of those is one `JSONValueError`
naming the rule, and a value that passes holds only: objects with string
keys, arrays, strings that are valid Unicode, booleans, null, integers of at
most 64 bits and finite floats, nested at most `MAX_DEPTH` deep.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64
INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1  # signed or unsigned 64-bit: what every JSON reader can hold
_MAX_INT_DIGITS = 20


class JSONValueError(ValueError):
    """JSON that breaks one rule. `where` is the path of the value ("$" is the top)."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}" if where else reason)
        self.where = where
        self.reason = reason


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise JSONValueError("", f"integer of {len(text.lstrip('-'))} digits; at most 64-bit integers are accepted")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONValueError("", f"number {text[:40]} is out of the range of a 64-bit float")
    return value


def _parse_constant(name: str) -> Any:
    raise JSONValueError("", f"{name} is not a number JSON allows")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise JSONValueError("", f"duplicate key {k!r}")
        out[k] = v
    return out


def loads_strict(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse UTF-8 JSON bytes under the rules above; JSONValueError for anything else."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JSONValueError("", f"not valid UTF-8 (byte {e.start})") from None
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant,
                           object_pairs_hook=_no_duplicates)
    except JSONValueError:
        raise
    except RecursionError:
        raise JSONValueError("", f"nested deeper than {max_depth} levels") from None
    except ValueError as e:  # JSONDecodeError, and int() past its digit limit
        raise JSONValueError("", f"not valid JSON ({e})") from None
    check_value(value, max_depth=max_depth)
    return value


def _string_problem(s: str) -> str | None:
    if s.isascii():
        return None
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"string holds the lone surrogate \\u{ord(s[e.start]):04x}, which is not Unicode text"
    return None


def _key_text(k: str) -> str:
    return k if len(k) <= 40 and k.isprintable() and k.isascii() else repr(k[:40])


def _first_problem(value: Any, max_depth: int) -> bool:
    """Whether `value` breaks a rule: a fast pass without paths (the common case is no problem).
    The same tests as check_value's, in the same order (subclasses such as numpy's float64 pass)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, str):
            if _string_problem(v):
                return True
        elif isinstance(v, int):
            if not INT_MIN <= v <= INT_MAX:
                return True
        elif isinstance(v, float):
            if not math.isfinite(v):
                return True
        elif isinstance(v, dict):
            if depth >= max_depth:
                return True
            for k, item in v.items():
                if not isinstance(k, str) or _string_problem(k):
                    return True
                stack.append((item, depth + 1))
        elif isinstance(v, (list, tuple)):
            if depth >= max_depth:
                return True
            stack.extend((item, depth + 1) for item in v)
        else:
            return True
    return False


def check_value(value: Any, *, max_depth: int = MAX_DEPTH, where: str = "$") -> None:
    """Raise JSONValueError unless `value` holds only what `loads_strict` accepts.

    Iterative, so that a deep value cannot exhaust the interpreter's stack;
    paths are built only to name a problem once one is found.
    """
    if not _first_problem(value, max_depth):
        return
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        v, path, depth = stack.pop()
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, str):
            problem = _string_problem(v)
            if problem:
                raise JSONValueError(path, problem)
        elif isinstance(v, int):
            if not INT_MIN <= v <= INT_MAX:
                raise JSONValueError(path, "integer out of the 64-bit range")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise JSONValueError(path, f"{v!r} is not a number JSON allows")
        elif isinstance(v, (dict, list, tuple)):
            if depth >= max_depth:
                raise JSONValueError(path, f"nested deeper than {max_depth} levels")
            if isinstance(v, dict):
                for k, item in v.items():
                    if not isinstance(k, str):
                        raise JSONValueError(path, f"key {k!r} is not a string")
                    problem = _string_problem(k)
                    if problem:
                        raise JSONValueError(path, f"key: {problem}")
                    stack.append((item, f"{path}.{_key_text(k)}", depth + 1))
            else:
                stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(v))
        else:
            raise JSONValueError(path, f"a {type(v).__name__} is not a JSON value")
    raise JSONValueError(where, "breaks a rule of strict JSON")  # pragma: no cover - the passes agree


def coerce(v: Any, depth: int = 0) -> Any:
    """`v` made a value that passes these rules: what cannot be one becomes its text.

    For metadata mfgit records from other tools (a model card's front matter,
    TrainingArguments): dates, enums, paths, non-finite numbers and integers
    past 64 bits become strings; tuples and sets become arrays. Nesting past
    MAX_DEPTH raises JSONValueError.
    """
    if depth > MAX_DEPTH:
        raise JSONValueError("", f"nested more than {MAX_DEPTH} deep")
    if v is None or isinstance(v, (bool, str)):
        return v.encode("utf-8", "replace").decode("utf-8") if isinstance(v, str) else v
    if isinstance(v, int):
        return v if INT_MIN <= v <= INT_MAX else str(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return {str(k): coerce(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [coerce(x, depth + 1) for x in v]
    return str(v)
