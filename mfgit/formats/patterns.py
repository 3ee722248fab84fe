"""rank_pattern / alpha_pattern keys matched exactly as PEFT matches them, in linear time.

PEFT (``peft.utils.other.get_pattern_key``) gives a module the first key
``k`` of the config's ``rank_pattern`` (``alpha_pattern``) for which
``re.match(rf"(.*\\.)?({k})$", module)`` succeeds, and falls back to the
module's own name when none does. Python's ``re`` backtracks: a key such as
``(a+)+b`` takes time exponential in the module name's length, and a config
is input from another participant. So mfgit never runs a key with ``re``.

Instead the *whole* expression PEFT compiles is parsed by Python's own
regular-expression parser — so every construct means what it means to PEFT
— and each node is written out in RE2 syntax (literals as ``\\x{…}``, sets as
explicit code-point ranges, ``\\d \\w \\s`` as the exact sets Python's
Unicode rules give), then matched by RE2 (``google-re2``), whose time is
linear in the name's length. A key is refused (`PatternError`) when Python
cannot compile it, when it uses a construct RE2 has no linear-time
equivalent for (back-references, look-around, conditionals, atomic groups,
possessive repeats), a flag whose rules differ between the engines
(``IGNORECASE``; ``\\b`` outside ASCII mode), or when RE2 cannot compile the
translation (e.g. a repeat count over 1000).

Names matched must not contain a newline: Python's ``$`` also matches before
a final newline, which RE2 cannot express. Tensor and module names never
contain control characters (`mfgit.objects.schema`), so this never limits a
stored adapter.
"""

from __future__ import annotations

import functools
import re
import warnings
from typing import Any, Callable, Iterable

try:  # Python 3.11+
    from re import _constants as _C
    from re import _parser as _P
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _C  # type: ignore[no-redef]
    import sre_parse as _P  # type: ignore[no-redef]

import re2

PEFT_RULE = r"(.*\.)?({key})$"
MAX_KEY_LENGTH = 1000
_MAXCODE = 0x10FFFF


class PatternError(ValueError):
    """A rank_pattern / alpha_pattern key that mfgit cannot match exactly and in linear time."""

    def __init__(self, key: str, reason: str):
        super().__init__(reason)
        self.key = key
        self.reason = reason


# -- the character sets of Python's categories ------------------------------------------------


