"""The object model: tensors, blobs, adapter manifests, commits, tags.

Every object has a kind and a decoded payload; its id is the SHA-256 of
``kind + b" " + payload``. For a tensor the payload is its canonical header
(dtype and shape), a newline, then the raw little-endian bytes; for a blob the
file bytes; for the others their canonical JSON. The kind is hashed so that
bytes of one kind can never be taken for another. How a store keeps the
payload (compressed or not) never changes the id.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from mfgit.errors import MalformedObject
from mfgit.formats.dtypes import DTYPE_SIZES, element_count
from mfgit.objects.canonical import CanonicalError, canonical_json, parse_canonical

KINDS = ("tensor", "blob", "adapter", "commit", "tag")
ADAPTER_FORMAT = 1
_ID_RE = re.compile(r"^[0-9a-f]{64}$")


def is_object_id(value: str) -> bool:
    return bool(_ID_RE.match(value))


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
        value = parse_canonical(data)
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
    """A tensor payload's header and raw bytes, checked: a known dtype, and exactly dtype × shape bytes."""
    try:
        header, raw = split_tensor_payload(payload)
    except Exception as e:  # noqa: BLE001 - whatever the header's fault, it is a malformed object
        raise MalformedObject(oid, f"bad tensor header: {e}") from None
    size = DTYPE_SIZES.get(header.dtype)
    if size is None:
        raise MalformedObject(oid, f"unknown dtype {header.dtype}")
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
        return canonical_json(self.to_dict())

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
        if with_signature and self.signature is not None:
            d["signature"] = self.signature
        return d

    def encode(self) -> bytes:
        return canonical_json(self.to_dict())

    def signing_payload(self) -> bytes:
        """The bytes a signature covers: the commit without its signature."""
        return canonical_json(self.to_dict(with_signature=False))

    @property
    def id(self) -> str:
        return object_id("commit", self.encode())

    @property
    def is_merge(self) -> bool:
        return self.provenance.get("kind") == "merge"

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
        return canonical_json(self.to_dict())

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


_REQUIRED = {
    "adapter": {"config", "base_model", "tensors", "modules"},
    "commit": {"adapter", "parents", "author", "timestamp", "message", "provenance"},
    "tag": {"name", "target", "tagger", "timestamp", "message"},
}


def decode_object(oid: str, kind: str, payload: bytes) -> Any:
    """Decode a structured object (adapter, commit, tag) or a blob."""
    if kind == "blob":
        return Blob(bytes(payload))
    if kind not in _REQUIRED:
        raise MalformedObject(oid, f"cannot decode a {kind} as a structured object")
    try:
        d = parse_canonical(bytes(payload))
    except CanonicalError as e:
        raise MalformedObject(oid, str(e)) from None
    if not isinstance(d, dict) or not _REQUIRED[kind] <= set(d):
        raise MalformedObject(oid, f"{kind} lacks fields {sorted(_REQUIRED[kind] - set(d or {}))}")
    if kind == "adapter":
        return Adapter.from_dict(d)
    if kind == "commit":
        return Commit.from_dict(d)
    return Tag.from_dict(d)
