"""The stored object file: a fixed header, then the stored payload.

    magic "MFGO" | version u8 | kind u8 | codec u8 | reserved u8
    | xxh3-128 (16 bytes) | stored length u64 | decoded length u64

The XXH3-128 covers every other byte of the file: the 8 header bytes before
it, the 16 after it, and the stored payload. A flipped bit in the kind, the
codec or a length is therefore caught like one in the payload.

The decoded payload is what the id hashes (see mfgit.objects.model).
``check_frame`` is the cheap check every read makes (any flipped or missing
byte of the file); ``decode_stored(verify=True)`` additionally decodes and
checks the full SHA-256 against the id (invariant 2). Pure functions on
bytes: the stores (mfgit.store.disk, mfgit.store.memory) keep the files.
"""

from __future__ import annotations

import struct

import xxhash

from mfgit.errors import CorruptObject, MalformedObject
from mfgit.objects.model import KINDS, TensorHeader, object_id
from mfgit.store import codec

MAGIC = b"MFGO"
STORE_VERSION = 1
_HEADER = struct.Struct("<4sBBBB16sQQ")
HEADER_SIZE = _HEADER.size
KIND_CODE = {k: i + 1 for i, k in enumerate(KINDS)}
CODE_KIND = {v: k for k, v in KIND_CODE.items()}


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
    header = bytearray(_HEADER.pack(MAGIC, STORE_VERSION, KIND_CODE[kind], cdc, 0, bytes(16), n, raw_len))
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
    if version != STORE_VERSION or kind_code not in CODE_KIND:
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
    if verify:
        got = object_id(kind, payload)
        if got != oid:
            raise CorruptObject(oid, oid, got, "sha256")
    return kind, payload


def tensor_payload_parts(header: TensorHeader) -> bytes:
    return header.encode() + b"\n"




def stored_kind(data: bytes | memoryview) -> str:
    """The kind a stored file's header claims ("?" when it is too short to say); unchecked."""
    return CODE_KIND.get(data[5], "?") if len(data) > 5 else "?"
