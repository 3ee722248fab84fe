"""The object store interface: bytes by id, immutable once written, verified on every read.

Two implementations pass the same contract tests (tests/test_store.py): a
folder of files (mfgit.store.disk) and memory (mfgit.store.memory). Code
outside this package uses only this interface and never asks which one it
has. The stored bytes of an object are a frame (mfgit.store.frame).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator

from mfgit.errors import CorruptObject, MalformedObject
from mfgit.objects.model import TensorHeader, is_object_id, object_id
from mfgit.store.frame import current_frame, decode_stored, encode_stored, encode_stored_tensor, tensor_payload_parts


class ObjectStore(ABC):
    """Content-addressed object storage. Objects are immutable once written."""

    @abstractmethod
    def has(self, oid: str) -> bool: ...

    @abstractmethod
    def read_stored(self, oid: str) -> bytes:
        """The stored file bytes, unchecked (for transfer; receivers verify)."""

    @abstractmethod
    def _write_stored(self, oid: str, data: bytes | list) -> bool:
        """Place stored bytes (or a list of chunks) under `oid`, which freshen() found absent.

        True if written; False when a write of the same id is already under
        way in this store (the same tensor twice in one batch).
        """

    @abstractmethod
    def iter_ids(self) -> Iterator[str]:
        """Every stored object id, sorted."""

    @abstractmethod
    def delete(self, oid: str) -> None:
        """Remove an object (gc and repair only; absent is not an error)."""

    @abstractmethod
    def mtime(self, oid: str) -> float:
        """When the object was last written or freshened (seconds since the epoch)."""

    def ids_with_prefix(self, prefix: str) -> Iterator[str]:
        """The stored ids that start with `prefix` (abbreviated ids), sorted."""
        return (oid for oid in self.iter_ids() if oid.startswith(prefix))

    def stored_size(self, oid: str) -> int:
        return len(self.read_stored(oid))

    # -- batches: writes made durable together ---------------------------

    def begin_batch(self) -> None:
        """Start a group of writes made durable together by end_batch()."""
        self._start_writing()

    def end_batch(self) -> None:
        """Make every write since begin_batch() durable and visible."""

    def abort_batch(self) -> None:
        """Drop the writes since begin_batch() that are not visible yet."""

    @contextlib.contextmanager
    def batch(self) -> Iterator["ObjectStore"]:
        """``with store.batch():`` — end_batch() on success, abort_batch() on any error."""
        self.begin_batch()
        try:
            yield self
        except BaseException:
            self.abort_batch()
            raise
        self.end_batch()

    # -- writers and gc -------------------------------------------------------

    def freshen(self, oid: str) -> bool:
        """Mark an existing object as just used (git's rule): True if it exists, False if it must be written.

        A writer that reuses an object instead of writing it freshens it, so
        that gc, which deletes only unreachable objects older than its grace
        period, cannot delete what a new ref is about to reach. Like every
        mutating call it makes this store a writer until close().
        """
        self._start_writing()
        return self.has(oid)

    @contextlib.contextmanager
    def exclusive(self, timeout: float = 10.0) -> Iterator["ObjectStore"]:
        """Hold off every writer of this store for the duration (what gc deletes under).

        Raises RepositoryBusy when a writer still holds the store after
        `timeout` seconds.
        """
        yield self

    def close(self) -> None:
        """Release what the store holds (its writer lock); it can be used again afterwards."""

    def _start_writing(self) -> None:
        """Called before every mutation: a store that gc must wait for takes its writer lock here."""

    def hold_writer_lock(self) -> None:
        """Take the writer lock now, for a write beside the store that gc also sweeps (a private
        attachment's kept copy): held, like any writer's, until close()."""
        self._start_writing()

    # -- leftovers of interrupted writes ---------------------------------

    def temp_files(self) -> list[Path]:
        """Temporary files that interrupted writes left behind (never referenced; safe to delete)."""
        return []

    def remove_temp_files(self, older_than: float) -> int:
        """Delete temporary files not modified for `older_than` seconds; return how many."""
        return 0

    # -- typed helpers ---------------------------------------------------

    def get(self, oid: str, *, verify: bool = False, out: bytearray | None = None) -> tuple[str, bytes]:
        return decode_stored(oid, self.read_stored(oid), verify=verify, out=out)

    def put(self, kind: str, payload: bytes, *, oid: str | None = None) -> str:
        oid = oid or object_id(kind, payload)
        # An object that is already stored is reused, and freshened so that
        # gc keeps it (the check runs under the writer lock: see freshen).
        if not self.freshen(oid):
            self._write_stored(oid, encode_stored(kind, payload, oid=oid))
        return oid

    def put_tensor(self, header: TensorHeader, raw: bytes | memoryview, oid: str, *,
                   head: bytes | None = None) -> bool:
        """Store a tensor whose id the caller computed; True if newly written.

        `head` is the tensor's payload header (tensor_payload_parts(header))
        when the caller has it already: the tensors of an adapter share a
        few shapes, and encoding each header once per shape saves a JSON
        encoding per tensor.
        """
        if self.freshen(oid):
            return False
        # The chunks are written (copied) before put_tensor returns, so this
        # thread's scratch buffer can be reused for the next tensor.
        chunks = encode_stored_tensor(head or tensor_payload_parts(header), raw, header.dtype, oid=oid, reuse=True)
        return self._write_stored(oid, chunks)

    def put_received(self, oid: str, data: bytes) -> bool:
        """Store bytes that came from elsewhere, after the full SHA-256 check.

        They are stored in the current store version (a version-1 file from
        an older remote is re-keyed: same payload, a header whose digest
        names the id).
        """
        if not is_object_id(oid):
            raise MalformedObject(oid, "not an object id")
        decode_stored(oid, data, verify=True)
        data = current_frame(oid, data)
        if self.freshen(oid):
            try:
                decode_stored(oid, self.read_stored(oid), verify=True)
                return False
            except (CorruptObject, MalformedObject):
                # Repair: the local copy is damaged and these verified bytes
                # are the object. Replacing it is the one exception to
                # write-once, and it is atomic like any write.
                self._replace_stored(oid, data)
                return True
        return self._write_stored(oid, data)

    def _replace_stored(self, oid: str, data: bytes) -> None:
        """Put verified bytes in place of a damaged copy (readers see one or the other)."""
        self.delete(oid)
        self._write_stored(oid, data)
