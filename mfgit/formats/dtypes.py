"""The one table of tensor element types: safetensors' names, sizes, torch and numpy types.

Stored tensors carry safetensors' dtype names (``F32``, ``BF16``, ...); every
conversion to torch or numpy, and every size computation, goes through this
table. torch and numpy are only named here (as strings), never imported, so
that reading the table costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class DType:
    name: str  # safetensors' name, as stored
    size: int  # bytes per element
    torch: str  # attribute of the torch module
    numpy: str | None  # numpy dtype string where numpy has the type (bfloat16 and fp8 it has not)
    floating: bool


_TABLE = [
    DType("F64", 8, "float64", "<f8", True),
    DType("F32", 4, "float32", "<f4", True),
    DType("F16", 2, "float16", "<f2", True),
    DType("BF16", 2, "bfloat16", None, True),
    DType("I64", 8, "int64", "<i8", False),
    DType("I32", 4, "int32", "<i4", False),
    DType("I16", 2, "int16", "<i2", False),
    DType("I8", 1, "int8", "i1", False),
    DType("U8", 1, "uint8", "u1", False),
    DType("U16", 2, "uint16", "<u2", False),
    DType("U32", 4, "uint32", "<u4", False),
    DType("U64", 8, "uint64", "<u8", False),
    DType("BOOL", 1, "bool", "?", False),
    DType("F8_E4M3", 1, "float8_e4m3fn", None, True),
    DType("F8_E5M2", 1, "float8_e5m2", None, True),
]

DTYPES: dict[str, DType] = {d.name: d for d in _TABLE}
DTYPE_SIZES: dict[str, int] = {d.name: d.size for d in _TABLE}
# What a merge may write: the float types torch computes in on every device.
MERGE_OUTPUT_DTYPES = ("F32", "F16", "BF16", "F64")


def element_count(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def nbytes(dtype: str, shape: Iterable[int]) -> int:
    """Bytes of a tensor of `dtype` and `shape` (KeyError for an unknown dtype)."""
    return DTYPE_SIZES[dtype] * element_count(shape)


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, DTYPES[name].torch)


def name_of_torch(dtype: Any) -> str | None:
    """The stored name of a torch dtype, or None when it has none here."""
    import torch

    for d in _TABLE:
        if getattr(torch, d.torch, None) == dtype:
            return d.name
    return None
