"""The stored object file: a fixed header, then the stored payload.

    magic "MFGO" | version u8 | kind u8 | codec u8 | reserved u8
    | xxh3-128 (16 bytes) | stored length u64 | decoded length u64

Version 2 (what mfgit writes): the XXH3-128 covers the object's id (its 32
raw bytes), then every other byte of the file: the 8 header bytes before
the digest, the 16 after it, and the stored payload. A flipped bit in the
kind, the codec or a length is caught like one in the payload, and a valid
object file stored under another object's name (a same-shape tensor, the
parent commit) fails the same cheap check, because the id it was framed
for is not the id it is read as. Every read therefore passes the id.

Version 1 (earlier mfgit) has no id in its digest: such a file is accepted
only after the full SHA-256 of its decoded payload matches the id (slower,
but bound to the id all the same).

The decoded payload is what the id hashes (see mfgit.objects.model).
``check_frame`` is the check every read makes first; ``decode_stored``
decodes, and with ``verify=True`` (always for version 1) checks the full
SHA-256 against the id (invariant 2). Pure functions on bytes: the stores
(mfgit.store.disk, mfgit.store.memory) keep the files.
"""

from __future__ import annotations

import struct

import xxhash

from mfgit.errors import CorruptObject, MalformedObject
from mfgit.objects.model import KINDS, TensorHeader, object_id
from mfgit.store import codec

MAGIC = b"MFGO"
STORE_VERSION = 2  # what every write produces: the digest covers the id
LEGACY_VERSION = 1  # read, but bound to its id only by the full SHA-256
_HEADER = struct.Struct("<4sBBBB16sQQ")
HEADER_SIZE = _HEADER.size
KIND_CODE = {k: i + 1 for i, k in enumerate(KINDS)}
CODE_KIND = {v: k for k, v in KIND_CODE.items()}


_DIGEST_AT = slice(8, 24)  # where the XXH3-128 sits in the header
_VERSION_AT = 4


def _id_bytes(oid: str) -> bytes:
    try:
        raw = bytes.fromhex(oid)
    except (TypeError, ValueError):
        raw = b""
    if len(raw) != 32:
        raise MalformedObject(str(oid), "not an object id")
    return raw


def _digest(key: bytes, header: bytes | memoryview, chunks) -> bytes:
    """XXH3-128 of `key` (the raw id; empty for version 1), the header without its digest field, and the body."""
    h = xxhash.xxh3_128()
    h.update(key)
    h.update(header[: _DIGEST_AT.start])
    h.update(header[_DIGEST_AT.stop : HEADER_SIZE])
    for c in chunks:
        h.update(c)
    return h.digest()


def _frame_chunks(oid: str, kind: str, cdc: int, chunks: list, raw_len: int) -> list:
    """Header + chunks; the digest is computed over the chunks in place (no joined copy)."""
    n = sum(len(c) for c in chunks)
    header = bytearray(_HEADER.pack(MAGIC, STORE_VERSION, KIND_CODE[kind], cdc, 0, bytes(16), n, raw_len))
    header[_DIGEST_AT] = _digest(_id_bytes(oid), header, chunks)
    return [bytes(header), *chunks]


def encode_stored(kind: str, payload: bytes | memoryview, *, oid: str) -> bytes:
    """The stored file bytes of a decoded payload, framed for the object `oid` (its id)."""
    cdc, stored = codec.encode_generic(payload)
    return b"".join(bytes(c) for c in _frame_chunks(oid, kind, cdc, [stored], len(payload)))


def encode_stored_tensor(head: bytes, raw: bytes | memoryview, dtype: str, *, oid: str, reuse: bool = False) -> list:
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
            return _frame_chunks(oid, "tensor", codec.FLOAT_PLANES, chunks, len(head) + len(raw))
    if len(head) + len(raw) < codec.MIN_COMPRESS:
        # What encode_generic would decide for so few bytes, without joining
        # a copy: most tensors of an adapter of many small modules.
        return _frame_chunks(oid, "tensor", codec.RAW, [head, raw], len(head) + len(raw))
    return [encode_stored("tensor", head + bytes(raw), oid=oid)]


