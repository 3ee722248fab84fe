"""Strategy parameters: what one is (name, default, allowed range, help) and how given values are checked."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from mfgit.errors import MergeError

__all__ = ["ANY", "FLAG", "Range", "Param", "Check", "validate"]


@dataclass(frozen=True)
class Range:
    """An interval of allowed values; a bound of None is unbounded."""

    lo: float | None
    hi: float | None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, x: float) -> bool:
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        if self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi):
            return False
        return True

    def text(self) -> str:
        if self.lo is None and self.hi is None:
            return "any finite number"
        left = "(" if self.lo_open or self.lo is None else "["
        right = ")" if self.hi_open or self.hi is None else "]"
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{left}{lo}, {hi}{right}"


ANY = Range(None, None)
FLAG = Range(0.0, 1.0)  # with ``Param.flag``: 0 (false) or 1 (true)


class ResolvedParams(dict):
    """Parameters `validate` has checked and completed for `strategy`: the engine does not check them again."""

    def __init__(self, strategy: str, values: Mapping) -> None:
        super().__init__(values)
        self.strategy = strategy


@dataclass(frozen=True)
class Param:
    """One parameter of a strategy."""

    name: str
    default: float
    range: Range
    help: str
    # Another name under which the value is given as 1 − this parameter: mergekit and PEFT call
    # DARE's and DELLA's keep fraction `density`, where the papers (and mfgit) use the drop rate.
    complement: str | None = None
    # A switch: given as true/false or 1/0, recorded as 1.0/0.0 (the range is FLAG).
    flag: bool = False
    # A count (an iteration limit): a whole number in the range.
    integer: bool = False

    def complement_range(self) -> Range:
        r = self.range
        return Range(None if r.hi is None else 1.0 - r.hi, None if r.lo is None else 1.0 - r.lo,
                     lo_open=r.hi_open, hi_open=r.lo_open)


# A check of the resolved values together, for constraints no single range can say; raises MergeError.
Check = Callable[[Mapping[str, float]], None]

# Alternative spellings -> parameter name: ``lambda`` is a Python keyword.
_ALIASES = {"lambda_": "lambda"}


def _number(value: object) -> float | None:
    """``value`` as a float, or None where it is not a number (a bool is not one, though float() takes it)."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def validate(strategy: str, declared: Sequence[Param], given: Mapping | None, check: Check | None = None) -> dict:
    """The values of ``declared`` from ``given``, defaults filled in, as floats.

    The given names come first, in their order, then the defaults. Raises
    MergeError for an unknown name, a name given twice (under an alias), a
    value that is not a finite number, one outside its range (the message
    names the parameter and the range), or one that ``check`` refuses.
    """
    table = {p.name: p for p in declared}
    complements = {p.complement: p for p in declared if p.complement}
    out: dict[str, float] = {}
    spelled: dict[str, str] = {}
    for raw_name, value in (given or {}).items():
        name = _ALIASES.get(raw_name, raw_name)
        flip = name in complements and name not in table
        if flip:
            name = complements[name].name
        if name not in table:
            allowed = ", ".join(list(table) + list(complements)) or "none"
            raise MergeError(f"strategy {strategy!r} has no parameter {raw_name!r} (its parameters: {allowed})")
        if name in out:
            raise MergeError(f"parameter {name!r} given twice (as {spelled[name]!r} and {raw_name!r})")
        param = table[name]
        rng = param.complement_range() if flip else param.range
        x = float(value) if param.flag and isinstance(value, bool) else _number(value)
        if param.flag and x not in (0.0, 1.0):
            raise MergeError(f"{strategy} parameter {raw_name} must be true or false (1 or 0), got {value!r}")
        if x is None:
            raise MergeError(f"{strategy} parameter {raw_name} must be a number in {rng.text()}, got {value!r}")
        if not math.isfinite(x) or not rng.contains(x):
            raise MergeError(f"{strategy} parameter {raw_name} must be in {rng.text()}, got {value!r}")
        if param.integer and x != math.floor(x):
            raise MergeError(f"{strategy} parameter {raw_name} must be a whole number, got {value!r}")
        # 15 significant digits: density 0.7 gives drop rate 0.3, not 0.30000000000000004.
        out[name] = float(f"{1.0 - x:.15g}") if flip else x
        spelled[name] = raw_name
    for p in declared:
        out.setdefault(p.name, float(p.default))
    if check is not None:
        check(out)
    return out