def _ranges(pred: Callable[[str], bool]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    start = None
    for c in range(_MAXCODE + 2):
        inside = c <= _MAXCODE and not 0xD800 <= c <= 0xDFFF and pred(chr(c))
        if inside and start is None:
            start = c
        elif not inside and start is not None:
            out.append((start, c - 1))
            start = None
    return tuple(out)


_ASCII_SPACE = frozenset(" \t\n\r\f\v")


@functools.lru_cache(maxsize=None)
def _category(cat: Any, ascii_only: bool) -> tuple[tuple[int, int], ...]:
    # The predicates _sre uses (Modules/_sre/sre.c): str.isdecimal for \d,
    # str.isspace for \s, str.isalnum or "_" for \w in Unicode mode; their
    # ASCII counterparts with re.ASCII. Computed, not transcribed, so they
    # follow the running Python's Unicode tables — the ones PEFT's re uses.
    base = {
        "DIGIT": (lambda ch: "0" <= ch <= "9") if ascii_only else str.isdecimal,
        "SPACE": (lambda ch: ch in _ASCII_SPACE) if ascii_only else str.isspace,
        "WORD": (lambda ch: ch.isascii() and (ch.isalnum() or ch == "_")) if ascii_only
                else (lambda ch: ch.isalnum() or ch == "_"),
    }
    name = str(cat).replace("CATEGORY_", "")
    negate = name.startswith("NOT_")
    pred = base[name[4:] if negate else name]
    return _ranges((lambda ch: not pred(ch)) if negate else pred)


# -- translation --------------------------------------------------------------------------------


def _hex(c: int) -> str:
    return f"\\x{{{c:X}}}"


def _class(ranges: Iterable[tuple[int, int]], negate: bool) -> str:
    parts = []
    for lo, hi in ranges:
        # Names are valid Unicode: surrogate code points never occur in them.
        pieces = [(lo, min(hi, 0xD7FF)), (max(lo, 0xE000), hi)] if lo <= 0xDFFF and hi >= 0xD800 else [(lo, hi)]
        for a, b in pieces:
            if a <= b:
                parts.append(_hex(a) if a == b else f"{_hex(a)}-{_hex(b)}")
    if not parts:
        return "[\\x{0}-\\x{10FFFF}]" if negate else "[^\\x{0}-\\x{10FFFF}]"
    return ("[^" if negate else "[") + "".join(parts) + "]"


class _Translator:
    def __init__(self, key: str):
        self.key = key

    def refuse(self, reason: str) -> PatternError:
        return PatternError(self.key, reason)

    def seq(self, items: Any, flags: int) -> str:
        return "".join(self.node(op, arg, flags) for op, arg in items)

    def node(self, op: Any, arg: Any, flags: int) -> str:
        if flags & _C.SRE_FLAG_IGNORECASE:
            raise self.refuse("case-insensitive matching ((?i)) follows different rules in RE2")
        ascii_only = bool(flags & _C.SRE_FLAG_ASCII)
        if op is _C.LITERAL:
            return _hex(arg) if not 0xD800 <= arg <= 0xDFFF else "[^\\x{0}-\\x{10FFFF}]"
        if op is _C.NOT_LITERAL:
            return _class([(arg, arg)], True)
        if op is _C.ANY:
            return "[\\x{0}-\\x{10FFFF}]" if flags & _C.SRE_FLAG_DOTALL else "[^\\n]"
        if op is _C.IN:
            return self.charset(arg, ascii_only)
        if op is _C.BRANCH:
            return "(?:" + "|".join(self.seq(alt, flags) for alt in arg[1]) + ")"
        if op is _C.SUBPATTERN:
            _group, add, remove, sub = arg
            return "(?:" + self.seq(sub, (flags | add) & ~remove) + ")"
        if op in (_C.MAX_REPEAT, _C.MIN_REPEAT):
            lo, hi, sub = arg
            bound = f"{{{lo},}}" if hi == _C.MAXREPEAT else f"{{{lo},{hi}}}"
            return "(?:" + self.seq(sub, flags) + ")" + bound
        if op is _C.AT:
            return self.anchor(arg, flags)
        raise self.refuse(f"{str(op).lower()} has no linear-time equivalent (RE2 does not backtrack)")

    def charset(self, items: Any, ascii_only: bool) -> str:
        negate = False
        ranges: list[tuple[int, int]] = []
        for op, arg in items:
            if op is _C.NEGATE:
                negate = True
            elif op is _C.LITERAL:
                ranges.append((arg, arg))
            elif op is _C.RANGE:
                ranges.append(arg)
            elif op is _C.CATEGORY:
                ranges.extend(_category(arg, ascii_only))
            else:
                raise self.refuse(f"{str(op).lower()} in a character set is not supported")
        return _class(sorted(ranges), negate)

    def anchor(self, at: Any, flags: int) -> str:
        multiline = flags & _C.SRE_FLAG_MULTILINE
        if at is _C.AT_BEGINNING_STRING or (at is _C.AT_BEGINNING and not multiline):
            return "\\A"
        if at is _C.AT_BEGINNING:
            return "(?m:^)"
        # Python's $ also matches before a final newline; names never end in one.
        if at is _C.AT_END_STRING or (at is _C.AT_END and not multiline):
            return "\\z"
        if at is _C.AT_END:
            return "(?m:$)"
        if at in (_C.AT_BOUNDARY, _C.AT_NON_BOUNDARY):
            if not flags & _C.SRE_FLAG_ASCII:
                raise self.refuse("\\b and \\B treat non-ASCII letters differently in RE2; use (?a:\\b)")
            return "\\b" if at is _C.AT_BOUNDARY else "\\B"
        raise self.refuse(f"the anchor {str(at).lower()} is not supported")


def _options() -> Any:
    opts = re2.Options()
    opts.log_errors = False  # RE2 would print its own line on stderr
    return opts


@functools.lru_cache(maxsize=4096)
def compile_key(key: str) -> Any:
    """The RE2 program for `key` under PEFT's rule; PatternError if it cannot be matched exactly."""
    if not isinstance(key, str):
        raise PatternError(str(key), "a pattern key must be a string")
    if len(key) > MAX_KEY_LENGTH:
        raise PatternError(key, f"a pattern key longer than {MAX_KEY_LENGTH} characters is not accepted")
    expr = PEFT_RULE.format(key=key)
    with warnings.catch_warnings():
        # FutureWarning "possible nested set" and the like: syntax whose
        # meaning is about to change is not a key to rely on.
        warnings.simplefilter("error")
        try:
            re.compile(expr)
            parsed = _P.parse(expr, 0)
        except (re.error, Warning, RecursionError, OverflowError, ValueError) as e:
            # re.error's .msg leaves out the position, which counts from PEFT's wrapper, not the key
            raise PatternError(key, f"not a valid Python regular expression ({getattr(e, 'msg', None) or e})") from None
    t = _Translator(key)
    text = "\\A(?:" + t.seq(parsed.data, parsed.state.flags) + ")"
    try:
        return re2.compile(text, options=_options())
    except Exception as e:  # noqa: BLE001 - re2 raises its own error type (and MemoryError-like ones)
        msg = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise PatternError(key, f"RE2, the linear-time engine, cannot compile it ({msg})") from None


def check_key(key: str) -> None:
    """Raise PatternError unless `key` can be matched exactly and in linear time."""
    compile_key(key)


def key_matches(key: str, name: str) -> bool:
    """Whether ``re.match(rf"(.*\\.)?({key})$", name)`` would succeed — computed by RE2."""
    if "\n" in name or not name.isprintable() and any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise PatternError(key, f"cannot match the name {name[:80]!r}: it holds a newline or a lone surrogate")
    return compile_key(key).search(name) is not None


def first_match(keys: Iterable[str], name: str) -> str | None:
    """The first key that matches `name` under PEFT's rule, or None."""
    for key in keys:
        if key_matches(key, name):
            return key
    return None
