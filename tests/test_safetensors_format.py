"""The validating safetensors reader/writer (`mfgit.formats.safetensors`).

One test per validation rule, with the bytes crafted by hand; interop both
ways with the official `safetensors` package; and a hypothesis fuzz test:
whatever the bytes, the reader either returns a header whose tensors tile
the data section or raises SafetensorsError -- nothing else.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tracemalloc

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfgit.errors import SafetensorsError
from mfgit.formats import safetensors as stf
from mfgit.formats.safetensors import (
    DTYPE_SIZES,
    MAX_HEADER_SIZE,
    Header,
    SafetensorsReader,
    parse_header,
    read_header,
    write,
)

# --- crafting bytes by hand -------------------------------------------------


def raw_file(header: bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """8-byte little-endian length + header bytes + data."""
    n = len(header) if length is None else length
    return struct.pack("<Q", n) + header + data


def json_file(doc, data: bytes = b"", pad: int = 0) -> bytes:
    header = json.dumps(doc, separators=(",", ":")).encode() + b" " * pad
    return raw_file(header, data)


def entry(dtype="F32", shape=(1,), offsets=(0, 4)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def parse(blob: bytes) -> Header:
    return parse_header(blob, len(blob), "test.safetensors")


def rule_of(blob: bytes) -> str:
    with pytest.raises(SafetensorsError) as info:
        parse(blob)
    err = info.value
    assert err.rule in stf.RULES
    assert err.path == "test.safetensors"
    assert err.detail and err.rule in str(err)
    return err.rule


def assert_tiles(header: Header) -> None:
    """The property every accepted header has: tensors tile the data section."""
    infos = list(header.tensors.values())
    assert [t.start for t in infos] == sorted(t.start for t in infos)
    pos = 0
    for t in infos:
        assert t.dtype in DTYPE_SIZES
        assert all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in t.shape)
        count = 1
        for d in t.shape:
            count *= d
        assert t.start == pos and t.nbytes == t.end - t.start == count * DTYPE_SIZES[t.dtype]
        pos = t.end
    assert pos == header.file_size - header.data_offset
    assert header.data_offset >= 8 and header.data_offset <= header.file_size
    if header.metadata is not None:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in header.metadata.items())


def peak_allocation(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    except SafetensorsError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


# --- the format's valid corner cases ---------------------------------------


def test_empty_header_with_no_data_is_valid():
    header = parse(raw_file(b"{}"))
    assert header.tensors == {} and header.metadata is None
    assert header.data_offset == 10 and header.file_size == 10


def test_header_padded_with_trailing_spaces_is_valid():
    blob = json_file({"a": entry()}, b"\0" * 4, pad=7)
    header = parse(blob)
    assert header.data_offset == len(blob) - 4
    assert header.tensors["a"].shape == (1,)


def test_zero_sized_tensors_may_share_an_offset():
    doc = {
        "e1": entry(shape=(0,), offsets=(4, 4)),
        "e2": entry(shape=(2, 0), offsets=(4, 4)),
        "a": entry(offsets=(0, 4)),
        "z": entry(shape=(), offsets=(4, 8)),
    }
    header = parse(json_file(doc, b"\0" * 8))
    assert_tiles(header)
    assert list(header.tensors)[0] == "a" and list(header.tensors)[-1] == "z"


def test_tensors_are_ordered_by_start_offset_not_by_name():
    doc = {"a": entry(offsets=(4, 8)), "b": entry(offsets=(0, 4))}
    assert list(parse(json_file(doc, b"\0" * 8)).tensors) == ["b", "a"]


def test_metadata_is_returned():
    doc = {"__metadata__": {"format": "pt", "k": "v"}, "a": entry()}
    assert parse(json_file(doc, b"\0" * 4)).metadata == {"format": "pt", "k": "v"}


# --- one test per rule ---------------------------------------------------------


def test_file_shorter_than_length_prefix_is_too_short(tmp_path):
    assert rule_of(b"\x02\0\0\0\0") == "too-short"
    assert rule_of(b"") == "too-short"
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x02\0\0")
    with pytest.raises(SafetensorsError) as info:
        read_header(path)
    assert info.value.rule == "too-short" and info.value.path == str(path)
    with pytest.raises(SafetensorsError, match="too-short"):
        SafetensorsReader(path)


def test_header_length_over_limit_is_rejected_before_allocation(tmp_path):
    assert rule_of(raw_file(b"{}", length=MAX_HEADER_SIZE + 1)) == "header-too-large"
    path = tmp_path / "huge.safetensors"
    path.write_bytes(raw_file(b"{}", length=2**64 - 1))
    assert peak_allocation(lambda: read_header(path)) < 1_000_000
    with pytest.raises(SafetensorsError) as info:
        read_header(path)
    assert info.value.rule == "header-too-large" and str(2**64 - 1) in info.value.detail


def test_header_length_past_end_is_rejected_before_allocation(tmp_path):
    assert rule_of(raw_file(b"{}", length=3)) == "header-past-end"
    path = tmp_path / "past.safetensors"
    # Claims a header of 90 MB (under the limit) in a 10-byte file.
    path.write_bytes(raw_file(b"{}", length=90_000_000))
    assert peak_allocation(lambda: read_header(path)) < 1_000_000
    with pytest.raises(SafetensorsError) as info:
        SafetensorsReader(path)
    assert info.value.rule == "header-past-end" and "90000000" in info.value.detail


def test_header_that_is_not_utf8_is_rejected():
    assert rule_of(raw_file(b'{"\xff":1}')) == "header-not-utf8"


@pytest.mark.parametrize(
    "header",
    [
        b"",
        b"{",
        b'{"a":1,}',
        b'{"a":1,"a":2}',  # duplicate key
        b'{"m":{"dtype":"F32","dtype":"F32","shape":[],"data_offsets":[0,4]}}',  # nested duplicate
        b'{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,0]}}',
        b'{"a":Infinity}',
        b'{"a":-Infinity}',
        b'{"\\ud800":{}}',  # lone surrogate in a name
        b"[" * 5000 + b"]" * 5000,  # nesting too deep
        b'{"a":' + b"9" * 5000 + b"}",  # integer literal too long for Python
        b" {}",  # must begin with '{'
        b"{}\0\0",  # padding is spaces, not NULs
    ],
)
def test_header_that_is_not_json_is_rejected(header):
    assert rule_of(raw_file(header)) == "header-invalid-json"


@pytest.mark.parametrize("header", [b"[]", b'"x"', b"1", b"null", b"true"])
def test_header_that_is_not_an_object_is_rejected(header):
    assert rule_of(raw_file(header)) == "header-not-object"


@pytest.mark.parametrize(
    "metadata", [[], "x", None, 1, {"k": 1}, {"k": None}, {"k": ["v"]}, {"k": {"v": "w"}}]
)
def test_metadata_that_is_not_str_to_str_is_rejected(metadata):
    assert rule_of(json_file({"__metadata__": metadata})) == "bad-metadata"


def test_metadata_with_lone_surrogate_value_is_rejected():
    assert rule_of(raw_file(b'{"__metadata__":{"k":"\\udc00"}}')) == "bad-metadata"


@pytest.mark.parametrize(
    "value",
    [
        [],
        "F32",
        None,
        {"dtype": "F32", "shape": [1]},
        {"dtype": "F32", "data_offsets": [0, 4]},
        {"shape": [1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1},
    ],
)
def test_entry_that_is_not_exactly_dtype_shape_offsets_is_rejected(value):
    assert rule_of(json_file({"a": value}, b"\0" * 4)) == "bad-entry"


@pytest.mark.parametrize("dtype", ["F128", "f32", "", "C64", "F8_E8M0", 4, None, ["F32"]])
def test_unknown_dtype_is_rejected(dtype):
    assert rule_of(json_file({"a": entry(dtype=dtype)}, b"\0" * 4)) == "unknown-dtype"


@pytest.mark.parametrize("shape", ["4", 4, None, [-1], [True], [1.0], ["1"], [[1]], {"0": 1}])
def test_shape_that_is_not_a_list_of_non_negative_ints_is_rejected(shape):
    doc = {"a": {"dtype": "U8", "shape": shape, "data_offsets": [0, 1]}}
    assert rule_of(json_file(doc, b"\0")) == "bad-shape"


@pytest.mark.parametrize(
    "offsets", [[4, 0], [0], [0, 4, 8], [-1, 3], [0, True], [0.0, 4], "0,4", None, {"0": 4}]
)
def test_offsets_that_are_not_two_ordered_non_negative_ints_are_rejected(offsets):
    doc = {"a": {"dtype": "F32", "shape": [1], "data_offsets": offsets}}
    assert rule_of(json_file(doc, b"\0" * 4)) == "bad-offsets"


@pytest.mark.parametrize(
    "second, rule",
    [
        ({"dtype": "F32", "shape": [True], "data_offsets": [4, 8]}, "bad-shape"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [4, 8]}, "bad-shape"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4, True]}, "bad-offsets"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}, "bad-offsets"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4, 12]}, "size-mismatch"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}, "offset-out-of-range"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4, 8], "x": 1}, "bad-entry"),
        ({"dtype": "f32", "shape": [1], "data_offsets": [4, 8]}, "unknown-dtype"),
    ],
)
def test_every_entry_is_checked_not_only_the_first_of_its_shape(second, rule):
    # Entries of a shape already seen take a shorter path (headers of
    # 200,000 tensors of a few shapes): it must enforce the same rules.
    doc = {"a": entry(offsets=(0, 4)), "b": second}
    assert rule_of(json_file(doc, b"\0" * 8)) == rule


def test_duplicate_names_are_rejected_with_or_without_escapes():
    assert rule_of(raw_file(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                            b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0")) == "header-invalid-json"
    assert rule_of(raw_file(b'{"\\u0061":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                            b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0")) == "header-invalid-json"


def test_element_count_overflowing_u64_is_size_overflow_without_allocation():
    huge = {"a": entry(dtype="F64", shape=(2**40, 2**40), offsets=(0, 8))}
    blob = json_file(huge, b"\0" * 8)
    assert rule_of(blob) == "size-overflow"
    assert peak_allocation(lambda: parse(blob)) < 1_000_000


def test_tensor_larger_than_data_section_is_size_overflow_without_allocation():
    big = {"a": entry(dtype="F32", shape=(1 << 40,), offsets=(0, 4 << 40))}
    blob = json_file(big, b"\0" * 16)
    assert rule_of(blob) == "size-overflow"
    assert peak_allocation(lambda: parse(blob)) < 1_000_000


def test_offsets_span_that_disagrees_with_shape_is_size_mismatch():
    assert rule_of(json_file({"a": entry(shape=(2,), offsets=(0, 4))}, b"\0" * 8)) == "size-mismatch"
    assert rule_of(json_file({"a": entry(shape=(1,), offsets=(0, 8))}, b"\0" * 8)) == "size-mismatch"


def test_overlapping_tensors_are_rejected():
    doc = {"a": entry(shape=(2,), offsets=(0, 8)), "b": entry(shape=(2,), offsets=(4, 12))}
    assert rule_of(json_file(doc, b"\0" * 12)) == "overlap"
    # two tensors on the very same bytes
    doc = {"a": entry(offsets=(0, 4)), "b": entry(offsets=(0, 4))}
    assert rule_of(json_file(doc, b"\0" * 8)) == "overlap"


def test_hole_between_tensors_is_a_gap():
    doc = {"a": entry(offsets=(0, 4)), "b": entry(offsets=(8, 12))}
    assert rule_of(json_file(doc, b"\0" * 12)) == "gap"
    # the data section must start at offset 0
    assert rule_of(json_file({"a": entry(offsets=(4, 8))}, b"\0" * 8)) == "gap"


def test_data_after_the_last_tensor_is_trailing_bytes():
    assert rule_of(json_file({"a": entry()}, b"\0" * 5)) == "trailing-bytes"
    assert rule_of(json_file({}, b"\0")) == "trailing-bytes"


def test_tensor_ending_past_the_data_section_is_out_of_range():
    assert rule_of(json_file({"a": entry(offsets=(8, 12))}, b"\0" * 8)) == "offset-out-of-range"


def test_error_detail_is_a_sentence_with_the_numbers():
    with pytest.raises(SafetensorsError) as info:
        parse(json_file({"a": entry(shape=(3,), offsets=(0, 4))}, b"\0" * 4))
    assert "'a'" in info.value.detail and "12" in info.value.detail and "4" in info.value.detail


def test_reader_does_not_import_torch():
    code = (
        "import sys; import mfgit.formats.safetensors as m; "
        "m.parse_header(b'\\x02' + b'\\0' * 7 + b'{}', 10); "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))


# --- interop with the official implementation ------------------------------

TORCH_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.uint16: "U16",
    torch.uint32: "U32",
    torch.uint64: "U64",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}


def raw_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def sample_tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {
        "bf16.matrix": torch.randn(3, 5, generator=gen).to(torch.bfloat16),
        "f16.vector": torch.randn(7, generator=gen).to(torch.float16),
        "f32.cube": torch.randn(2, 3, 4, generator=gen),
        "f64.scalar": torch.tensor(3.25, dtype=torch.float64),
        "f32.empty": torch.zeros(0, dtype=torch.float32),
        "f32.empty2d": torch.zeros(4, 0, dtype=torch.float32),
        "i64.range": torch.arange(-5, 6, dtype=torch.int64),
        "i32": torch.tensor([[-(2**31), 2**31 - 1]], dtype=torch.int32),
        "i16": torch.tensor([1, -2, 3], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.arange(256, dtype=torch.uint8).reshape(16, 16),
        "bool": torch.tensor([True, False, True]),
        "f8e4m3": torch.randn(6, generator=gen).to(torch.float8_e4m3fn),
        "f8e5m2": torch.randn(6, generator=gen).to(torch.float8_e5m2),
        # non-contiguous input: the file holds the contiguous bytes
        "f32.transposed": torch.randn(3, 4, generator=gen).T,
    }
    return out


def test_file_written_by_official_save_file_parses_with_exact_bytes(tmp_path):
    from safetensors.torch import save_file

    tensors = sample_tensors()
    path = tmp_path / "official.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    header = read_header(path)
    assert_tiles(header)
    assert header.metadata == {"format": "pt"}
    assert set(header.tensors) == set(tensors)
    with SafetensorsReader(path) as reader:
        assert reader.header == header
        for name, t in tensors.items():
            info = header.tensors[name]
            assert info.dtype == TORCH_DTYPES[t.dtype]
            assert info.shape == tuple(t.shape)
            view = reader.tensor_bytes(name)
            assert view.readonly
            assert bytes(view) == raw_bytes(t)
            del view


def test_file_written_by_us_loads_in_official_load_file_bit_identically(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = sample_tensors()
    path = tmp_path / "ours.safetensors"
    metadata = {"format": "pt", "mfgit.note": "ünïcode ✓", "empty": ""}
    with open(path, "wb") as f:
        n = write(
            f,
            ((k, TORCH_DTYPES[t.dtype], tuple(t.shape), raw_bytes(t)) for k, t in tensors.items()),
            metadata=metadata,
        )
    assert n == path.stat().st_size
    loaded = load_file(str(path))
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape
        assert torch.equal(loaded[name].reshape(-1).view(torch.uint8), t.contiguous().reshape(-1).view(torch.uint8))
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == metadata
    assert_tiles(read_header(path))


def test_written_file_is_canonical():
    tensors = [("b", "F32", (2,), b"\1" * 8), ("a", "U8", (3,), b"\2" * 3), ("c", "BOOL", (), b"\1")]
    buf = io.BytesIO()
    n = write(buf, tensors, metadata={"z": "1", "a": "2"})
    blob = buf.getvalue()
    assert n == len(blob)
    hlen = struct.unpack("<Q", blob[:8])[0]
    assert hlen % 8 == 0
    text = blob[8 : 8 + hlen].decode()
    stripped = text.rstrip(" ")
    assert len(text) - len(stripped) < 8
    doc = json.loads(stripped)
    assert list(doc) == sorted(doc) and "__metadata__" in doc
    assert stripped == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    header = parse(blob)
    assert [(t.name, t.start, t.end) for t in header.tensors.values()] == [("a", 0, 3), ("b", 3, 11), ("c", 11, 12)]
    assert blob[header.data_offset :] == b"\2" * 3 + b"\1" * 8 + b"\1"
    # input order does not matter
    again = io.BytesIO()
    write(again, list(reversed(tensors)), metadata={"a": "2", "z": "1"})
    assert again.getvalue() == blob


def test_write_of_empty_file_is_valid():
    buf = io.BytesIO()
    write(buf, [])
    header = parse(buf.getvalue())
    assert header.tensors == {} and header.file_size == len(buf.getvalue()) == 16


def test_write_accepts_memoryviews_of_any_format():
    import array

    floats = array.array("f", [1.0, 2.0, 3.0])
    buf = io.BytesIO()
    write(buf, [("x", "F32", (3,), memoryview(floats))])
    with pytest.raises(SafetensorsError):
        parse(buf.getvalue()[:-1])
    header = parse(buf.getvalue())
    assert buf.getvalue()[header.data_offset :] == floats.tobytes()


@pytest.mark.parametrize(
    "tensors,metadata,rule",
    [
        ([("a", "F32", (2,), b"\0" * 4)], None, "size-mismatch"),
        ([("a", "F33", (1,), b"\0" * 4)], None, "unknown-dtype"),
        ([("a", "F32", (-1,), b"")], None, "bad-shape"),
        ([("a", "U8", (1,), b"\0"), ("a", "U8", (1,), b"\0")], None, "bad-entry"),
        ([("__metadata__", "U8", (1,), b"\0")], None, "bad-entry"),
        ([], {"k": 1}, "bad-metadata"),
    ],
)
def test_write_validates_its_input(tensors, metadata, rule):
    with pytest.raises(SafetensorsError) as info:
        write(io.BytesIO(), tensors, metadata=metadata)
    assert info.value.rule == rule


def test_reader_views_survive_close_and_reader_rejects_use_after_close(tmp_path):
    path = tmp_path / "x.safetensors"
    with open(path, "wb") as f:
        write(f, [("x", "U8", (4,), b"abcd")])
    reader = SafetensorsReader(path)
    view = reader.tensor_bytes("x")
    reader.close()  # must not raise although a view is still held
    assert bytes(view) == b"abcd"
    del view
    with pytest.raises(ValueError):
        reader.tensor_bytes("x")
    with pytest.raises(KeyError):
        SafetensorsReader(path).tensor_bytes("missing")


# --- fuzzing ----------------------------------------------------------------

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)


def check_any_bytes(blob: bytes) -> None:
    """The property: a tiling header or SafetensorsError, nothing else."""
    try:
        header = parse_header(blob, len(blob), "fuzz")
    except SafetensorsError as err:
        assert err.rule in stf.RULES
        return
    assert_tiles(header)


small_dims = st.lists(st.integers(0, 4), max_size=3)


@st.composite
def valid_files(draw) -> bytes:
    names = draw(st.lists(st.text(min_size=0, max_size=6), max_size=4, unique=True))
    tensors = []
    for name in names:
        if name == "__metadata__":
            continue
        dtype = draw(st.sampled_from(sorted(DTYPE_SIZES)))
        shape = tuple(draw(small_dims))
        count = 1
        for d in shape:
            count *= d
        tensors.append((name, dtype, shape, draw(st.binary(min_size=count * DTYPE_SIZES[dtype], max_size=count * DTYPE_SIZES[dtype]))))
    metadata = draw(st.none() | st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2))
    buf = io.BytesIO()
    write(buf, tensors, metadata)
    return buf.getvalue()


def mutate(draw, blob: bytearray) -> bytearray:
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "append", "delete", "insert"]))
        if kind == "flip" and blob:
            i = draw(st.integers(0, len(blob) - 1))
            blob[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and blob:
            i = draw(st.integers(0, len(blob) - 1))
            blob[i] = draw(st.sampled_from(b'{}[]",:0123456789 -.eE\\\x00\xff'))
        elif kind == "truncate":
            del blob[draw(st.integers(0, len(blob))) :]
        elif kind == "append":
            blob += draw(st.binary(max_size=16))
        elif kind == "delete" and blob:
            i = draw(st.integers(0, len(blob) - 1))
            del blob[i : i + draw(st.integers(1, 4))]
        elif kind == "insert":
            i = draw(st.integers(0, len(blob)))
            blob[i:i] = draw(st.binary(min_size=1, max_size=4))
    return blob


@st.composite
def mutated_files(draw) -> bytes:
    blob = bytearray(draw(valid_files()))
    if draw(st.booleans()):
        return bytes(mutate(draw, blob))
    # Mutate the header JSON and/or the data, keeping the length prefix
    # consistent so that the mutation reaches the JSON and tiling checks.
    n = struct.unpack("<Q", blob[:8])[0]
    header, data = blob[8 : 8 + n], blob[8 + n :]
    if draw(st.booleans()):
        header = mutate(draw, header)
    if draw(st.booleans()):
        data = mutate(draw, data)
    return struct.pack("<Q", len(header)) + bytes(header) + bytes(data)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
any_json = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
near_entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(sorted(DTYPE_SIZES)) | any_json,
        "shape": st.lists(st.integers(-1, 5) | st.booleans(), max_size=3) | any_json,
        "data_offsets": st.lists(st.integers(-1, 40), min_size=2, max_size=2) | any_json,
    },
    optional={"extra": any_json},
)
header_docs = st.dictionaries(
    st.sampled_from(["a", "b", "c", "__metadata__"]) | st.text(max_size=4),
    near_entries | st.dictionaries(st.text(max_size=3), st.text(max_size=3) | any_json, max_size=2) | any_json,
    max_size=4,
) | any_json


@st.composite
def near_valid_docs(draw) -> tuple[dict, int]:
    """A tiling header with at most a couple of small perturbations."""
    doc: dict = {}
    pos = 0
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(sorted(DTYPE_SIZES)))
        shape = draw(small_dims)
        count = 1
        for d in shape:
            count *= d
        nbytes = count * DTYPE_SIZES[dtype]
        doc[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    data_size = pos
    for _ in range(draw(st.integers(0, 2))):
        if doc and draw(st.booleans()):
            e = doc[draw(st.sampled_from(sorted(doc)))]
            field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "start", "end"]))
            if field in ("start", "end"):
                offsets = e["data_offsets"]
                if isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets):
                    offsets[field == "end"] += draw(st.integers(-8, 8))  # (an earlier draw may have replaced them)
            else:
                e[field] = draw(any_json) if draw(st.booleans()) else e[field]
        else:
            data_size = max(0, data_size + draw(st.integers(-8, 8)))
    if draw(st.booleans()):
        doc["__metadata__"] = draw(st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2) | any_json)
    return doc, data_size


@st.composite
def random_header_files(draw) -> bytes:
    if draw(st.booleans()):
        doc, data_size = draw(near_valid_docs())
        header = json.dumps(doc).encode() + b" " * draw(st.integers(0, 8))
        return struct.pack("<Q", len(header)) + header + bytes(data_size)
    doc = draw(header_docs)
    header = json.dumps(doc, separators=draw(st.sampled_from([(",", ":"), (", ", ": ")]))).encode()
    header += b" " * draw(st.integers(0, 8))
    length = len(header) if draw(st.booleans()) else draw(st.integers(0, 2**64 - 1))
    return struct.pack("<Q", length) + header + draw(st.binary(max_size=48))


@FUZZ
@given(valid_files())
def test_files_we_write_always_parse_and_tile(blob):
    header = parse_header(blob, len(blob))
    assert_tiles(header)


@FUZZ
@given(mutated_files())
def test_mutated_files_parse_to_a_tiling_header_or_raise_safetensors_error(blob):
    check_any_bytes(blob)


@FUZZ
@given(random_header_files())
def test_random_header_json_parses_to_a_tiling_header_or_raises_safetensors_error(blob):
    check_any_bytes(blob)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.binary(max_size=64))
def test_random_bytes_parse_to_a_tiling_header_or_raise_safetensors_error(blob):
    check_any_bytes(blob)
