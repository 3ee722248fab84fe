"""Canonical JSON: the one byte encoding of every structured object.

UTF-8, keys sorted, no insignificant whitespace, no NaN or Infinity, floats
in Python's shortest round-trip form, integers of at most 64 bits, nesting
at most `mfgit.formats.jsonvalue.MAX_DEPTH` deep, strings of valid Unicode
(no lone surrogates). The same value always has the same bytes, so the same
object always has the same id; bytes that are not the canonical encoding of
what they parse to are not an object.
"""

from __future__ import annotations

import json
from typing import Any

from mfgit.formats.jsonvalue import JSONValueError, check_value, loads_strict


class CanonicalError(ValueError):
    """A value cannot be encoded canonically (NaN, non-string key, ...)."""


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def canonical_json(value: Any) -> bytes:
    """Encode `value` canonically. Raises CanonicalError for unencodable values."""
    try:
        check_value(value)
    except JSONValueError as e:
        raise CanonicalError(str(e)) from None
    return _dumps(value)


def parse_canonical(data: bytes) -> Any:
    """Parse bytes that must be canonical JSON; re-encoding must give the same bytes."""
    try:
        value = loads_strict(data)
    except JSONValueError as e:
        raise CanonicalError(str(e)) from None
    # loads_strict checked the value against the same rules canonical_json does.
    if _dumps(value) != data:
        raise CanonicalError("not in canonical form")
    return value
