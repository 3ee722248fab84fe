"""The folder object store: one file per object, ``objects/ab/cdef…``, written once, atomically."""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from mfgit.errors import ObjectNotFound, RepositoryBusy
from mfgit.objects.model import is_object_id
from mfgit.store.fileio import (
    flock_holders,
    flock_within,
    fsync_dir,
    is_temp_name,
    open_for_flock,
    sync_filesystem,
    temp_name,
    write_new_file,
)
from mfgit.store.objectstore import ObjectStore

# An object reused less than this long after it was written or last
# freshened is not touched again: gc's grace period is measured in days,
# and skipping the utime keeps a re-commit of 200,000 tensors at one stat
# each. (gc runs with a shorter grace period rely on the writer lock.)
FRESHEN_AFTER = 3600.0
# How long a writer waits for a gc that holds the store exclusively.
WRITER_WAIT = 600.0
_BATCH_PREFIX = ".tmp-batch-"


class DiskStore(ObjectStore):
    """Objects as files ``objects/ab/cdef…`` under a directory.

    Writes go to a temporary name, are fsynced, then renamed into place
    (invariant 1). Inside a batch the files are written to one temporary
    directory, ``objects/.tmp-batch-*``, and the fsyncs are replaced by one
    syncfs of the filesystem before any rename, which keeps the same
    guarantee (data durable before the name appears) at the cost of one
    journal commit; a batch killed midway leaves that one directory.

    From its first mutating call until close(), the store holds a shared
    flock on the objects directory (the writer lock); ``exclusive()``, what
    gc deletes under, takes it exclusively, so gc never runs while a writer
    is between writing (or reusing) objects and moving its ref. The kernel
    drops a flock when its process dies, so a killed writer never blocks gc.

    `before_first_write` is called once, before the first object file is
    written (the repository upgrades its format version there).
    """

    def __init__(self, root: str | os.PathLike, *, before_first_write: Callable[[], None] | None = None):
        self.root = Path(root)
        self._root_s = os.fspath(self.root)
        self._batch: list[tuple[str, str]] | None = None
        self._batch_dir: str | None = None
        self._pending: set[str] = set()  # ids written in the open batch
        self._made_dirs: set[str] = set()
        self._lock = threading.Lock()
        self._writer_fd: int | None = None
        self._exclusive_depth = 0
        self._before_first_write = before_first_write
        self._serial = itertools.count()
        self.writer_wait = WRITER_WAIT

    def _path(self, oid: str) -> Path:
        if not is_object_id(oid):
            raise ObjectNotFound(oid)
        return self.root / oid[:2] / oid[2:]

    def _spath(self, oid: str) -> str:
        # A plain string path: built once per tensor on every commit.
        return f"{self._root_s}/{oid[:2]}/{oid[2:]}"

    def has(self, oid: str) -> bool:
        # Absent is False; any other error (an unreadable folder) is raised.
        if not is_object_id(oid):
            return False
        try:
            os.stat(self._spath(oid))
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    # -- the writer lock --------------------------------------------------------

    def _start_writing(self) -> None:
        if self._writer_fd is not None or self._exclusive_depth:
            return
        with self._lock:
            if self._writer_fd is not None or self._exclusive_depth:
                return
            self.root.mkdir(parents=True, exist_ok=True)
            fd = open_for_flock(self.root)
            if not flock_within(fd, exclusive=False, timeout=self.writer_wait):
                os.close(fd)
                raise RepositoryBusy(self._root_s, "mfgit gc is deleting objects in this repository",
                                     self.writer_wait, flock_holders(self.root))
            self._writer_fd = fd

    @contextlib.contextmanager
    def exclusive(self, timeout: float = 10.0) -> Iterator["DiskStore"]:
        if self._exclusive_depth:  # re-entrant: remove_temp_files under gc's own exclusive()
            self._exclusive_depth += 1
            try:
                yield self
            finally:
                self._exclusive_depth -= 1
            return
        # This store's own shared lock would conflict with the exclusive one
        # (flock locks belong to the open file, not the process): drop it;
        # the next mutation takes it again.
        self.close()
        self.root.mkdir(parents=True, exist_ok=True)
        fd = open_for_flock(self.root)
        try:
            if not flock_within(fd, exclusive=True, timeout=timeout):
                raise RepositoryBusy(self._root_s, "another mfgit process is writing to this repository",
                                     timeout, flock_holders(self.root))
            self._exclusive_depth = 1
            try:
                yield self
            finally:
                self._exclusive_depth = 0
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            fd, self._writer_fd = self._writer_fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- writing ------------------------------------------------------------------

    def freshen(self, oid: str) -> bool:
        self._start_writing()
        if not is_object_id(oid):
            return False
        if oid in self._pending:
            return True  # written in this batch: it appears at end_batch()
        path = self._spath(oid)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if time.time() - st.st_mtime < FRESHEN_AFTER:
            return True
        try:
            os.utime(path)
        except OSError:
            return False  # not ours to touch: writing it again renews it (git's rule)
        return True

    def _upgrade_once(self) -> None:
        hook = self._before_first_write
        if hook is not None:
            with self._lock:
                hook, self._before_first_write = self._before_first_write, None
            if hook is not None:
                try:
                    hook()
                except BaseException:
                    self._before_first_write = hook
                    raise

    def _object_dir(self, oid: str) -> str:
        d = f"{self._root_s}/{oid[:2]}"
        if d not in self._made_dirs:
            os.makedirs(d, exist_ok=True)
            self._made_dirs.add(d)
        return d

    def _write_stored(self, oid: str, data: bytes | list) -> bool:
        self._start_writing()
        self._upgrade_once()
        if not is_object_id(oid):
            raise ObjectNotFound(oid)
        chunks = data if isinstance(data, list) else [data]
        with self._lock:
            batch_dir = self._batch_dir if self._batch is not None else None
        if batch_dir is None:
            path = f"{self._object_dir(oid)}/{oid[2:]}"
            tmp = write_new_file(path, chunks, sync=True, tmp=temp_name(os.path.dirname(path), oid[2:]), private=False)
            os.replace(tmp, path)
            fsync_dir(os.path.dirname(path))
            return True
        # The batch's directory is its own: a counter makes the names unique.
        tmp = write_new_file(batch_dir, chunks, sync=False, tmp=f"{batch_dir}/.tmp-{oid}.{next(self._serial)}",
                             private=False)
        with self._lock:
            if oid in self._pending or self._batch is None:
                # The same tensor twice in one batch (written by two threads
                # at once), or the batch was aborted meanwhile.
                os.unlink(tmp)
                return False
            self._pending.add(oid)
            self._batch.append((tmp, oid))
        return True

    def _replace_stored(self, oid: str, data: bytes) -> None:
        # The verified bytes go to a temporary name, durable, then renamed
        # over the damaged file: at every instant the id names one or the
        # other, never nothing.
        self._start_writing()
        self._upgrade_once()
        path = self._path(oid)
        tmp = write_new_file(path, [data], sync=True)
        os.replace(tmp, path)
        fsync_dir(path.parent)

    def begin_batch(self) -> None:
        self._start_writing()
        self.root.mkdir(parents=True, exist_ok=True)
        d = f"{self._root_s}/{_BATCH_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        os.mkdir(d, 0o700)
        with self._lock:
            self._batch, self._batch_dir, self._pending = [], d, set()

    def end_batch(self) -> None:
        with self._lock:
            batch, self._batch = self._batch or [], None
            batch_dir, self._batch_dir = self._batch_dir, None
        try:
            if batch:
                # Data first: every temporary file is durable before any
                # becomes visible under its id, so a crash never exposes a
                # partial object.
                sync_filesystem(self.root)
                for tmp, oid in batch:
                    os.replace(tmp, f"{self._object_dir(oid)}/{oid[2:]}")
                sync_filesystem(self.root)
        finally:
            with self._lock:
                self._pending = set()
            if batch_dir is not None:
                shutil.rmtree(batch_dir, ignore_errors=True)

    def abort_batch(self) -> None:
        with self._lock:
            self._batch, self._pending = None, set()
            batch_dir, self._batch_dir = self._batch_dir, None
        if batch_dir is not None:
            shutil.rmtree(batch_dir, ignore_errors=True)

    # -- reading ------------------------------------------------------------------

    def read_stored(self, oid: str) -> bytes:
        # os-level calls on a string path: checkout and fsck read every
        # object once, and for small objects Python's file object and
        # pathlib cost more than the read.
        if not is_object_id(oid):
            raise ObjectNotFound(oid)
        try:
            fd = os.open(self._spath(oid), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(oid) from None
        try:
            size = os.fstat(fd).st_size
            # Asking for a byte more than fstat says costs nothing and tells
            # a file that grew meanwhile (read on to its end) from one read whole.
            parts, got, want = [], 0, size + 1
            while True:
                chunk = os.read(fd, want)
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
                if got == size and len(parts) == 1:
                    break
                want = max(size + 1 - got, 1 << 20)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            os.close(fd)

    def stored_size(self, oid: str) -> int:
        try:
            return self._path(oid).stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(oid) from None

    def mtime(self, oid: str) -> float:
        try:
            return self._path(oid).stat().st_mtime
        except FileNotFoundError:
            raise ObjectNotFound(oid) from None

    def iter_ids(self) -> Iterator[str]:
        try:
            subs = sorted(os.listdir(self._root_s))
        except FileNotFoundError:
            return
        for sub in subs:
            if len(sub) != 2:
                continue
            try:
                names = sorted(os.listdir(f"{self._root_s}/{sub}"))
            except (NotADirectoryError, FileNotFoundError):
                continue
            for name in names:
                if is_temp_name(name):
                    continue
                oid = sub + name
                if is_object_id(oid):
                    yield oid

    def ids_with_prefix(self, prefix: str) -> Iterator[str]:
        # One directory listing instead of the whole store.
        if len(prefix) < 2:
            yield from super().ids_with_prefix(prefix)
            return
        d = self.root / prefix[:2]
        if not d.is_dir():
            return
        for name in sorted(os.listdir(d)):
            oid = prefix[:2] + name
            if oid.startswith(prefix) and is_object_id(oid):
                yield oid

    # -- leftovers of interrupted writes -----------------------------------------

    def iter_temp_files(self) -> Iterator[Path]:
        """Leftovers of interrupted writes (safe to delete; never referenced).

        A batch's temporary directory counts as one leftover, whatever it holds.
        """
        if not self.root.exists():
            return
        for sub in os.listdir(self.root):
            d = self.root / sub
            if is_temp_name(sub):
                yield d
            elif d.is_dir():
                for name in os.listdir(d):
                    if is_temp_name(name):
                        yield d / name

    def temp_files(self) -> list[Path]:
        return list(self.iter_temp_files())

    def remove_temp_files(self, older_than: float) -> int:
        # Under the exclusive lock, so that no running writer's temporary
        # file (or batch directory) can be among them; the age rule is kept
        # for writers the lock cannot see (an older mfgit).
        now = time.time()
        removed = 0
        with self.exclusive():
            for p in self.temp_files():
                try:
                    if now - p.stat().st_mtime > older_than:
                        if p.is_dir() and not p.is_symlink():
                            shutil.rmtree(p)
                        else:
                            os.unlink(p)
                        removed += 1
                except OSError:
                    pass  # gone already (its writer renamed or removed it)
        return removed

    def delete(self, oid: str) -> None:
        try:
            os.unlink(self._path(oid))
        except FileNotFoundError:
            pass

    def corrupt(self, oid: str, offset: int) -> None:
        """Flip one byte of an object file (tests of invariant 2)."""
        p = self._path(oid)
        b = bytearray(p.read_bytes())
        b[offset % len(b)] ^= 0xFF
        os.chmod(p, 0o644)
        p.write_bytes(bytes(b))
