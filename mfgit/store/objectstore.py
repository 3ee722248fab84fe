"""Object stores: bytes by id, verified on every read.

A stored object file is a fixed header followed by the stored payload:

    magic "MFGO" | version u8 | kind u8 | codec u8 | reserved u8
    | xxh3-128 (16 bytes) | stored length u64 | decoded length u64

The XXH3-128 covers every other byte of the file: the 8 header bytes before
it, the 16 after it, and the stored payload. A flipped bit in the kind, the
codec or a length is therefore caught like one in the payload.

The decoded payload is what the id hashes (see mfgit.objects.model). Every
read checks the XXH3-128 of the file (cheap, catches any flipped or
missing byte of the file); ``verify=True`` additionally decodes and checks
the full SHA-256 against the id, which ``fsck --read-data`` and every
object received from a remote go through (invariant 2).
"""

from __future__ import annotations

import os
import struct
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import xxhash

from mfgit.errors import CorruptObject, MalformedObject, ObjectNotFound
from mfgit.objects.model import KINDS, TensorHeader, is_object_id, object_id
from mfgit.store import codec
from mfgit.store.fileio import fsync_dir, is_temp_name, sync_filesystem, write_new_file

MAGIC = b"MFGO"
STORE_VERSION = 1
_HEADER = struct.Struct("<4sBBBB16sQQ")
HEADER_SIZE = _HEADER.size
_KIND_CODE = {k: i + 1 for i, k in enumerate(KINDS)}
_CODE_KIND = {v: k for k, v in _KIND_CODE.items()}


@dataclass(frozen=True)
class StoredObject:
    """An object as kept on disk: kind, codec and stored bytes (file body)."""

    kind: str
    data: bytes  # the whole file: header + stored payload


_DIGEST_AT = slice(8, 24)  # where the XXH3-128 sits in the header


def _digest(header: bytes | memoryview, body) -> bytes:
    """XXH3-128 of a file's header (without the digest field) and body."""
    h = xxhash.xxh3_128()
    h.update(header[: _DIGEST_AT.start])
    h.update(header[_DIGEST_AT.stop : HEADER_SIZE])
    h.update(body)
    return h.digest()


def _frame_chunks(kind: str, cdc: int, chunks: list, raw_len: int) -> list:
    """Header + chunks; the digest is computed over the chunks in place (no joined copy)."""
    n = sum(len(c) for c in chunks)
    header = bytearray(_HEADER.pack(MAGIC, STORE_VERSION, _KIND_CODE[kind], cdc, 0, bytes(16), n, raw_len))
    h = xxhash.xxh3_128()
    h.update(header[: _DIGEST_AT.start])
    h.update(header[_DIGEST_AT.stop : HEADER_SIZE])
    for c in chunks:
        h.update(c)
    header[_DIGEST_AT] = h.digest()
    return [bytes(header), *chunks]


def _frame(kind: str, cdc: int, stored: bytes | memoryview, raw_len: int) -> bytes:
    return b"".join(bytes(c) for c in _frame_chunks(kind, cdc, [stored], raw_len))


def encode_stored(kind: str, payload: bytes | memoryview) -> bytes:
    """Build the stored file bytes for a decoded payload."""
    cdc, stored = codec.encode_generic(payload)
    return _frame(kind, cdc, stored, len(payload))


def encode_stored_tensor(head: bytes, raw: bytes | memoryview, dtype: str, *, reuse: bool = False) -> list:
    """Stored bytes of a tensor, as chunks: its header plain, raw bytes by byte planes.

    With ``reuse`` the chunks may be views of this thread's scratch buffer
    (codec.PlaneScratch): the caller must consume them before the thread
    encodes the next tensor.
    """
    raw = memoryview(raw)
    planes = codec.encode_float_planes(raw, dtype, codec.thread_scratch() if reuse else None)
    if planes is not None:
        size = sum(len(c) for c in planes)
        if size < len(raw):
            chunks = [struct.pack("<I", len(head)), head, *planes]
            return _frame_chunks("tensor", codec.FLOAT_PLANES, chunks, len(head) + len(raw))
    return [encode_stored("tensor", head + bytes(raw))]


def check_frame(oid: str, data: bytes | memoryview) -> None:
    """Check stored file bytes without decoding them: length and XXH3-128.

    What every read checks first; enough to know that a file is the bytes
    that were written (not that they are the object: that is the SHA-256
    of the decoded payload, see decode_stored(verify=True)).
    """
    mv = memoryview(data)
    if len(mv) < HEADER_SIZE:
        raise CorruptObject(oid, "a header", f"{len(mv)} bytes", "length", "file is truncated")
    xx = bytes(mv[_DIGEST_AT])
    (stored_len,) = struct.unpack_from("<Q", mv, 24)
    body = mv[HEADER_SIZE:]
    actual = _digest(mv, body)
    if len(body) != stored_len or actual != xx:
        raise CorruptObject(oid, xx.hex(), actual.hex(), "xxh3-128",
                            f"stored {len(body)} of {stored_len} bytes" if len(body) != stored_len else "")


