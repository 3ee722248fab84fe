"""Lossless encodings of stored payloads.

Float tensors compress poorly as they are: the exponent bits, which carry
almost all of the redundancy, are interleaved with near-random mantissa
bytes. We split the elements into byte planes (byte j of every element) and
compress each plane with zstd on its own. The top plane (sign and most of
the exponent) shrinks to about 2.9 bits per value on trained weights;
mantissa planes are close to random and are kept raw when zstd cannot
shrink them, which also keeps compression fast. This is the idea behind
ZipNN (Hershcovitch et al., 2024) with zstd's entropy coder. (ZipNN also
rotates the sign bit out of the exponent byte; measured here it changes
nothing, since the exponent's lowest bit is as random as the sign.)
zstd runs with fast-strategy parameters tuned for exponent planes (short
hash tables, min match 7): measured on trained-like bf16 weights they give
2.7 bits per value at about 490 MB/s, against 3.0 bits at 230 MB/s for
level 1 and 3.3 bits at 120 MB/s for level 3 — smaller and faster, because
long matches are rare in these planes and searching for them only costs.

Codec ids are part of the on-disk format (docs/design.md); never renumber.
"""

from __future__ import annotations

import struct
import threading

import zstandard  # noqa: E402 - small C extension, cheap to import

RAW = 0
ZSTD = 1
FLOAT_PLANES = 2

_FLOAT_WIDTH = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}
_LEVEL = 1
MIN_COMPRESS = 512  # below this, compression costs more than it saves
_SAMPLE = 1 << 14
_PLANE_PARAMS = None


_LOCAL = threading.local()


def _plane_compressor():
    """This thread's compressor for planes (a compression context is not thread-safe)."""
    global _PLANE_PARAMS
    cctx = getattr(_LOCAL, "cctx", None)
    if cctx is None:
        if _PLANE_PARAMS is None:
            _PLANE_PARAMS = zstandard.ZstdCompressionParameters(
                window_log=17, chain_log=6, hash_log=6, search_log=1, min_match=7,
                target_length=0, strategy=zstandard.STRATEGY_FAST,
            )
        cctx = _LOCAL.cctx = zstandard.ZstdCompressor(compression_params=_PLANE_PARAMS)
    return cctx


class CodecError(ValueError):
    pass


def _np():
    import numpy

    return numpy




def _compress_plane(cctx, plane: bytes) -> tuple[int, bytes]:
    if len(plane) < MIN_COMPRESS:
        return RAW, plane
    # Screen a sample first: mantissa planes are near-random, and skipping
    # them saves most of the compression time.
    if len(plane) > 4 * _SAMPLE:
        sample = plane[:_SAMPLE]
        if len(cctx.compress(sample)) > 0.97 * len(sample):
            return RAW, plane
    packed = cctx.compress(plane)
    if len(packed) >= len(plane):
        return RAW, plane
    return ZSTD, packed


class PlaneScratch:
    """A growable buffer for the byte planes of one tensor at a time.

    Splitting into planes writes every byte of the tensor once; into a
    fresh array each time, that is a page fault per 4 KiB and an munmap
    (with a TLB shootdown on every core) per tensor. One scratch buffer
    per thread, reused, avoids both. Chunks returned by
    encode_float_planes with a scratch are views of it: valid until the
    next call with the same scratch.
    """

    def __init__(self) -> None:
        self._buf = None

    def planes(self, width: int, n: int):
        np = _np()
        if self._buf is None or self._buf.size < width * n:
            self._buf = np.empty(max(width * n, 1 << 20), dtype=np.uint8)
        return self._buf[: width * n].reshape(width, n)


def thread_scratch() -> PlaneScratch:
    """This thread's PlaneScratch (made on first use)."""
    scratch = getattr(_LOCAL, "scratch", None)
    if scratch is None:
        scratch = _LOCAL.scratch = PlaneScratch()
    return scratch


