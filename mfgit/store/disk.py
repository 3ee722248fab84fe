"""The folder object store: one file per object, ``objects/ab/cdef…``, written once, atomically."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Iterator

from mfgit.errors import ObjectNotFound
from mfgit.objects.model import is_object_id
from mfgit.store.fileio import fsync_dir, is_temp_name, sync_filesystem, write_new_file
from mfgit.store.objectstore import ObjectStore


class DiskStore(ObjectStore):
    """Objects as files ``objects/ab/cdef…`` under a directory.

    Writes go to a temporary name, are fsynced, then renamed into place
    (invariant 1). Inside a batch the fsyncs are replaced by one syncfs of
    the filesystem before any rename, which keeps the same guarantee (data
    durable before the name appears) at the cost of one journal commit.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._root_s = os.fspath(self.root)
        self._batch: list[tuple[Path, Path]] | None = None
        self._lock = threading.Lock()

    def _path(self, oid: str) -> Path:
        if not is_object_id(oid):
            raise ObjectNotFound(oid)
        return self.root / oid[:2] / oid[2:]

    def has(self, oid: str) -> bool:
        # A plain string path: has() runs once per tensor on every commit.
        # Absent is False; any other error (an unreadable folder) is raised.
        if not is_object_id(oid):
            return False
        try:
            os.stat(f"{self._root_s}/{oid[:2]}/{oid[2:]}")
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def _replace_stored(self, oid: str, data: bytes) -> None:
        # The verified bytes go to a temporary name, durable, then renamed
        # over the damaged file: at every instant the id names one or the
        # other, never nothing.
        path = self._path(oid)
        tmp = write_new_file(path, [data], sync=True)
        os.replace(tmp, path)
        fsync_dir(path.parent)

    def read_stored(self, oid: str) -> bytes:
        try:
            with open(self._path(oid), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectNotFound(oid) from None

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

    def _write_stored(self, oid: str, data: bytes | list) -> bool:
        path = self._path(oid)
        if path.exists():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            batching = self._batch is not None
        tmp = write_new_file(path, data if isinstance(data, list) else [data], sync=not batching)
        if batching:
            with self._lock:
                self._batch.append((tmp, path))
            return True
        os.replace(tmp, path)
        fsync_dir(path.parent)
        return True

    def begin_batch(self) -> None:
        with self._lock:
            self._batch = []

    def end_batch(self) -> None:
        with self._lock:
            batch, self._batch = self._batch or [], None
        if not batch:
            return
        # Data first: every temporary file is durable before any becomes
        # visible under its id, so a crash never exposes a partial object.
        sync_filesystem(self.root)
        for tmp, path in batch:
            os.replace(tmp, path)
        sync_filesystem(self.root)

    def abort_batch(self) -> None:
        with self._lock:
            batch, self._batch = self._batch or [], None
        for tmp, _ in batch:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def iter_ids(self) -> Iterator[str]:
        if not self.root.exists():
            return
        for sub in sorted(os.listdir(self.root)):
            d = self.root / sub
            if len(sub) != 2 or not d.is_dir():
                continue
            for name in sorted(os.listdir(d)):
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

    def iter_temp_files(self) -> Iterator[Path]:
        """Leftovers of interrupted writes (safe to delete; never referenced)."""
        if not self.root.exists():
            return
        for sub in os.listdir(self.root):
            d = self.root / sub
            if d.is_dir():
                for name in os.listdir(d):
                    if is_temp_name(name):
                        yield d / name

    def temp_files(self) -> list[Path]:
        return list(self.iter_temp_files())

    def remove_temp_files(self, older_than: float) -> int:
        now = time.time()
        removed = 0
        for p in self.temp_files():
            try:
                if now - p.stat().st_mtime > older_than:
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
