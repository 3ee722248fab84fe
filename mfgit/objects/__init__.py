"""Pure data: objects, their canonical encoding and their ids. No I/O."""

from mfgit.objects.canonical import canonical_json, parse_canonical
from mfgit.objects.model import (
    KINDS,
    Adapter,
    Blob,
    Commit,
    Tag,
    TensorHeader,
    decode_note,
    decode_object,
    decode_tensor,
    object_id,
    tensor_id,
    is_object_id,
)

__all__ = [
    "KINDS",
    "Adapter",
    "Blob",
    "Commit",
    "Tag",
    "TensorHeader",
    "canonical_json",
    "parse_canonical",
    "decode_note",
    "decode_object",
    "decode_tensor",
    "object_id",
    "tensor_id",
    "is_object_id",
]
