"""Ref containers: the interface, the rules for values and reflog lines, and refs in memory.

A ref changes only by compare-and-swap (invariant 3): the caller says what
it believes the ref holds; under the ref's lock file the current value is
read and compared, and the new value is written only if they agree.
Every change is appended to the ref's reflog while the lock is held, so the
log and the ref never disagree on order. Deleting a ref deletes its reflog,
as git does.

A ref holds an object id or ``ref: refs/…``, symbolic refs must not loop,
and a reflog line is one JSON entry; anything else is a `BadRef` (a reflog
line: `BadReflog`) naming the ref. The refs on disk are mfgit.refs.disk.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

from mfgit.errors import BadRef, BadReflog, InvalidRefName, RefConflict
from mfgit.objects.model import is_object_id
from mfgit.objects.timestamp import utc_now
from mfgit.refs.names import REFS, SYMREF, check_ref_name

ANY = object()  # expected value that matches anything (forced updates)

MAX_SYMREF_DEPTH = 5


@dataclass(frozen=True)
class ReflogEntry:
    old: str | None
    new: str | None
    who: str
    time: str
    message: str

    def to_dict(self) -> dict:
        return {"old": self.old, "new": self.new, "who": self.who, "time": self.time, "message": self.message}


@dataclass(frozen=True)
class ReflogBadLine:
    """A complete line of a reflog file that is not an entry (line 0: the file itself is unusable)."""

    line: int
    reason: str


ReflogItem = Union[ReflogEntry, ReflogBadLine]


def check_name(name: str) -> None:
    if name != "HEAD":
        check_ref_name(name)


def check_value(name: str, value: str, path: str = "") -> str:
    """`value` if it is what a ref may hold (an object id, or ``ref: refs/…``); BadRef otherwise."""
    if not value:
        raise BadRef(name, "empty ref file", path)
    if value.startswith(SYMREF):
        target = value[len(SYMREF):]
        try:
            check_ref_name(target)
        except InvalidRefName as e:
            raise BadRef(name, f"is a symbolic ref to {target[:80]!r}, which is not a ref name ({e.reason})",
                         path) from None
        if not target.startswith(REFS):
            raise BadRef(name, f"is a symbolic ref to {target[:80]!r}, outside {REFS}", path)
        return value
    if not is_object_id(value):
        raise BadRef(name, f"invalid value {value[:80]!r}", path)
    return value


def decode_value(name: str, data: bytes, path: str = "") -> str:
    """The value held by the bytes of a ref file (its trailing newline removed)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRef(name, f"not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x})", path) from None
    return check_value(name, text.strip(), path)


