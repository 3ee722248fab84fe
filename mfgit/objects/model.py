"""The object model: tensors, blobs, adapter manifests, commits, tags.

Every object has a kind and a decoded payload; its id is the SHA-256 of
``kind + b" " + payload``. For a tensor the payload is its canonical header
(dtype and shape), a newline, then the raw little-endian bytes; for a blob the
file bytes; for the others their canonical JSON. The kind is hashed so that
bytes of one kind can never be taken for another. How a store keeps the
payload (compressed or not) never changes the id.

Every structured object is read and written through the one schema
(`mfgit.objects.schema`): `decode_object` and `decode_tensor` raise only
MalformedObject, and ``encode`` raises InvalidObject rather than produce
bytes that would be refused when read.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from mfgit.errors import InvalidObject, MalformedObject
from mfgit.formats.dtypes import DTYPE_SIZES, element_count
from mfgit.objects import schema
from mfgit.objects.canonical import CanonicalError, canonical_json, parse_canonical
from mfgit.objects.schema import ADAPTER_FORMAT, SchemaError

KINDS = ("tensor", "blob", "adapter", "commit", "tag")
_ID_RE = re.compile(r"[0-9a-f]{64}")


def is_object_id(value: str) -> bool:
    # fullmatch: re.match with "$" would also take an id followed by a newline
    return isinstance(value, str) and bool(_ID_RE.fullmatch(value))


def _encode(kind: str, value: dict[str, Any]) -> bytes:
    """The canonical bytes of an object about to be written, checked against the schema
    (`mfgit.objects.schema`): mfgit never writes an object it would refuse to read."""
    try:
        data = canonical_json(value)
        schema.RULES[kind](value)
    except (CanonicalError, SchemaError) as e:
        raise InvalidObject(kind, str(e)) from None
    return data


def object_id(kind: str, payload: bytes | memoryview) -> str:
    h = hashlib.sha256(kind.encode("ascii") + b" ")
    h.update(payload)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorHeader:
    dtype: str
    shape: tuple[int, ...]

    def encode(self) -> bytes:
        return canonical_json({"dtype": self.dtype, "shape": list(self.shape)})

    @classmethod
    def decode(cls, data: bytes) -> "TensorHeader":
        """A header from its canonical bytes; CanonicalError or SchemaError if it is not one."""
        value = schema.tensor_header(parse_canonical(data))
        return cls(dtype=value["dtype"], shape=tuple(value["shape"]))


def tensor_id(header: TensorHeader, raw: bytes | memoryview) -> str:
    """Id of a tensor, hashing the raw bytes in place (no copy)."""
    h = hashlib.sha256(b"tensor ")
    h.update(header.encode())
    h.update(b"\n")
    h.update(raw)
    return h.hexdigest()


def split_tensor_payload(payload: bytes | memoryview) -> tuple[TensorHeader, memoryview]:
    mv = memoryview(payload)
    # The header is canonical JSON, which never holds a raw newline.
    head = bytes(mv[:4096])
    nl = head.find(b"\n")
    if nl < 0:
        raise CanonicalError("tensor payload has no header")
    return TensorHeader.decode(head[:nl]), mv[nl + 1 :]


def decode_tensor(oid: str, payload: bytes | memoryview) -> tuple[TensorHeader, memoryview]:
    """A tensor payload's header and raw bytes, checked: the header schema, and exactly dtype × shape bytes."""
    try:
        header, raw = split_tensor_payload(payload)
    except (CanonicalError, SchemaError) as e:
        raise MalformedObject(oid, f"bad tensor header: {e}") from None
    size = DTYPE_SIZES[header.dtype]
    n = element_count(header.shape)
    if n * size != len(raw):
        raise MalformedObject(oid, f"{header.dtype}{list(header.shape)} needs {n * size} bytes, object has {len(raw)}")
    return header, raw


@dataclass(frozen=True)
class Blob:
    data: bytes


@dataclass(frozen=True)
class Adapter:
    """A manifest: the PEFT config, the base model, and every tensor by id.

    ``tensors`` maps each saved tensor name (as in adapter_model.safetensors)
    to {"id", "dtype", "shape"}; ``modules`` maps each adapted module to the
    names of its lora_A / lora_B tensors and its rank.
    """

    config: dict[str, Any]
    base_model: dict[str, Any]
    tensors: dict[str, dict[str, Any]]
    modules: dict[str, dict[str, Any]]
    metadata: dict[str, str] | None = None
    files: dict[str, str] = field(default_factory=dict)
    format: int = ADAPTER_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "config": self.config,
            "base_model": self.base_model,
            "tensors": self.tensors,
            "modules": self.modules,
            "metadata": self.metadata,
            "files": self.files,
        }

    def encode(self) -> bytes:
        return _encode("adapter", self.to_dict())

    @property
    def id(self) -> str:
        return object_id("adapter", self.encode())

    def tensor_ids(self) -> list[str]:
        return [t["id"] for t in self.tensors.values()]

    def referenced_ids(self) -> list[str]:
        return self.tensor_ids() + list(self.files.values())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Adapter":
        return cls(
            config=d["config"],
            base_model=d["base_model"],
            tensors=d["tensors"],
            modules=d["modules"],
            metadata=d.get("metadata"),
            files=d.get("files", {}),
            format=d.get("format", ADAPTER_FORMAT),
        )


