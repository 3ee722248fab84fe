"""Tensor attachments: a public attachment that is a safetensors file, stored as
its tensors.

Its header (the 8-byte length and the JSON, padding included) is one blob and
each tensor one tensor object, hashed, compressed and stored exactly as an
adapter's tensors are (mfgit.repo.tensors). A distilled set committed again
with one tensor changed so stores one tensor object, not the whole file again.
The commit's entry names the parts in place of a blob id:
``{"header": blob id, "tensors": {tensor name: tensor id}}`` beside its
``name``, ``size``, ``digest`` and ``private`` (docs/design.md, "Attachments").

A well-formed safetensors file is its header followed by the tensors' bytes
in the order of their offsets, with no gap, overlap or trailing byte
(parse_header refuses any), so the parts give back the exact original bytes;
these are checked against the recorded size and SHA-256 digest before anyone
sees them. Any other file (not safetensors, malformed, truncated, without a
tensor, or the model card README.md) stays one blob.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from mfgit.errors import CorruptAttachment, MalformedObject, WrongObjectType
from mfgit.formats import safetensors as st
from mfgit.formats.hubcard import CARD_NAME
from mfgit.formats.peft import tensor_name_problem
from mfgit.objects.model import TensorHeader, attachment_object_ids, decode_tensor, object_id
from mfgit.repo.tensors import payload_heads, raw_tensor_id

if TYPE_CHECKING:
    from mfgit.store import ObjectStore

# fetch(object id, kind) → the object's payload, or None when the caller has
# dealt with its absence already (verify and fsck report it as missing).
Fetch = Callable[[str, str], "bytes | memoryview | None"]


@dataclass(frozen=True)
class Part:
    name: str
    header: TensorHeader
    head: bytes  # the payload header of the tensor object
    raw: memoryview
    id: str


@dataclass(frozen=True)
class Split:
    """A safetensors file cut into the objects that store it."""

    header: bytes
    header_id: str
    tensors: tuple[Part, ...]

    def fields(self) -> dict[str, Any]:
        """What the commit's entry holds in place of ``id``."""
        return {"header": self.header_id, "tensors": {p.name: p.id for p in self.tensors}}


def split(name: str, data: bytes) -> Split | None:
    """`data` as a header blob and tensor objects, or None when it stays one blob."""
    if name == CARD_NAME:
        return None  # the model card is read as text by export and status
    try:
        header = st.parse_header(data, len(data), name)
    except (st.SafetensorsError, ValueError):
        return None
    if not header.tensors or any(tensor_name_problem(n) for n in header.tensors):
        return None  # the entry's schema takes the names a manifest takes
    mv = memoryview(data)
    heads = payload_heads(header.tensors.values())
    parts = []
    base = header.data_offset
    for info in header.tensors.values():
        th, head = heads[(info.dtype, tuple(info.shape))]
        raw = mv[base + info.start: base + info.end]
        parts.append(Part(info.name, th, head, raw, raw_tensor_id(th, head, raw)))
    head_bytes = bytes(mv[:base])
    return Split(head_bytes, object_id("blob", head_bytes), tuple(parts))


def store_split(store: "ObjectStore", s: Split) -> None:
    """Write the header blob and each tensor not stored already (one batch)."""
    with store.batch():
        store.put("blob", s.header, oid=s.header_id)
        for p in s.tensors:
            store.put_tensor(p.header, p.raw, p.id, head=p.head)


def is_split(entry: dict[str, Any]) -> bool:
    return "tensors" in entry


def record_key(entry: dict[str, Any]) -> str:
    """One key per distinct public record (digest, size and the objects it names): verify and fsck
    put each record together and check it once, however many commits carry it."""
    return ":".join([entry["digest"], str(entry["size"]), *attachment_object_ids(entry)])


def join(entry: dict[str, Any], fetch: Fetch, commit: str) -> bytes | None:
    """The bytes of a split entry, put together from its parts and checked against its
    size and digest: CorruptAttachment when they do not give those bytes back (parts that
    hash correctly but belong to another file, or an id naming an object of another kind),
    None when `fetch` lacks a part. `fetch` may raise WrongObjectType."""
    name, digest, size = entry["name"], entry["digest"], entry["size"]
    where = f"header blob {entry['header'][:12]} and {len(entry['tensors'])} tensor objects"

    def unfit(reason: str) -> CorruptAttachment:
        return CorruptAttachment(commit, name, digest, f"parts that do not fit together: {reason}", where)

    try:
        out = _join(entry, fetch, unfit)
    except WrongObjectType as e:  # an id of the entry names an object of another kind
        raise unfit(str(e)) from None
    if out is None:
        return None
    actual = hashlib.sha256(out).hexdigest()
    if actual != digest or len(out) != size:
        raise CorruptAttachment(commit, name, digest, f"{actual} ({len(out)} bytes)", where)
    return bytes(out)


def _join(entry: dict[str, Any], fetch: Fetch, unfit: Callable[[str], CorruptAttachment]) -> bytearray | None:
    """The header blob, then each tensor's bytes in the order of their offsets (unchecked against the digest)."""
    name, size = entry["name"], entry["size"]
    head = fetch(entry["header"], "blob")
    if head is None:
        return None
    head = bytes(head)
    try:
        header = st.parse_header(head, size, f"header of attachment {name}")
    except (st.SafetensorsError, ValueError) as e:
        raise unfit(f"the header blob is no safetensors header of a {size}-byte file ({e})") from None
    if len(head) != header.data_offset:
        raise unfit(f"the header blob holds {len(head)} bytes, its header {header.data_offset}")
    if set(header.tensors) != set(entry["tensors"]):
        raise unfit("the header names other tensors than the entry")
    out = bytearray(head)
    complete = True
    for info in header.tensors.values():  # in the order of their offsets
        tid = entry["tensors"][info.name]
        payload = fetch(tid, "tensor")
        if payload is None:
            complete = False
            continue
        try:
            th, raw = decode_tensor(tid, payload)
        except MalformedObject as e:
            raise unfit(str(e)) from None
        if (th.dtype, th.shape) != (info.dtype, tuple(info.shape)):
            raise unfit(f"tensor {info.name!r} is {th.dtype}{list(th.shape)}, "
                        f"the header says {info.dtype}{list(info.shape)}")
        out += raw
    return out if complete else None
