"""Revision syntax: ids, short ids, names, HEAD, and ``~N`` / ``^N`` suffixes.

``REV~N`` is the N-th first-parent ancestor; ``REV^N`` the N-th parent
(``^`` alone is ``^1``, ``^0`` the commit itself). Names are tried as git
does: ``HEAD``, a full ref, ``refs/heads/``, ``refs/tags/``,
``refs/remotes/``, then a unique abbreviated id of at least 4 hex digits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mfgit.errors import UnknownRevision

_SUFFIX = re.compile(r"(~|\^)(\d*)")
_HEX = re.compile(r"^[0-9a-f]{4,64}$")


@dataclass(frozen=True)
class Step:
    op: str  # "~" or "^"
    n: int


def split_revision(rev: str) -> tuple[str, list[Step]]:
    """Split ``base~2^2`` into ("base", [Step("~",2), Step("^",2)])."""
    if not rev or rev != rev.strip():
        raise UnknownRevision(rev, "empty or padded with spaces")
    cut = len(rev)
    for i, ch in enumerate(rev):
        if ch in "~^":
            cut = i
            break
    base, rest = rev[:cut], rev[cut:]
    if not base:
        raise UnknownRevision(rev, "no name before ~ or ^")
    steps = []
    pos = 0
    while pos < len(rest):
        m = _SUFFIX.match(rest, pos)
        if not m:
            raise UnknownRevision(rev, f"cannot parse {rest[pos:]!r}")
        op, num = m.group(1), m.group(2)
        steps.append(Step(op, int(num) if num else 1))
        pos = m.end()
    return base, steps


def is_hex_prefix(s: str) -> bool:
    return bool(_HEX.match(s))
