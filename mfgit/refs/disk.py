"""Refs as files under a repository folder, git's layout, read without trusting the files.

A ref file must hold an object id or ``ref: refs/…`` as UTF-8 text; no file
is read through a symbolic link, as a FIFO or device, or from a folder
outside the repository; anything else is a `BadRef` (a reflog line:
`BadReflog`) naming the ref and its file.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Callable, Iterator

from mfgit.errors import BadRef, BadReflog, InvalidRefName
from mfgit.refs.names import REFS, check_ref_name
from mfgit.refs.refstore import (
    ANY,
    RefStore,
    ReflogBadLine,
    ReflogEntry,
    ReflogItem,
    check_expected,
    check_name,
    decode_value,
    logged_old,
    parse_reflog_line,
)
from mfgit.store.fileio import LockedFile, atomic_write, naming_path

_MAX_REF_BYTES = 4096  # a ref file holds one line; more is damage, not a ref
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted as a ref must not block the reader


class _Unreadable(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _display(name: str) -> str:
    """A file name as text that can be printed (undecodable bytes shown escaped)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class DiskRefs(RefStore):
    """Refs as files under a repository directory, git's layout.

    ``<dir>/HEAD``, ``<dir>/refs/heads/<name>``, reflogs in ``<dir>/logs/<name>``
    as JSON lines. An update takes ``<ref>.lock`` with O_EXCL, compares,
    writes the new value to the lock and fsyncs it, appends to the reflog
    (fsynced), and renames the lock over the ref; if anything fails after
    the append, the reflog is truncated back, so it records only moves that
    happened.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._real_root: str | None = None

    def _path(self, name: str) -> Path:
        return self.root / name

    def _log_path(self, name: str) -> Path:
        return self.root / "logs" / name

    def location(self, name: str) -> str:
        return str(self._path(name.rstrip("/")))

    def reflog_location(self, name: str) -> str:
        return str(self._log_path(name))

    # -- reading files safely ------------------------------------------------------

    def _inside(self, path: Path) -> bool:
        """Whether `path`'s folder is inside the repository once symbolic links are followed."""
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
        parent = os.path.realpath(path.parent)
        return parent == self._real_root or parent.startswith(self._real_root.rstrip(os.sep) + os.sep)

    def _read_file(self, path: Path, limit: int | None) -> bytes | None:
        """The bytes of a ref or reflog file (at most `limit` + 1), None if there is none.

        Never through a symbolic link and never a FIFO or device: a planted
        link must not make mfgit read (and print) a file outside the repository.
        """
        if not self._inside(path):
            raise _Unreadable("its folder is a symbolic link that leads out of the repository")
        try:
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise _Unreadable("the file is a symbolic link") from None
            raise _Unreadable(f"cannot be read: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                return None  # the folder of longer names (refs/heads/a/b), not a ref
            if not stat.S_ISREG(st.st_mode):
                raise _Unreadable("not a regular file")
            chunks, size = [], 0
            while limit is None or size <= limit:
                try:
                    chunk = os.read(fd, 1 << 16)
                except OSError as e:  # EIO: damage to report, like any other
                    raise _Unreadable(f"cannot be read: {e.strerror}") from None
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _check_refs_dir(self) -> bool:
        """Whether refs/ exists; BadRef if something else stands in its place."""
        refs = self.root / REFS
        try:
            st = os.lstat(refs)
        except FileNotFoundError:
            return False  # a container nothing was written to yet
        if stat.S_ISLNK(st.st_mode):
            raise BadRef(REFS, "is a symbolic link; refs are never read through one", str(refs))
        if not stat.S_ISDIR(st.st_mode):
            raise BadRef(REFS, "is not a folder: every branch and tag is gone", str(refs))
        return True

    def _value(self, name: str) -> str | None:
        """The checked value of `name`'s file, None if it has none."""
        path = self._path(name)
        try:
            data = self._read_file(path, _MAX_REF_BYTES)
        except _Unreadable as e:
            raise BadRef(name, e.reason, str(path)) from None
        if data is None:
            if name.startswith(REFS):
                self._check_refs_dir()  # "no such branch" must not hide "all branches gone"
            return None
        if len(data) > _MAX_REF_BYTES:
            raise BadRef(name, f"the file is larger than {_MAX_REF_BYTES} bytes", str(path))
        return decode_value(name, data, str(path))

    def read(self, name: str) -> str | None:
        value = self._value(name)
        if value is None and name == "HEAD":
            raise BadRef("HEAD", "the file is missing", str(self._path(name)))
        return value

    # -- writing -----------------------------------------------------------------------

    def _swap(self, name, new, expected, entry) -> None:
        path = self._path(name)
        if not self._inside(path):
            raise BadRef(name, "its folder is a symbolic link that leads out of the repository", str(path))
        with LockedFile(path) as lock:
            if expected is ANY:
                # A forced update is also how a damaged ref is repaired: its old value is not needed.
                try:
                    current = self._value(name)
                except BadRef:
                    current = None
            else:
                current = self._value(name)
                check_expected(name, current, expected)
            if new is None:
                # git's rule: a deleted ref takes its reflog with it, so a
                # later ref of the same name does not inherit stale entries
                # (whose objects gc may since have removed).
                self._remove_log(name)
                lock.delete_target()
                self._prune_empty_dirs(path.parent)
                return
            # The order keeps ref and reflog in step (invariant 3): the new
            # value is durable in the lock before the reflog claims it, and
            # an entry whose rename then fails is cut off again.
            lock.write((new + "\n").encode("utf-8"))
            mark = None
            if entry is not None:
                mark = self._append_log(name, ReflogEntry(logged_old(current), new, entry.who, entry.time,
                                                          entry.message))
            try:
                lock.commit()
            except BaseException:
                if mark is not None:
                    self._truncate_log(name, mark)
                raise

    def _append_log(self, name: str, entry: ReflogEntry) -> int:
        """Append `entry` (fsynced); return the log's size before it, to cut it off again."""
        log = self._log_path(name)
        if not self._inside(log):
            raise BadReflog(name, str(log), 0, "its folder is a symbolic link that leads out of the repository")
        log.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(entry.to_dict(), sort_keys=True, separators=(",", ":")) + "\n").encode()
        try:
            fd = os.open(log, os.O_RDWR | os.O_CREAT | os.O_APPEND | _O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise BadReflog(name, str(log), 0, "the file is a symbolic link") from None
            raise
        try:
            with naming_path(log):
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    # A torn last line: a crash mid-append, so before the
                    # rename — it describes a move that never happened.
                    size = _last_line_end(fd, size)
                    os.ftruncate(fd, size)
                try:
                    # One short line with O_APPEND under the ref's lock; a
                    # short write (disk full) is cut off below, not left torn.
                    mv = memoryview(line)
                    while mv:
                        mv = mv[os.write(fd, mv):]
                    os.fsync(fd)
                except BaseException:
                    _truncate_quietly(fd, size)
                    raise
        finally:
            os.close(fd)
        return size

    def _truncate_log(self, name: str, size: int) -> None:
        try:
            fd = os.open(self._log_path(name), os.O_WRONLY | _O_NOFOLLOW)
        except OSError:
            return  # the error being raised is the one the user must see
        try:
            _truncate_quietly(fd, size)
        finally:
            os.close(fd)

    def _remove_log(self, name: str) -> None:
        log = self._log_path(name)
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

    # -- listing -----------------------------------------------------------------------

    def _walk(self) -> Iterator[tuple[str, str | None]]:
        """(name, None) for every ref file, (name, problem) for what is no ref."""
        base = self.root / "refs"
        try:
            if not self._check_refs_dir():
                if os.path.lexists(self.root / "HEAD"):  # a repository, so refs/ was there
                    yield REFS, "the folder is missing: every branch and tag is gone"
                return
        except BadRef as e:
            yield REFS, e.reason
            return
        for dirpath, dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for d in dirs:
                if os.path.islink(os.path.join(dirpath, d)):
                    yield f"{rel}/{_display(d)}/", "is a symbolic link; refs are never read through one"
            for f in files:
                if f.endswith(".lock") or f.startswith(".tmp-"):
                    continue
                full = f"{rel}/{f}"
                try:
                    check_ref_name(full)
                except InvalidRefName as e:
                    yield _display(full), f"not a valid ref name ({e.reason})"
                    continue
                yield full, None

    def names(self, prefix: str = REFS) -> list[str]:
        out = []
        for name, problem in self._walk():
            if problem is not None and name == REFS and os.path.lexists(self.root / REFS):
                raise BadRef(REFS, problem, str(self.root / REFS))
            if problem is None and name.startswith(prefix):
                out.append(name)
        return sorted(out)

    def damage(self) -> list[dict[str, str]]:
        return [{"ref": name, "error": problem} for name, problem in self._walk() if problem is not None]

    def stale_locks(self) -> list[Path]:
        out = []
        for dirpath, _dirs, files in os.walk(self.root / "refs"):
            out += [Path(dirpath, f) for f in files if f.endswith(".lock")]
        if (self.root / "HEAD.lock").exists():
            out.append(self.root / "HEAD.lock")
        return sorted(out)

    # -- reflogs -----------------------------------------------------------------------

    def _log_lines(self, name: str) -> tuple[list[bytes], bool] | str:
        """The complete lines of `name`'s reflog and whether a torn line followed; or why it is unusable."""
        try:
            data = self._read_file(self._log_path(name), None)
        except _Unreadable as e:
            return e.reason
        if data is None:
            return [], False
        lines = data.split(b"\n")
        torn = lines.pop() != b""  # a crash mid-append; the move it began never happened
        return lines, torn

    def reflog_scan(self, name: str) -> tuple[list[ReflogEntry], list[ReflogBadLine]]:
        got = self._log_lines(name)
        if isinstance(got, str):
            return [], [ReflogBadLine(0, got)]
        entries, bad = [], []
        for i, raw in enumerate(got[0], 1):
            item = parse_reflog_line(raw)
            if isinstance(item, str):
                bad.append(ReflogBadLine(i, item))
            else:
                entries.append(item)
        return entries, bad

    def expire_reflog(self, name: str, drop: Callable[[ReflogItem], bool]) -> tuple[int, int]:
        path, log = self._path(name), self._log_path(name)
        if not (self._inside(path) and self._inside(log)):
            raise BadReflog(name, str(log), 0, "its folder is a symbolic link that leads out of the repository")
        with LockedFile(path):  # the ref's lock: no entry is appended meanwhile
            got = self._log_lines(name)
            if isinstance(got, str):
                if not drop(ReflogBadLine(0, got)):
                    return 0, 0
                with naming_path(log):
                    os.unlink(log)  # the link itself, never what it points to
                return 1, 0
            lines, torn = got
            kept: list[bytes] = []
            for i, raw in enumerate(lines, 1):
                item = parse_reflog_line(raw)
                if not drop(item if not isinstance(item, str) else ReflogBadLine(i, item)):
                    kept.append(raw + b"\n")
            dropped = len(lines) - len(kept)
            if dropped or torn:
                if kept:
                    atomic_write(log, b"".join(kept), mode=0o644)
                else:
                    self._remove_log(name)
            return dropped, len(kept)

    def reflog_names(self) -> list[str]:
        base = self.root / "logs"
        out = []
        for dirpath, _dirs, files in os.walk(base):
            for f in files:
                if f.startswith(".tmp-"):
                    continue
                name = Path(dirpath, f).relative_to(base).as_posix()
                try:
                    check_name(name)
                except InvalidRefName:
                    continue
                out.append(name)
        return sorted(out)


def _last_line_end(fd: int, size: int) -> int:
    """The offset just past the last newline before `size` (0 if there is none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - 4096)
        chunk = os.pread(fd, pos - start, start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def _truncate_quietly(fd: int, size: int) -> None:
    # Cutting a file back needs no space; if even that fails, the error
    # already being raised is the one to report.
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError:
        pass
