"""The on-disk format is stable: the same adapter always gets the same ids and bytes.

Everything here is built from fixed bytes (no RNG, no clock, no tool
versions), committed through the real API, and compared with ids written down
when the format was defined. A change to any id means that repositories
written by an earlier mfgit would no longer be read the same way: such a
change needs a new format version (docs/design.md, "Config and format
version"), never a silent edit of these constants.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import xxhash

from mfgit.objects import Commit, Tag, TensorHeader, object_id, tensor_id

# A fixed two-module LoRA adapter: (name, dtype, shape) and values i/64 - 1 in F32.
_TENSORS = [
    ("base_model.model.layers.0.q_proj.lora_A.weight", (4, 8)),
    ("base_model.model.layers.0.q_proj.lora_B.weight", (6, 4)),
    ("base_model.model.layers.0.v_proj.lora_A.weight", (4, 8)),
    ("base_model.model.layers.0.v_proj.lora_B.weight", (6, 4)),
]
_CONFIG = {
    "base_model_name_or_path": "fixed-base",
    "lora_alpha": 8,
    "peft_type": "LORA",
    "r": 4,
    "revision": None,
    "target_modules": ["v_proj", "q_proj"],
    "task_type": "CAUSAL_LM",
}

PINNED_TENSOR_IDS = {
    "base_model.model.layers.0.q_proj.lora_A.weight": "5a12dd1b2f98a00e71ce0b9ddd960f2c7d342dc493bf910b678d9d0fdf82ab25",
    "base_model.model.layers.0.q_proj.lora_B.weight": "1f787ff732c20bf912f7fe3fc2614829e2586c54af715305e52e8bf9826cbafd",
    "base_model.model.layers.0.v_proj.lora_A.weight": "32f57d48e80c39861dbba775f58069ec312676e21dad6c9b4b2563ba23d1c7b6",
    "base_model.model.layers.0.v_proj.lora_B.weight": "cdb5d57fe840fae7c7b57e59f1171e5bf197f462581f5b1dc0d47344c29b2821",
}
PINNED_ADAPTER_ID = "7944b9453aff8f26bd90d3a2f78f238fb6311272031dc3be603e20e8e50591ef"
PINNED_COMMIT_ID = "0c0d365478c424be2b41db98dc41c46dba4c6e029b98e6c108b20cfa23f38a50"
PINNED_TAG_ID = "fcda4f98ec3b340acf257a47d17a80c32226d568cdac29985622dda2cfe5b51a"
PINNED_CHECKOUT_SHA256 = "7dcb8296dd33e93db5955640abcd2b723acaecd9d041c9ee7cef4f6dcb84da7e"


def _values(i0: int, n: int) -> bytes:
    return b"".join(struct.pack("<f", (i0 + i) / 64.0 - 1.0) for i in range(n))


def _write_fixed_adapter(d: Path) -> Path:
    """adapter_config.json and adapter_model.safetensors, byte for byte the same on every run."""
    d.mkdir(parents=True)
    header, data, offset = {}, b"", 0
    for k, (name, shape) in enumerate(_TENSORS):
        n = shape[0] * shape[1]
        chunk = _values(k * 7, n)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(chunk)]}
        data += chunk
        offset += len(chunk)
    header["__metadata__"] = {"format": "pt"}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    (d / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + data)
    (d / "adapter_config.json").write_text(json.dumps(_CONFIG, indent=2))
    return d


def _fixed_commit(adapter: str) -> Commit:
    return Commit(adapter=adapter, parents=(), author={"name": "Ada", "email": "ada@example.org"},
                  site="hospital-a", timestamp="2026-01-02T03:04:05.000006Z", message="fixed\n",
                  provenance={"kind": "import", "meta": {"samples": 12, "ratio": 0.25}})


@pytest.fixture
def committed(tmp_path: Path, mfgit_env):
    from mfgit.api.repository import Repository

    repo = Repository.init(tmp_path / "repo")
    src = _write_fixed_adapter(tmp_path / "adapter")
    info = repo.commit(src, "fixed", timestamp="2026-01-02T03:04:05.000006Z")
    return repo, info


def test_tensor_ids_are_sha256_of_kind_header_and_bytes():
    for k, (name, shape) in enumerate(_TENSORS):
        raw = _values(k * 7, shape[0] * shape[1])
        header = TensorHeader("F32", shape)
        expected = hashlib.sha256(b"tensor " + json.dumps({"dtype": "F32", "shape": list(shape)},
                                                           separators=(",", ":")).encode() + b"\n" + raw).hexdigest()
        assert tensor_id(header, raw) == expected == object_id("tensor", header.encode() + b"\n" + raw)
        assert tensor_id(header, raw) == PINNED_TENSOR_IDS[name], name


def test_committed_fixed_adapter_keeps_its_pinned_ids(committed):
    repo, info = committed
    adapter = repo.read_adapter(info.commit.adapter)
    assert {n: t["id"] for n, t in adapter.tensors.items()} == PINNED_TENSOR_IDS
    assert info.commit.adapter == PINNED_ADAPTER_ID


def test_a_fixed_commit_and_tag_keep_their_pinned_ids():
    c = _fixed_commit(PINNED_ADAPTER_ID)
    assert c.encode().startswith(b'{"adapter":"')
    assert c.id == PINNED_COMMIT_ID
    t = Tag(name="v1", target=c.id, tagger={"name": "Ada", "email": "ada@example.org"},
            timestamp="2026-01-02T03:04:05.000006Z", message="release")
    assert t.id == PINNED_TAG_ID


def test_checkout_of_the_fixed_adapter_is_byte_identical(committed, tmp_path: Path):
    repo, info = committed
    out = repo.checkout(info.id, tmp_path / "out")
    weights = (out / "adapter_model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == PINNED_CHECKOUT_SHA256


def test_stored_object_files_keep_their_header_layout(committed):
    repo, info = committed
    data = repo.store.read_stored(info.id)
    magic, version, kind, _codec, reserved = struct.unpack_from("<4sBBBB", data)
    assert (magic, version, kind, reserved) == (b"MFGO", 2, 4, 0)
    stored_len, raw_len = struct.unpack_from("<QQ", data, 24)
    assert len(data) == 40 + stored_len and raw_len == len(info.commit.encode())


def test_stored_object_files_digest_their_id_header_and_payload(committed):
    # Store version 2: the XXH3-128 covers the 32 raw bytes of the id, then
    # the header without the digest field, then the stored payload -- so a
    # valid file of one object stored under another's name fails every read.
    repo, info = committed
    for oid in repo.store.iter_ids():
        data = repo.store.read_stored(oid)
        expected = xxhash.xxh3_128(bytes.fromhex(oid) + data[:8] + data[24:40] + data[40:]).digest()
        assert data[8:24] == expected, oid


def _as_version_1(data: bytes) -> bytes:
    """The object file as the previous format wrote it: version byte 1, digest without the id."""
    header = bytearray(data[:40])
    header[4] = 1
    header[8:24] = xxhash.xxh3_128(bytes(header[:8]) + bytes(header[24:40]) + data[40:]).digest()
    return bytes(header) + data[40:]


def test_a_version_1_repository_is_read_and_upgraded_by_its_first_write(committed, tmp_path: Path):
    from mfgit.api.repository import Repository

    repo, info = committed
    gitdir = repo.gitdir
    # Rewrite the repository as the previous format left it: every object
    # file version 1, and formatversion = 1.
    for oid in list(repo.store.iter_ids()):
        path = gitdir / "objects" / oid[:2] / oid[2:]
        old = _as_version_1(path.read_bytes())
        path.chmod(0o644)
        path.write_bytes(old)
        path.chmod(0o444)
    cfg = gitdir / "config"
    cfg.write_text(cfg.read_text().replace("formatversion = 2", "formatversion = 1"))
    repo.store.close()

    old = Repository.open(gitdir.parent)
    assert old.head() == info.id
    adapter = old.read_adapter(old.read_commit(info.id).adapter)
    assert {n: t["id"] for n, t in adapter.tensors.items()} == PINNED_TENSOR_IDS
    out = old.checkout(info.id, tmp_path / "out-v1")
    assert hashlib.sha256((out / "adapter_model.safetensors").read_bytes()).hexdigest() == PINNED_CHECKOUT_SHA256
    for read_data in (False, True):
        report = old.fsck(read_data=read_data)
        assert report["ok"] and report["corrupt"] == [], report
    # Reading changes nothing: an older mfgit can still open it.
    assert "formatversion = 1" in cfg.read_text()
    # A version-1 file of another object under this name: caught even
    # without --read-data (its digest does not name an id, so the SHA-256 is checked).
    a_id, b_id = PINNED_TENSOR_IDS["base_model.model.layers.0.q_proj.lora_A.weight"], \
        PINNED_TENSOR_IDS["base_model.model.layers.0.v_proj.lora_A.weight"]
    a_path, b_path = (gitdir / "objects" / o[:2] / o[2:] for o in (a_id, b_id))
    good = a_path.read_bytes()
    a_path.chmod(0o644)
    a_path.write_bytes(b_path.read_bytes())
    report = old.fsck()
    assert not report["ok"] and [c["id"] for c in report["corrupt"]] == [a_id]
    a_path.write_bytes(good)

    # The first write upgrades it: the config says 2 before a version-2 file exists.
    src = _write_fixed_adapter(tmp_path / "again")
    again = old.commit(src, "again", allow_empty=True, timestamp="2026-01-02T03:04:06.000006Z")
    assert "formatversion = 2" in cfg.read_text()
    assert old.store.read_stored(again.id)[4] == 2
    assert old.store.read_stored(info.id)[4] == 1  # old files stay as they were, readable
    report = Repository.open(gitdir.parent).fsck(read_data=True)
    assert report["ok"], report


# --- mixture: an output-space composite (docs/design.md, "Mixture") ---

PINNED_MIXTURE_COMMIT_ID = "17c9bcebb7ab020ed30318a319944acbd05fc3b94f9606387ed7242964834a63"


def test_a_fixed_mixture_commit_keeps_its_pinned_id():
    a, b = "a" * 64, "b" * 64
    c = Commit(adapter="c" * 64, parents=(a, b), author={"name": "Ada", "email": "ada@example.org"},
               site=None, timestamp="2026-01-02T03:04:05.000006Z", message="mixture\n",
               provenance={"kind": "mixture"},
               mixture={"combine": "softmax", "members": [{"commit": a, "weight": 0.75}, {"commit": b, "weight": 0.25}]})
    assert c.encode().endswith(b'"mixture":{"combine":"softmax","members":[{"commit":"' + a.encode()
                               + b'","weight":0.75},{"commit":"' + b.encode() + b'","weight":0.25}]},'
                               b'"parents":["' + a.encode() + b'","' + b.encode() + b'"],"provenance":{"kind":"mixture"},'
                               b'"site":null,"timestamp":"2026-01-02T03:04:05.000006Z"}')
    assert c.id == PINNED_MIXTURE_COMMIT_ID
