"""Ref containers: one interface, in memory and on disk.

A ref changes only by compare-and-swap (invariant 3): the caller says what
it believes the ref holds; under the ref's lock file the current value is
read and compared, and the new value is written only if they agree.
Every change is appended to the ref's reflog while the lock is held, so the
log and the ref never disagree on order. Deleting a ref deletes its reflog,
as git does.
"""

from __future__ import annotations

import json
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from mfgit.errors import RefConflict
from mfgit.objects.model import is_object_id
from mfgit.objects.timestamp import utc_now
from mfgit.refs.names import SYMREF, check_ref_name
from mfgit.store.fileio import LockedFile

ANY = object()  # expected value that matches anything (forced updates)


@dataclass(frozen=True)
class ReflogEntry:
    old: str | None
    new: str | None
    who: str
    time: str
    message: str

    def to_dict(self) -> dict:
        return {"old": self.old, "new": self.new, "who": self.who, "time": self.time, "message": self.message}


def _check_name(name: str) -> None:
    if name != "HEAD":
        check_ref_name(name)


class RefStore(ABC):
    """Names (``HEAD``, ``refs/heads/x``, ``refs/tags/t``, ``refs/remotes/r/x``) → values."""

    @abstractmethod
    def read(self, name: str) -> str | None:
        """Raw value: a commit id, ``ref: <target>`` for a symbolic ref, or None."""

    @abstractmethod
    def _swap(self, name: str, new: str | None, expected, entry: ReflogEntry | None) -> None: ...

    @abstractmethod
    def names(self, prefix: str = "refs/") -> list[str]: ...

    @abstractmethod
    def reflog(self, name: str) -> list[ReflogEntry]: ...

    def update(self, name: str, new: str | None, expected=ANY, *, who: str = "", message: str = "") -> None:
        """Set `name` to `new` (None deletes) if it currently holds `expected`.

        Raises RefConflict with the actual and expected values otherwise.
        """
        _check_name(name)
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
        """Follow symbolic refs to a commit id (None if unborn or absent)."""
        for _ in range(5):
            value = self.read(name)
            if value is None:
                return None
            if not value.startswith(SYMREF):
                return value
            name = value[len(SYMREF):]
        return None

    def stale_locks(self) -> list[Path]:
        """Lock files left by killed writers (never broken automatically; fsck reports them)."""
        return []

    def items(self, prefix: str = "refs/") -> dict[str, str]:
        out = {}
        for n in self.names(prefix):
            v = self.read(n)
            if v is not None and not v.startswith(SYMREF):
                out[n] = v
        return out


def _check_expected(name: str, current: str | None, expected) -> None:
    if expected is ANY:
        return
    if current != expected:
        raise RefConflict(name, current, expected)


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
            _check_expected(name, current, expected)
            if new is None:
                # git's rule: a deleted ref takes its reflog with it, so a
                # later ref of the same name does not inherit stale entries.
                self._refs.pop(name, None)
                self._logs.pop(name, None)
                return
            self._refs[name] = new
            if entry is not None:
                e = ReflogEntry(current if current and not current.startswith(SYMREF) else None,
                                new, entry.who, entry.time, entry.message)
                self._logs.setdefault(name, []).append(e)

    def names(self, prefix: str = "refs/") -> list[str]:
        return sorted(n for n in self._refs if n.startswith(prefix))

    def reflog(self, name: str) -> list[ReflogEntry]:
        return list(self._logs.get(name, []))


class DiskRefs(RefStore):
    """Refs as files under a repository directory, git's layout.

    ``<dir>/HEAD``, ``<dir>/refs/heads/<name>``, reflogs in ``<dir>/logs/<name>``
    as JSON lines. Updates take ``<ref>.lock`` with O_EXCL, compare, write the
    new value to the lock, fsync, append to the reflog, and rename the lock
    over the ref.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str) -> str | None:
        try:
            value = self._path(name).read_text(encoding="utf-8").strip()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return value or None

    def _swap(self, name, new, expected, entry) -> None:
        path = self._path(name)
        with LockedFile(path) as lock:
            current = self.read(name)
            _check_expected(name, current, expected)
            if new is None:
                # git's rule: a deleted ref takes its reflog with it, so a
                # later ref of the same name does not inherit stale entries
                # (whose objects gc may since have removed).
                self._remove_log(name)
                lock.delete_target()
                self._prune_empty_dirs(path.parent)
                return
            if entry is not None:
                old = current if current and not current.startswith(SYMREF) else None
                self._append_log(name, ReflogEntry(old, new, entry.who, entry.time, entry.message))
            lock.commit((new + "\n").encode("utf-8"))

    def _append_log(self, name: str, entry: ReflogEntry) -> None:
        log = self.root / "logs" / name
        log.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(entry.to_dict(), sort_keys=True, separators=(",", ":")) + "\n").encode()
        # Appends of one short line with O_APPEND are atomic; the ref lock
        # serialises writers of one log anyway. A torn last line (crash) is
        # skipped by reflog().
        fd = os.open(log, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # end a line torn by a crash, or this entry would be lost with it
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _remove_log(self, name: str) -> None:
        log = self.root / "logs" / name
        try:
            os.unlink(log)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return
        self._prune_empty_dirs(log.parent, self.root / "logs")

    def _prune_empty_dirs(self, d: Path, top: Path | None = None) -> None:
        refs_root = top or self.root / "refs"
        while d != refs_root and refs_root in d.parents:
            try:
                d.rmdir()
            except OSError:
                return
            d = d.parent

    def names(self, prefix: str = "refs/") -> list[str]:
        base = self.root / "refs"
        out = []
        if not base.exists():
            return out
        for dirpath, _dirs, files in os.walk(base):
            for f in files:
                if f.endswith(".lock") or f.startswith(".tmp-"):
                    continue
                full = Path(dirpath, f).relative_to(self.root).as_posix()
                if full.startswith(prefix):
                    out.append(full)
        return sorted(out)

    def reflog(self, name: str) -> list[ReflogEntry]:
        log = self.root / "logs" / name
        try:
            lines = log.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                d = json.loads(line)
                out.append(ReflogEntry(d["old"], d["new"], d["who"], d["time"], d["message"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn final line after a crash
        return out

    def stale_locks(self) -> list[Path]:
        out = []
        for dirpath, _dirs, files in os.walk(self.root / "refs"):
            out += [Path(dirpath, f) for f in files if f.endswith(".lock")]
        if (self.root / "HEAD.lock").exists():
            out.append(self.root / "HEAD.lock")
        return out
