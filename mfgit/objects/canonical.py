"""Canonical JSON: the one byte encoding of every structured object.

UTF-8, keys sorted, no insignificant whitespace, no NaN or Infinity, floats
in Python's shortest round-trip form. The same value always has the same
bytes, so the same object always has the same id.
"""

from __future__ import annotations

import json
import math
from typing import Any


class CanonicalError(ValueError):
    """A value cannot be encoded canonically (NaN, non-string key, ...)."""


def _check(value: Any, path: str) -> None:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalError(f"{path}: {value!r} is not allowed in canonical JSON")
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CanonicalError(f"{path}: key {k!r} is not a string")
            _check(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check(v, f"{path}[{i}]")
    elif value is None or isinstance(value, (str, int, bool)):
        return
    else:
        raise CanonicalError(f"{path}: {type(value).__name__} cannot be encoded")


def canonical_json(value: Any) -> bytes:
    """Encode `value` canonically. Raises CanonicalError for unencodable values."""
    _check(value, "$")
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise CanonicalError(f"{name} is not allowed in canonical JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise CanonicalError(f"duplicate key {k!r}")
        out[k] = v
    return out


def parse_canonical(data: bytes) -> Any:
    """Parse bytes that must be canonical JSON; re-encoding must give the same bytes."""
    try:
        value = json.loads(
            data.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_no_duplicates
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CanonicalError(str(e)) from None
    if canonical_json(value) != data:
        raise CanonicalError("not in canonical form")
    return value