def _check_digest(oid: str, mv: memoryview) -> int:
    """Length and XXH3-128 of stored file bytes read as object `oid`; returns the store version.

    The version byte chooses the digest before it is trusted: a damaged
    version byte makes the digest fail like any other damaged byte.
    """
    if len(mv) < HEADER_SIZE:
        raise CorruptObject(oid, "a header", f"{len(mv)} bytes", "length", "file is truncated")
    version = mv[_VERSION_AT]
    key = b"" if version == LEGACY_VERSION else _id_bytes(oid)
    xx = bytes(mv[_DIGEST_AT])
    (stored_len,) = struct.unpack_from("<Q", mv, 24)
    body = mv[HEADER_SIZE:]
    actual = _digest(key, mv, (body,))
    if len(body) != stored_len or actual != xx:
        detail = f"stored {len(body)} of {stored_len} bytes" if len(body) != stored_len else ""
        if not detail and key:
            detail = "damaged, or the file of another object"
        raise CorruptObject(oid, xx.hex(), actual.hex(), "xxh3-128", detail)
    return version


def check_frame(oid: str, data: bytes | memoryview) -> None:
    """Check that stored file bytes are the object `oid`, as cheaply as their version allows.

    Version 2: length and the XXH3-128 keyed by the id, without decoding --
    any flipped, missing or extra byte, and a whole valid file of another
    object, fail it. Version 1: its digest, then a decode and the full
    SHA-256 against the id. Raises CorruptObject. (A forger who computes
    the XXH3 for the id on purpose is caught only by the SHA-256:
    decode_stored(verify=True).)
    """
    mv = memoryview(data)
    if _check_digest(oid, mv) == LEGACY_VERSION:
        try:
            decode_stored(oid, mv, verify=True)
        except MalformedObject as e:  # a sound digest over bytes that are no object file
            raise CorruptObject(oid, "an object file", "a malformed one", "decode", e.reason) from None


def decode_stored(oid: str, data: bytes | memoryview, *, verify: bool,
                  out: bytearray | None = None) -> tuple[str, bytes]:
    """Check and decode stored file bytes read as object `oid`; returns (kind, decoded payload).

    With `verify` (and always for a version-1 file, whose digest does not
    name its id) the decoded payload's SHA-256 is checked against `oid`.
    With `out` (a bytearray), a byte-plane tensor is decoded into it, grown
    if needed, and the payload returned is a memoryview of its first bytes:
    valid until `out` is reused. Other codecs return new bytes as usual.
    """
    mv = memoryview(data)
    # The digest first: it covers the header too, so any damaged byte --
    # magic, kind, codec, lengths or payload -- is reported as corruption.
    version = _check_digest(oid, mv)
    magic, _version, kind_code, cdc, _r, xx, stored_len, raw_len = _HEADER.unpack_from(mv)
    body = mv[HEADER_SIZE:]
    if magic != MAGIC:
        raise CorruptObject(oid, MAGIC.hex(), bytes(magic).hex(), "magic", "not an mfgit object file")
    if version not in (STORE_VERSION, LEGACY_VERSION) or kind_code not in CODE_KIND:
        raise MalformedObject(oid, f"unknown object version {version} or kind {kind_code}")
    kind = CODE_KIND[kind_code]
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
    if verify or version == LEGACY_VERSION:
        got = object_id(kind, payload)
        if got != oid:
            raise CorruptObject(oid, oid, got, "sha256")
    return kind, payload


def current_frame(oid: str, data: bytes | memoryview) -> bytes:
    """Stored file bytes of object `oid` in the current store version (a version-1 file re-keyed).

    Only the header changes (version and digest); the stored payload is kept
    as it is. The caller has verified `data` against `oid` (SHA-256) first.
    """
    mv = memoryview(data)
    if len(mv) < HEADER_SIZE or mv[_VERSION_AT] == STORE_VERSION:
        return bytes(mv)
    header = bytearray(mv[:HEADER_SIZE])
    header[_VERSION_AT] = STORE_VERSION
    header[_DIGEST_AT] = _digest(_id_bytes(oid), header, (mv[HEADER_SIZE:],))
    return bytes(header) + bytes(mv[HEADER_SIZE:])


def tensor_payload_parts(header: TensorHeader) -> bytes:
    return header.encode() + b"\n"


def stored_kind(data: bytes | memoryview) -> str:
    """The kind a stored file's header claims ("?" when it is too short to say); unchecked."""
    return CODE_KIND.get(data[5], "?") if len(data) > 5 else "?"


def stored_version(data: bytes | memoryview) -> int:
    """The store version a stored file's header claims (0 when too short); unchecked."""
    return data[_VERSION_AT] if len(data) > _VERSION_AT else 0
