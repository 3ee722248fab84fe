"""The in-memory object store: the same contract as the folder store, for tests and scratch work.

It behaves as the folder store does where the contract says anything: writes
inside a batch become visible only at end_batch() and are dropped by
abort_batch(), and every object has the time it was written or last
freshened. There is no writer lock: the store lives in one process, whose
threads share it, so exclusive() has nothing to hold off.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

from mfgit.errors import ObjectNotFound
from mfgit.store.objectstore import ObjectStore


class MemoryStore(ObjectStore):
    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._mtimes: dict[str, float] = {}
        self._batch: dict[str, bytes] | None = None
        self._lock = threading.Lock()

    def has(self, oid: str) -> bool:
        return oid in self._objects

    def read_stored(self, oid: str) -> bytes:
        try:
            return self._objects[oid]
        except KeyError:
            raise ObjectNotFound(oid) from None

    def _write_stored(self, oid: str, data: bytes | list) -> bool:
        if isinstance(data, list):
            data = b"".join(bytes(c) for c in data)
        with self._lock:
            if oid in self._objects or (self._batch is not None and oid in self._batch):
                return False
            if self._batch is not None:
                self._batch[oid] = bytes(data)
            else:
                self._objects[oid] = bytes(data)
                self._mtimes[oid] = time.time()
            return True

    def freshen(self, oid: str) -> bool:
        with self._lock:
            if oid in self._objects:
                self._mtimes[oid] = time.time()
                return True
            return self._batch is not None and oid in self._batch

    def begin_batch(self) -> None:
        with self._lock:
            self._batch = {}

    def end_batch(self) -> None:
        with self._lock:
            batch, self._batch = self._batch or {}, None
            now = time.time()
            for oid, data in batch.items():
                self._objects.setdefault(oid, data)
                self._mtimes.setdefault(oid, now)

    def abort_batch(self) -> None:
        with self._lock:
            self._batch = None

    def iter_ids(self) -> Iterator[str]:
        return iter(sorted(self._objects))

    def mtime(self, oid: str) -> float:
        try:
            return self._mtimes[oid]
        except KeyError:
            raise ObjectNotFound(oid) from None

    def delete(self, oid: str) -> None:
        with self._lock:
            self._objects.pop(oid, None)
            self._mtimes.pop(oid, None)

    def _replace_stored(self, oid: str, data: bytes) -> None:
        with self._lock:  # one step: readers see the old bytes or the new ones
            self._objects[oid] = bytes(data)
            self._mtimes[oid] = time.time()

    def corrupt(self, oid: str, offset: int) -> None:
        """Flip one byte (tests of invariant 2)."""
        b = bytearray(self._objects[oid])
        b[offset % len(b)] ^= 0xFF
        self._objects[oid] = bytes(b)