def encode_float_planes(raw: memoryview, dtype: str, scratch: PlaneScratch | None = None) -> list | None:
    """Byte-plane encoding of a float tensor's raw bytes as a list of chunks.

    Returns None when the dtype has no plane encoding. The chunks are
    written out as they are (no joining copy of the whole tensor).
    """
    width = _FLOAT_WIDTH.get(dtype)
    if width is None or len(raw) % width or len(raw) < MIN_COMPRESS:
        return None
    n = len(raw) // width
    planes = (scratch or PlaneScratch()).planes(width, n)
    split_planes(raw, width, planes)
    cctx = _plane_compressor()
    out: list = [struct.pack("<B", width)]
    for j in range(width):
        flag, data = _compress_plane(cctx, memoryview(planes[j]))
        out.append(struct.pack("<BQ", flag, len(data)))
        out.append(data)
    return out


def split_planes(raw, width: int, planes) -> None:
    """Byte j of every element of `raw` into row j of `planes` (width × n uint8).

    Read as little-endian integers of `width` bytes, byte j is bits 8j..8j+7:
    one vectorised shift-and-truncate per plane, several times faster than
    a transposing byte copy.
    """
    np = _np()
    u = np.frombuffer(raw, dtype=f"<u{width}")
    np.copyto(planes[0], u, casting="unsafe")
    for j in range(1, width):
        np.right_shift(u, 8 * j, out=planes[j], casting="unsafe")


def join_planes(planes: list, width: int, out) -> None:
    """Inverse of split_planes: interleave `width` uint8 planes into `out`."""
    np = _np()
    dt = np.dtype(f"<u{width}")
    target = np.frombuffer(out, dtype=dt)
    np.left_shift(planes[-1], 8 * (width - 1), out=target, dtype=dt)
    np.bitwise_or(target, planes[0], out=target)
    for j in range(1, width - 1):
        np.bitwise_or(target, np.left_shift(planes[j], 8 * j, dtype=dt), out=target)


def decode_float_planes_into(data: memoryview, out: memoryview) -> None:
    """Decode byte planes into the writable buffer `out` (the raw tensor bytes)."""
    np = _np()
    raw_len = len(out)
    width = data[0] if len(data) else 0
    if width not in (2, 4, 8) or raw_len % width:
        raise CodecError("bad plane width")
    n = raw_len // width
    pos = 1
    dctx = getattr(_LOCAL, "dctx", None)
    if dctx is None:
        dctx = _LOCAL.dctx = zstandard.ZstdDecompressor()
    planes = []
    for j in range(width):
        if pos + 9 > len(data):
            raise CodecError("truncated plane header")
        flag, size = struct.unpack_from("<BQ", data, pos)
        pos += 9
        chunk = data[pos : pos + size]
        if len(chunk) != size:
            raise CodecError("truncated plane")
        pos += size
        if flag == RAW:
            plane = np.frombuffer(chunk, dtype=np.uint8)
        elif flag == ZSTD:
            plane = np.frombuffer(dctx.decompress(chunk, max_output_size=n), dtype=np.uint8)
        else:
            raise CodecError(f"unknown plane codec {flag}")
        if plane.size != n:
            raise CodecError("plane has the wrong length")
        planes.append(plane)
    if pos != len(data):
        raise CodecError("trailing bytes after planes")
    join_planes(planes, width, out)


def decode_float_planes(data: memoryview, raw_len: int) -> bytes:
    out = bytearray(raw_len)
    decode_float_planes_into(memoryview(data), memoryview(out))
    return bytes(out)


def encode_generic(payload: bytes | memoryview) -> tuple[int, bytes | memoryview]:
    if len(payload) < MIN_COMPRESS:
        return RAW, payload
    packed = zstandard.ZstdCompressor(level=_LEVEL).compress(payload)
    if len(packed) >= len(payload):
        return RAW, payload
    return ZSTD, packed


def decode_generic(codec: int, data: memoryview, raw_len: int) -> bytes:
    if codec == RAW:
        return bytes(data)
    if codec == ZSTD:
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=raw_len)
        if len(out) != raw_len:
            raise CodecError("decompressed length differs from the recorded length")
        return out
    raise CodecError(f"unknown codec {codec}")
