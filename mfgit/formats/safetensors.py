"""A validating safetensors reader and a canonical writer, without torch.

Nothing read from outside is trusted. The 8-byte length is checked against
`MAX_HEADER_SIZE` and the file size before a single header byte is read; the
header JSON is then checked completely (types, dtypes, shapes, offsets) and
the tensors must tile the data section exactly: sorted by start offset they
begin at 0, leave no hole, do not overlap and end at the last byte of the
file. Sizes are computed with Python ints and compared against the length of
the data section, so a hostile header can never make us allocate memory.

Every malformed-file condition raises `SafetensorsError(path, rule, detail)`
where `rule` is one of `RULES`.

The writer produces one canonical form: compact JSON with sorted keys
(`__metadata__` included when given), padded with spaces so that the data
section starts at a multiple of 8, followed by the tensors in name order,
contiguous.
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass
from typing import BinaryIO, Iterable

from mfgit.errors import SafetensorsError
from mfgit.formats.dtypes import DTYPE_SIZES

__all__ = [
    "DTYPE_SIZES",
    "MAX_HEADER_SIZE",
    "RULES",
    "Header",
    "SafetensorsReader",
    "TensorInfo",
    "header_bytes",
    "parse_header",
    "read_header",
    "write",
]


MAX_HEADER_SIZE = 100_000_000

# A tensor's element count must fit in an unsigned 64-bit integer, as in the
# reference implementation (usize::checked_mul).
_U64_LIMIT = 1 << 64

_METADATA_KEY = "__metadata__"
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})

RULES = (
    "too-short",
    "header-too-large",
    "header-past-end",
    "header-not-utf8",
    "header-invalid-json",
    "header-not-object",
    "bad-metadata",
    "bad-entry",
    "unknown-dtype",
    "bad-shape",
    "bad-offsets",
    "size-overflow",
    "size-mismatch",
    "overlap",
    "gap",
    "trailing-bytes",
    "offset-out-of-range",
)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # relative to the data section
    end: int  # relative to the data section, exclusive

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    tensors: dict[str, TensorInfo]  # ordered by start offset
    metadata: dict[str, str] | None
    data_offset: int  # 8 + header length
    file_size: int

    @property
    def data_size(self) -> int:
        return self.file_size - self.data_offset


# --- reading ---------------------------------------------------------------


class _BadJSON(ValueError):
    pass


def _pairs_hook(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _BadJSON(f"duplicate key {key!r}")
        if not _is_utf8_str(key):
            raise _BadJSON(f"key {key!r} contains a lone surrogate")
        out[key] = value
    return out


def _pairs_hook_no_escapes(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        return _pairs_hook(pairs)  # raises, naming the duplicate
    return out


def _reject_constant(name: str):
    raise _BadJSON(f"the constant {name} is not JSON")


def _is_utf8_str(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_int(value: object) -> bool:
    # bool is a subclass of int; JSON true/false are not sizes.
    return isinstance(value, int) and not isinstance(value, bool)


def _header_length(first8: bytes, file_size: int, path: str) -> int:
    """Check the 8-byte length prefix; return the header length."""
    if file_size < 8 or len(first8) < 8:
        raise SafetensorsError(
            path, "too-short", f"the file is {min(file_size, len(first8))} bytes, shorter than the 8-byte length prefix"
        )
    n = int.from_bytes(bytes(first8[:8]), "little", signed=False)
    if n > MAX_HEADER_SIZE:
        raise SafetensorsError(
            path, "header-too-large", f"the header claims {n} bytes, more than the limit of {MAX_HEADER_SIZE}"
        )
    if 8 + n > file_size:
        raise SafetensorsError(
            path, "header-past-end", f"the header claims {n} bytes but the file has only {file_size - 8} after the prefix"
        )
    return n


def parse_header(prefix: bytes, file_size: int, path: str = "<bytes>") -> Header:
    """Validate and parse a header.

    `prefix` is the first min(file_size, 8 + header length) bytes of the file
    (more is accepted and ignored). Pure: touches nothing but its arguments.
    """
    path = str(path)
    if file_size < 0:
        raise ValueError(f"file_size must be non-negative, got {file_size}")
    n = _header_length(prefix[:8], file_size, path)
    if len(prefix) < 8 + n:
        raise ValueError(f"prefix holds {len(prefix)} bytes but the header needs {8 + n}")
    raw = bytes(prefix[8 : 8 + n])
    data_offset = 8 + n
    data_size = file_size - data_offset

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SafetensorsError(path, "header-not-utf8", f"byte {exc.start} of the header is not valid UTF-8") from None

    # A lone surrogate can only come from a \u escape (the bytes are valid
    # UTF-8): without one, only duplicates need checking, which is one dict
    # per object (headers of 200,000 tensors spend their time here).
    hook = _pairs_hook if b"\\u" in raw else _pairs_hook_no_escapes
    try:
        doc = json.loads(text, object_pairs_hook=hook, parse_constant=_reject_constant)
    except _BadJSON as exc:
        raise SafetensorsError(path, "header-invalid-json", str(exc)) from None
    except (ValueError, RecursionError) as exc:
        # JSONDecodeError is a ValueError; so is an over-long integer literal.
        msg = str(exc) if isinstance(exc, ValueError) else "nesting too deep"
        raise SafetensorsError(path, "header-invalid-json", f"the {n}-byte header is not JSON: {msg}") from None

    if not isinstance(doc, dict):
        raise SafetensorsError(path, "header-not-object", f"the header is a JSON {type(doc).__name__}, not an object")
    if not text.startswith("{"):
        raise SafetensorsError(path, "header-invalid-json", "the header must begin with '{' (only trailing padding is allowed)")

    metadata: dict[str, str] | None = None
    infos: list[TensorInfo] = []
    sizes: dict[tuple[str, tuple[int, ...]], int] = {}
    for name, entry in doc.items():
        if name == _METADATA_KEY:
            if not isinstance(entry, dict):
                raise SafetensorsError(path, "bad-metadata", f"__metadata__ is a JSON {type(entry).__name__}, not an object")
            for key, value in entry.items():
                if not _is_utf8_str(value):
                    raise SafetensorsError(
                        path, "bad-metadata", f"__metadata__[{key!r}] is a {type(value).__name__}, not a string"
                    )
            metadata = dict(entry)
            continue
        infos.append(_parse_entry(name, entry, data_size, path, sizes))

    infos.sort(key=lambda t: (t.start, t.end, t.name))
    expected = 0
    for info in infos:
        if info.start < expected:
            raise SafetensorsError(
                path, "overlap", f"tensor {info.name!r} starts at byte {info.start}, before the previous tensor ends at {expected}"
            )
        if info.start > expected:
            raise SafetensorsError(
                path, "gap", f"tensor {info.name!r} starts at byte {info.start}, leaving bytes {expected}..{info.start} unused"
            )
        expected = info.end
    if expected < data_size:
        raise SafetensorsError(
            path, "trailing-bytes", f"the tensors end at byte {expected} of a {data_size}-byte data section"
        )

    return Header(
        tensors={t.name: t for t in infos},
        metadata=metadata,
        data_offset=data_offset,
        file_size=file_size,
    )


def _parse_entry(name: str, entry: object, data_size: int, path: str,
                 sizes: dict[tuple[str, tuple[int, ...]], int] | None = None) -> TensorInfo:
    """One header entry, checked rule by rule.

    `sizes` remembers the byte size of each (dtype, shape) already checked:
    the many tensors of an adapter share a few shapes. A shape is cached
    only when every dimension is a plain int (JSON true hashes like 1).
    """
    if not isinstance(entry, dict):
        raise SafetensorsError(path, "bad-entry", f"entry {name!r} is a JSON {type(entry).__name__}, not an object")
    if sizes is not None and entry.keys() == _ENTRY_KEYS:
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if (type(dtype) is str and type(shape) is list and type(offsets) is list and len(offsets) == 2
                and all(type(d) is int for d in shape)):
            key = (dtype, tuple(shape))
            nbytes = sizes.get(key)
            start, end = offsets
            if (nbytes is not None and type(start) is int and type(end) is int and 0 <= start <= end
                    and end - start == nbytes and end <= data_size):
                return TensorInfo(name=name, dtype=dtype, shape=key[1], start=start, end=end)
    keys = set(entry)
    if keys != _ENTRY_KEYS:
        missing = sorted(_ENTRY_KEYS - keys)
        extra = sorted(keys - _ENTRY_KEYS)
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected {', '.join(repr(k) for k in extra[:5])}")
        raise SafetensorsError(path, "bad-entry", f"entry {name!r}: {'; '.join(parts)}")

    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise SafetensorsError(path, "unknown-dtype", f"tensor {name!r} has dtype {dtype!r}, which is not supported")

    shape = entry["shape"]
    if not isinstance(shape, list):
        raise SafetensorsError(path, "bad-shape", f"tensor {name!r} has shape {type(shape).__name__}, not a list")
    for i, dim in enumerate(shape):
        if not _is_int(dim) or dim < 0:
            raise SafetensorsError(
                path, "bad-shape", f"tensor {name!r} dimension {i} is {_short(dim)}, not a non-negative integer"
            )

    offsets = entry["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise SafetensorsError(
            path, "bad-offsets", f"tensor {name!r} has data_offsets {_short(offsets)}, not two integers 0 <= start <= end"
        )
    start, end = offsets

    count = 1
    for dim in shape:
        count *= dim
        if count >= _U64_LIMIT:
            raise SafetensorsError(
                path, "size-overflow", f"tensor {name!r} has more than 2**64 elements (shape of {len(shape)} dimensions)"
            )
    nbytes = count * DTYPE_SIZES[dtype]
    if nbytes > data_size:
        raise SafetensorsError(
            path, "size-overflow", f"tensor {name!r} needs {nbytes} bytes but the data section has only {data_size}"
        )
    if end - start != nbytes:
        raise SafetensorsError(
            path, "size-mismatch", f"tensor {name!r} spans {end - start} bytes but {dtype} {list(shape)} needs {nbytes}"
        )
    if end > data_size:
        raise SafetensorsError(
            path, "offset-out-of-range", f"tensor {name!r} ends at byte {end}, past the {data_size}-byte data section"
        )
    if sizes is not None and all(type(d) is int for d in shape):
        sizes[(dtype, tuple(shape))] = nbytes
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), start=start, end=end)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_header(path) -> Header:
    """Read and validate the header of the file at `path`.

    The length prefix is checked before any header byte is read.
    """
    spath = os.fspath(path)
    with open(spath, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        first8 = f.read(8)
        n = _header_length(first8, file_size, str(spath))
        raw = _read_exact(f, n)
        if len(raw) < n:
            raise SafetensorsError(
                str(spath), "header-past-end", f"the header claims {n} bytes but only {len(raw)} could be read"
            )
        return parse_header(first8 + raw, file_size, str(spath))


def _read_exact(f: BinaryIO, n: int) -> bytes:
    chunks = []
    left = n
    while left > 0:
        chunk = f.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class SafetensorsReader:
    """Read-only, memory-mapped access to a validated safetensors file.

    The header is parsed from the same mapping the tensor bytes come from, so
    the header and the data always describe one file, even if the file is
    replaced on disk meanwhile.
    """

    def __init__(self, path):
        self.path = str(os.fspath(path))
        self._file = None
        self._mmap: mmap.mmap | None = None
        self._view: memoryview | None = None
        self._file = open(self.path, "rb")
        try:
            file_size = os.fstat(self._file.fileno()).st_size
            if file_size < 8:
                _header_length(b"", file_size, self.path)
            self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            size = len(self._mmap)
            n = _header_length(self._mmap[:8], size, self.path)
            self.header: Header = parse_header(self._mmap[: 8 + n], size, self.path)
            self._view = memoryview(self._mmap)
        except BaseException:
            self.close()
            raise

    def tensor_bytes(self, name: str) -> memoryview:
        """The raw little-endian bytes of tensor `name` (a read-only view)."""
        if self._mmap is None:
            raise ValueError("the reader is closed")
        info = self.header.tensors[name]
        base = self.header.data_offset
        return self._view[base + info.start : base + info.end]

    def file_bytes(self) -> memoryview:
        """Every byte of the file, header included (a read-only view of the mapping it was validated from)."""
        if self._view is None:
            raise ValueError("the reader is closed")
        return self._view

    def close(self) -> None:
        view = self._view
        if view is not None:
            self._view = None
            try:
                view.release()
            except BufferError:  # pragma: no cover - a slice of it is still held
                pass
        if self._mmap is not None:
            mm, self._mmap = self._mmap, None
            try:
                mm.close()
            except BufferError:
                # A caller still holds a tensor view; the mapping is released
                # when the last view is garbage-collected.
                pass
        if self._file is not None:
            f, self._file = self._file, None
            f.close()

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


# --- writing ---------------------------------------------------------------


def _writer_path(fileobj) -> str:
    name = getattr(fileobj, "name", None)
    return str(name) if isinstance(name, (str, bytes, os.PathLike)) else "<write>"


def header_bytes(
    entries: Iterable[tuple[str, str, tuple[int, ...], int]],
    metadata: dict[str, str] | None = None,
    path: str = "<write>",
) -> bytes:
    """The 8-byte prefix plus padded JSON header for `entries`.

    `entries` are (name, dtype, shape, nbytes); offsets are assigned in name
    order. Validates dtype, shape, names, metadata and sizes.
    """
    items = sorted(entries, key=lambda e: e[0])
    doc: dict[str, object] = {}
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(
            _is_utf8_str(k) and _is_utf8_str(v) for k, v in metadata.items()
        ):
            raise SafetensorsError(path, "bad-metadata", "metadata must map strings to strings")
        doc[_METADATA_KEY] = dict(metadata)
    offset = 0
    for name, dtype, shape, nbytes in items:
        if not _is_utf8_str(name) or name == _METADATA_KEY:
            raise SafetensorsError(path, "bad-entry", f"{name!r} cannot be a tensor name")
        if name in doc:
            raise SafetensorsError(path, "bad-entry", f"tensor {name!r} is given twice")
        if dtype not in DTYPE_SIZES:
            raise SafetensorsError(path, "unknown-dtype", f"tensor {name!r} has dtype {dtype!r}, which is not supported")
        shape = tuple(shape)
        if not all(_is_int(d) and d >= 0 for d in shape):
            raise SafetensorsError(path, "bad-shape", f"tensor {name!r} has shape {_short(shape)}")
        count = 1
        for d in shape:
            count *= d
        need = count * DTYPE_SIZES[dtype]
        if nbytes != need:
            raise SafetensorsError(
                path, "size-mismatch", f"tensor {name!r} has {nbytes} bytes but {dtype} {list(shape)} needs {need}"
            )
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + need]}
        offset += need
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    raw = text.encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    if len(raw) > MAX_HEADER_SIZE:
        raise SafetensorsError(path, "header-too-large", f"the header would be {len(raw)} bytes")
    return len(raw).to_bytes(8, "little") + raw


def write(
    fileobj: BinaryIO,
    tensors: Iterable[tuple[str, str, tuple[int, ...], bytes | memoryview]],
    metadata: dict[str, str] | None = None,
) -> int:
    """Write a canonical safetensors file to `fileobj`; return bytes written.

    `tensors` yields (name, dtype, shape, data) where data is any
    bytes-like object holding exactly prod(shape) * itemsize bytes, already
    little-endian (bytes are written as given; nothing is byte-swapped).
    """
    path = _writer_path(fileobj)
    views: dict[str, memoryview] = {}
    entries = []
    for name, dtype, shape, data in tensors:
        view = memoryview(data)
        if view.ndim != 1 or view.format != "B" or not view.c_contiguous:
            try:
                view = view.cast("B")
            except (TypeError, ValueError):  # non-contiguous, or an exotic format
                view = memoryview(view.tobytes())
        if name in views:
            raise SafetensorsError(path, "bad-entry", f"tensor {name!r} is given twice")
        views[name] = view
        entries.append((name, dtype, tuple(shape), view.nbytes))
    head = header_bytes(entries, metadata, path)
    written = 0
    written += _write_all(fileobj, head)
    for name in sorted(views):
        written += _write_all(fileobj, views[name])
    return written


def _write_all(fileobj: BinaryIO, data) -> int:
    view = memoryview(data)
    total = view.nbytes
    done = 0
    while done < total:
        n = fileobj.write(view[done:])
        if not n:  # a non-blocking raw stream that could not take anything
            raise OSError(f"short write: {done} of {total} bytes written")
        done += n
    return total


# The dtype order of the safetensors library (its Rust `Dtype` enum); it
# writes tensors sorted by (dtype descending, name).
_LIBRARY_DTYPE_ORDER = [
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
    "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64",
]


def library_layout(entries: Iterable[tuple[str, str, tuple[int, ...], int]],
                   metadata: dict[str, str] | None = None, path: str = "<write>") -> tuple[bytes, list[str]]:
    """Header bytes and tensor order exactly as `safetensors.torch.save_file` lays them out.

    Writing a file this way reproduces, byte for byte, what PEFT's
    save_pretrained wrote (for metadata of at most one key, whose order the
    library does not fix), so a checkout can be compared with `sha256sum`.
    Validates like `header_bytes`.
    """
    items = list(entries)
    header_bytes(items, metadata, path)  # validation only
    rank = {d: i for i, d in enumerate(_LIBRARY_DTYPE_ORDER)}
    items.sort(key=lambda e: (-rank.get(e[1], -1), e[0]))
    parts = []
    if metadata is not None:
        parts.append('"__metadata__":' + json.dumps(metadata, separators=(",", ":"), ensure_ascii=False))
    offset = 0
    for name, dtype, shape, nbytes in items:
        parts.append(
            json.dumps(name, ensure_ascii=False)
            + ':{"dtype":' + json.dumps(dtype)
            + ',"shape":' + json.dumps(list(shape), separators=(",", ":"))
            + f',"data_offsets":[{offset},{offset + nbytes}]}}'
        )
        offset += nbytes
    raw = ("{" + ",".join(parts) + "}").encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, [e[0] for e in items]