def decode_stored(oid: str, data: bytes | memoryview, *, verify: bool,
                  out: bytearray | None = None) -> tuple[str, bytes]:
    """Check and decode stored file bytes; returns (kind, decoded payload).

    With `out` (a bytearray), a byte-plane tensor is decoded into it, grown
    if needed, and the payload returned is a memoryview of its first bytes:
    valid until `out` is reused. Other codecs return new bytes as usual.
    """
    mv = memoryview(data)
    # The digest first: it covers the header too, so any damaged byte --
    # magic, kind, codec, lengths or payload -- is reported as corruption.
    check_frame(oid, mv)
    magic, version, kind_code, cdc, _r, xx, stored_len, raw_len = _HEADER.unpack_from(mv)
    body = mv[HEADER_SIZE:]
    if magic != MAGIC:
        raise CorruptObject(oid, MAGIC.hex(), bytes(magic).hex(), "magic", "not an mfgit object file")
    if version != STORE_VERSION or kind_code not in _CODE_KIND:
        raise MalformedObject(oid, f"unknown object version {version} or kind {kind_code}")
    kind = _CODE_KIND[kind_code]
    try:
        if cdc == codec.FLOAT_PLANES:
            (off,) = struct.unpack_from("<I", body)
            if off > raw_len or 4 + off > len(body):
                raise codec.CodecError("tensor header length out of range")
            # Decode straight into one buffer: header, then the raw bytes.
            given = out is not None
            if out is not None and len(out) < raw_len:
                try:
                    out.extend(bytes(raw_len - len(out)))
                except BufferError:  # a view of it is still held: do not reuse it
                    out = None
            if out is None:
                out = bytearray(raw_len)
            target = memoryview(out)[:raw_len]
            target[:off] = body[4 : 4 + off]
            codec.decode_float_planes_into(body[4 + off :], target[off:])
            payload = target if given else out
        else:
            payload = codec.decode_generic(cdc, body, raw_len)
    except (codec.CodecError, Exception) as e:  # zstd raises its own error types
        if isinstance(e, (CorruptObject, MalformedObject)):
            raise
        raise CorruptObject(oid, "decodable payload", type(e).__name__, "codec", str(e)) from None
    if len(payload) != raw_len:
        raise CorruptObject(oid, str(raw_len), str(len(payload)), "length", "decoded length differs")
    if verify:
        got = object_id(kind, payload)
        if got != oid:
            raise CorruptObject(oid, oid, got, "sha256")
    return kind, payload


def tensor_payload_parts(header: TensorHeader) -> bytes:
    return header.encode() + b"\n"


class ObjectStore(ABC):
    """Content-addressed object storage. Objects are immutable once written."""

    @abstractmethod
    def has(self, oid: str) -> bool: ...

    @abstractmethod
    def read_stored(self, oid: str) -> bytes:
        """The stored file bytes, unchecked (for transfer; receivers verify)."""

    @abstractmethod
    def _write_stored(self, oid: str, data: bytes | list) -> bool:
        """Place stored bytes (or a list of chunks) under `oid` if absent; True if written."""

    @abstractmethod
    def iter_ids(self) -> Iterator[str]: ...

    @abstractmethod
    def delete(self, oid: str) -> None: ...

    def begin_batch(self) -> None:
        """Start a group of writes made durable together by end_batch()."""

    def end_batch(self) -> None:
        """Make every write since begin_batch() durable."""

    def stored_size(self, oid: str) -> int:
        return len(self.read_stored(oid))

    def mtime(self, oid: str) -> float:
        return 0.0

    # -- typed helpers ---------------------------------------------------

    def get(self, oid: str, *, verify: bool = False, out: bytearray | None = None) -> tuple[str, bytes]:
        return decode_stored(oid, self.read_stored(oid), verify=verify, out=out)

    def put(self, kind: str, payload: bytes, *, oid: str | None = None) -> str:
        oid = oid or object_id(kind, payload)
        if not self.has(oid):
            self._write_stored(oid, encode_stored(kind, payload))
        return oid

    def put_tensor(self, header: TensorHeader, raw: bytes | memoryview, oid: str) -> bool:
        """Store a tensor whose id the caller computed; True if newly written."""
        if self.has(oid):
            return False
        # The chunks are written (copied) before put_tensor returns, so this
        # thread's scratch buffer can be reused for the next tensor.
        chunks = encode_stored_tensor(tensor_payload_parts(header), raw, header.dtype, reuse=True)
        return self._write_stored(oid, chunks)

    def put_received(self, oid: str, data: bytes) -> bool:
        """Store bytes that came from elsewhere, after the full SHA-256 check."""
        if not is_object_id(oid):
            raise MalformedObject(oid, "not an object id")
        decode_stored(oid, data, verify=True)
        if self.has(oid):
            try:
                decode_stored(oid, self.read_stored(oid), verify=True)
                return False
            except (CorruptObject, MalformedObject):
                # Repair: the local copy is damaged and these verified bytes
                # are the object. Replacing it is the one exception to
                # write-once, and it is atomic like any write.
                self._replace_stored(oid, bytes(data))
                return True
        return self._write_stored(oid, bytes(data))

    def _replace_stored(self, oid: str, data: bytes) -> None:
        """Put verified bytes in place of a damaged copy (readers see one or the other)."""
        self.delete(oid)
        self._write_stored(oid, data)


class MemoryStore(ObjectStore):
    """In-memory store, for tests and scratch work."""

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
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
            if oid in self._objects:
                return False
            self._objects[oid] = bytes(data)
            return True

    def iter_ids(self) -> Iterator[str]:
        return iter(sorted(self._objects))

    def delete(self, oid: str) -> None:
        self._objects.pop(oid, None)

    def corrupt(self, oid: str, offset: int) -> None:
        """Flip one byte (tests of invariant 2)."""
        b = bytearray(self._objects[oid])
        b[offset % len(b)] ^= 0xFF
        self._objects[oid] = bytes(b)


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
