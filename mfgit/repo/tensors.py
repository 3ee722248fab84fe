"""torch tensors ↔ stored tensor objects: the one conversion, through the one dtype table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mfgit.errors import InvalidAdapter
from mfgit.formats import dtypes
from mfgit.objects.model import TensorHeader, object_id, tensor_id
from mfgit.store.frame import tensor_payload_parts

if TYPE_CHECKING:
    from mfgit.store import ObjectStore


def torch_from_bytes(header: TensorHeader, raw: memoryview):
    """A torch tensor over a writable copy of `raw` (objects stay immutable)."""
    import torch

    dtype = dtypes.torch_dtype(header.dtype)
    buf = bytearray(raw)  # owned by the tensor
    if len(buf) == 0:
        return torch.empty(header.shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(header.shape)


def torch_to_bytes(t: Any) -> tuple[TensorHeader, memoryview]:
    """The header and raw little-endian bytes of a torch tensor (moved to the CPU, contiguous)."""
    import torch

    t = t.detach().to("cpu").contiguous()
    name = dtypes.name_of_torch(t.dtype)
    if name is None:
        raise InvalidAdapter("tensor", f"dtype {t.dtype} cannot be stored")
    raw = memoryview(t.view(torch.uint8).numpy().reshape(-1)) if t.numel() else memoryview(b"")
    return TensorHeader(name, tuple(t.shape)), raw


def put_torch_tensors(store: "ObjectStore", tensors: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Store torch tensors (as one batch); return the manifest entries {name: {id, dtype, shape}}, sorted."""
    entries: dict[str, dict[str, Any]] = {}
    with store.batch():
        for name, t in sorted(tensors.items()):
            th, raw = torch_to_bytes(t)
            tid = tensor_id(th, raw)
            store.put_tensor(th, raw, tid)
            entries[name] = {"id": tid, "dtype": th.dtype, "shape": list(th.shape)}
    return entries


def tensor_id_of(t: Any) -> str:
    """The id a torch tensor would have as a stored tensor object."""
    th, raw = torch_to_bytes(t)
    return tensor_id(th, raw)


# -- raw tensors of a safetensors file (an adapter's weights, a tensor attachment) ----------------

_JOIN_BELOW = 1 << 16


def payload_heads(infos) -> dict[tuple[str, tuple[int, ...]], tuple[TensorHeader, bytes]]:
    """(dtype, shape) → (header, its payload header bytes), once per shape.

    The tensors of a file share a few shapes: each header is encoded once,
    not once per tensor (for 200,000 small tensors the JSON encoding cost
    more than their bytes). `infos` are safetensors TensorInfo records."""
    heads: dict[tuple[str, tuple[int, ...]], tuple[TensorHeader, bytes]] = {}
    for info in infos:
        key = (info.dtype, tuple(info.shape))
        if key not in heads:
            th = TensorHeader(info.dtype, key[1])
            heads[key] = (th, tensor_payload_parts(th))
    return heads


def raw_tensor_id(th: TensorHeader, head: bytes, raw: bytes | memoryview) -> str:
    """The id of a tensor object: a small tensor is hashed from a joined copy (cheaper
    than encoding its header again), a large one in place."""
    return object_id("tensor", head + raw) if len(raw) <= _JOIN_BELOW else tensor_id(th, raw)