def parse_reflog_line(raw: bytes) -> ReflogEntry | str:
    """The entry one line of a reflog holds, or why it holds none."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 text (byte {e.start} is 0x{raw[e.start]:02x})"
    try:
        d = json.loads(text)
    except (ValueError, RecursionError):
        return "not a JSON entry"
    if not isinstance(d, dict):
        return "not a JSON object"
    for key in ("old", "new"):
        if key not in d:  # null is a value (no old id); an absent key is damage
            return f"{key!r} is missing"
        v = d[key]
        if v is not None and not is_object_id(v):
            return f"{key!r} is not an object id"
    for key in ("who", "time", "message"):
        if not isinstance(d.get(key), str):
            return f"{key!r} is missing or not a string"
        try:
            d[key].encode("utf-8")
        except UnicodeEncodeError:  # a JSON escape of half a surrogate pair: unprintable
            return f"{key!r} is not valid Unicode"
    return ReflogEntry(d["old"], d["new"], d["who"], d["time"], d["message"])


class RefStore(ABC):
    """Names (``HEAD``, ``refs/heads/x``, ``refs/tags/t``, ``refs/remotes/r/x``) → values."""

    @abstractmethod
    def read(self, name: str) -> str | None:
        """Raw value: a commit id, ``ref: <target>`` for a symbolic ref, or None.

        Raises BadRef when the ref exists but does not hold such a value.
        """

    @abstractmethod
    def _swap(self, name: str, new: str | None, expected, entry: ReflogEntry | None) -> None: ...

    @abstractmethod
    def names(self, prefix: str = REFS) -> list[str]: ...

    @abstractmethod
    def reflog_scan(self, name: str) -> tuple[list[ReflogEntry], list[ReflogBadLine]]:
        """The entries of `name`'s reflog, oldest first, and its damaged lines."""

    @abstractmethod
    def expire_reflog(self, name: str, drop: Callable[[ReflogItem], bool]) -> tuple[int, int]:
        """Rewrite `name`'s reflog without the entries and damaged lines `drop` selects.

        Done under the ref's lock, so no entry is appended meanwhile. Returns
        (dropped, kept).
        """

    @abstractmethod
    def reflog_names(self) -> list[str]:
        """Every name that has a reflog (HEAD included), sorted."""

    def reflog(self, name: str) -> list[ReflogEntry]:
        """The entries of `name`'s reflog, oldest first; BadReflog if a line is damaged."""
        entries, bad = self.reflog_scan(name)
        if bad:
            raise BadReflog(name, self.reflog_location(name), bad[0].line, bad[0].reason)
        return entries

    def location(self, name: str) -> str:
        """Where `name` is kept, for messages ("" in memory)."""
        return ""

    def reflog_location(self, name: str) -> str:
        return ""

    def damage(self) -> list[dict[str, str]]:
        """Things in the ref storage that are no readable ref at all (a folder gone, a bad name)."""
        return []

    def update(self, name: str, new: str | None, expected=ANY, *, who: str = "", message: str = "") -> None:
        """Set `name` to `new` (None deletes) if it currently holds `expected`.

        Raises RefConflict with the actual and expected values otherwise,
        BadRef when `expected` is given and the ref is damaged. A forced
        update (expected ANY) also replaces a damaged value.
        """
        check_name(name)
        if new is not None and not (is_object_id(new) or new.startswith(SYMREF)):
            raise ValueError(f"bad ref value {new!r}")
        entry = None
        if not new or not new.startswith(SYMREF):
            entry = ReflogEntry(None, new, who, utc_now(), message)
        self._swap(name, new, expected, entry)

    def set_symbolic(self, name: str, target: str, *, who: str = "", message: str = "") -> None:
        check_ref_name(target)
        self.update(name, SYMREF + target, ANY, who=who, message=message)

    def symbolic_target(self, name: str) -> str | None:
        value = self.read(name)
        if value and value.startswith(SYMREF):
            return value[len(SYMREF):]
        return None

    def resolve(self, name: str) -> str | None:
        """Follow symbolic refs to an object id (None if unborn or absent).

        A loop of symbolic refs, or a chain deeper than MAX_SYMREF_DEPTH,
        is a BadRef naming the first ref: it never reads as "no commits yet".
        """
        chain = [name]
        for _ in range(MAX_SYMREF_DEPTH + 1):
            value = self.read(name)
            if value is None:
                return None
            if not value.startswith(SYMREF):
                return value
            name = value[len(SYMREF):]
            if name in chain:
                raise BadRef(chain[0], "symbolic refs form a loop: " + " -> ".join([*chain, name]),
                             self.location(chain[0]))
            chain.append(name)
        raise BadRef(chain[0], f"symbolic refs nest deeper than {MAX_SYMREF_DEPTH}", self.location(chain[0]))

    def stale_locks(self) -> list[Path]:
        """Lock files left by killed writers (never broken automatically; fsck reports them)."""
        return []

    def items(self, prefix: str = REFS) -> dict[str, str]:
        """Every ref under `prefix` holding an object id; damaged refs are left out (fsck reports them)."""
        out = {}
        for n in self.names(prefix):
            try:
                v = self.read(n)
            except BadRef:
                continue
            if v is not None and not v.startswith(SYMREF):
                out[n] = v
        return out


def check_expected(name: str, current: str | None, expected) -> None:
    if expected is ANY:
        return
    if current != expected:
        raise RefConflict(name, current, expected)


def logged_old(current: str | None) -> str | None:
    return current if current and not current.startswith(SYMREF) else None


class MemoryRefs(RefStore):
    def __init__(self) -> None:
        self._refs: dict[str, str] = {}
        self._logs: dict[str, list[ReflogEntry]] = {}
        self._lock = threading.Lock()

    def read(self, name: str) -> str | None:
        return self._refs.get(name)

    def _swap(self, name, new, expected, entry) -> None:
        with self._lock:
            current = self._refs.get(name)
            check_expected(name, current, expected)
            if new is None:
                # git's rule: a deleted ref takes its reflog with it, so a
                # later ref of the same name does not inherit stale entries.
                self._refs.pop(name, None)
                self._logs.pop(name, None)
                return
            self._refs[name] = new
            if entry is not None:
                e = ReflogEntry(logged_old(current), new, entry.who, entry.time, entry.message)
                self._logs.setdefault(name, []).append(e)

    def names(self, prefix: str = REFS) -> list[str]:
        return sorted(n for n in self._refs if n.startswith(prefix))

    def reflog_scan(self, name: str) -> tuple[list[ReflogEntry], list[ReflogBadLine]]:
        return list(self._logs.get(name, [])), []

    def expire_reflog(self, name: str, drop: Callable[[ReflogItem], bool]) -> tuple[int, int]:
        with self._lock:
            entries = self._logs.get(name, [])
            kept = [e for e in entries if not drop(e)]
            if kept:
                self._logs[name] = kept
            else:
                self._logs.pop(name, None)
            return len(entries) - len(kept), len(kept)

    def reflog_names(self) -> list[str]:
        return sorted(self._logs)