# --- attachments ---
def attachment_object_ids(entry: dict[str, Any]) -> list[str]:
    """The objects a public attachment entry names: its blob, or, for a safetensors file
    stored as its tensors, its header blob and each tensor (docs/design.md, "Attachments")."""
    if "tensors" in entry:
        return [entry["header"], *entry["tensors"].values()]
    return [entry["id"]]
# --- end attachments ---


@dataclass(frozen=True)
class Commit:
    adapter: str
    parents: tuple[str, ...]
    author: dict[str, str]
    site: str | None
    timestamp: str
    message: str
    provenance: dict[str, Any]
    signature: dict[str, Any] | None = None
    # --- attachments: entries {name, size, digest, private[, id | header, tensors]}, sorted by name ---
    attachments: tuple[dict[str, Any], ...] = ()
    # --- end attachments ---
    # --- mixture: an output-space composite (schema.mixture); absent on every other commit ---
    mixture: dict[str, Any] | None = None

    def to_dict(self, *, with_signature: bool = True) -> dict[str, Any]:
        d = {
            "adapter": self.adapter,
            "parents": list(self.parents),
            "author": self.author,
            "site": self.site,
            "timestamp": self.timestamp,
            "message": self.message,
            "provenance": self.provenance,
        }
        # --- attachments: only when there are some, so that every commit
        # without attachments keeps the bytes and id it always had ---
        if self.attachments:
            d["attachments"] = [dict(a) for a in self.attachments]
        # --- end attachments ---
        if with_signature and self.signature is not None:
            d["signature"] = self.signature
        # --- mixture: omitted when absent, so that every other commit keeps its bytes and id ---
        if self.mixture is not None:
            d["mixture"] = self.mixture
        return d

    def encode(self) -> bytes:
        return _encode("commit", self.to_dict())

    def signing_payload(self) -> bytes:
        """The bytes a signature covers: the commit without its signature."""
        return canonical_json(self.to_dict(with_signature=False))

    @property
    def id(self) -> str:
        return object_id("commit", self.encode())

    @property
    def is_merge(self) -> bool:
        return self.provenance.get("kind") == "merge"

    # --- attachments ---
    def attachment_ids(self) -> list[str]:
        """The objects of the public attachments (private ones have none): what
        reachability, push, fetch and gc carry for them."""
        return [oid for a in self.attachments if not a["private"] for oid in attachment_object_ids(a)]
    # --- end attachments ---
    # --- mixture ---
    @property
    def is_mixture(self) -> bool:
        return self.mixture is not None

    def mixture_members(self) -> list[tuple[str, float]]:
        """(member commit, weight) in order; empty for a commit that is not a mixture."""
        return [(m["commit"], m["weight"]) for m in (self.mixture or {}).get("members", [])]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Commit":
        return cls(
            adapter=d["adapter"],
            parents=tuple(d["parents"]),
            author=d["author"],
            site=d.get("site"),
            timestamp=d["timestamp"],
            message=d["message"],
            provenance=d["provenance"],
            signature=d.get("signature"),
            # --- attachments ---
            attachments=tuple(d.get("attachments", ())),
            # --- end attachments ---
            mixture=d.get("mixture"),  # --- mixture ---
        )


@dataclass(frozen=True)
class Tag:
    name: str
    target: str
    tagger: dict[str, str]
    timestamp: str
    message: str
    signature: dict[str, Any] | None = None

    def to_dict(self, *, with_signature: bool = True) -> dict[str, Any]:
        d = {
            "name": self.name,
            "target": self.target,
            "tagger": self.tagger,
            "timestamp": self.timestamp,
            "message": self.message,
        }
        if with_signature and self.signature is not None:
            d["signature"] = self.signature
        return d

    def encode(self) -> bytes:
        return _encode("tag", self.to_dict())

    def signing_payload(self) -> bytes:
        return canonical_json(self.to_dict(with_signature=False))

    @property
    def id(self) -> str:
        return object_id("tag", self.encode())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Tag":
        return cls(
            name=d["name"],
            target=d["target"],
            tagger=d["tagger"],
            timestamp=d["timestamp"],
            message=d["message"],
            signature=d.get("signature"),
        )


_CLASSES: dict[str, Any] = {"adapter": Adapter, "commit": Commit, "tag": Tag}


def decode_object(oid: str, kind: str, payload: bytes | memoryview) -> Any:
    """Decode a structured object (adapter, commit, tag) or a blob.

    Every structured object goes through the schema (`mfgit.objects.schema`)
    and must re-encode to exactly its bytes; anything else raises
    MalformedObject(oid, reason), and nothing else is raised.
    """
    if kind == "blob":
        return Blob(bytes(payload))
    cls = _CLASSES.get(kind)
    if cls is None:
        raise MalformedObject(oid, f"cannot decode a {kind} as a structured object")
    data = bytes(payload)
    try:
        value = schema.RULES[kind](parse_canonical(data))
    except (CanonicalError, SchemaError) as e:
        raise MalformedObject(oid, f"{kind} {e}") from None
    obj = cls.from_dict(value)
    # parse_canonical checked the bytes are the encoding of `value`; the
    # object must give back `value` itself (no field dropped, none added).
    if obj.to_dict() != value:
        raise MalformedObject(oid, f"{kind} does not re-encode to its own bytes")
    return obj


def decode_note(oid: str, payload: bytes | memoryview) -> dict[str, Any]:
    """A note blob (format mfgit-note/1) as a dict, checked by the schema; MalformedObject otherwise."""
    try:
        return schema.note(parse_canonical(bytes(payload)))
    except (CanonicalError, SchemaError) as e:
        raise MalformedObject(oid, f"note {e}") from None

