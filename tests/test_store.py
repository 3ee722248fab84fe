"""The object store contract, run against every store (MemoryStore, DiskStore).

Ids are content addresses; every read is checked against the stored digest
(invariant 2); float tensors round-trip bit-exactly through the byte-plane
codec and compress; DiskStore writes are atomic and objects read-only
(invariant 1).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xxhash

from mfgit.errors import CorruptObject, MalformedObject, ObjectNotFound, RepositoryBusy
from mfgit.objects import Adapter, Commit, Tag, TensorHeader, object_id, tensor_id
from mfgit.objects.model import split_tensor_payload
from mfgit.store import DiskStore, MemoryStore
from mfgit.store import fileio
from mfgit.store.frame import HEADER_SIZE, check_frame, encode_stored

# --- fixtures and helpers -----------------------------------------------------------


@pytest.fixture(params=["memory", "disk"])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryStore()
    return DiskStore(tmp_path / "objects")


def stored_bytes(store, oid: str) -> bytes:
    return store.read_stored(oid)


def replace_stored(store, oid: str, data: bytes) -> None:
    """Overwrite an object's stored bytes behind the store's back (damage)."""
    if isinstance(store, MemoryStore):
        store._objects[oid] = bytes(data)
    else:
        p = store.root / oid[:2] / oid[2:]
        os.chmod(p, 0o644)
        p.write_bytes(data)


def tensor_payload(header: TensorHeader, raw: bytes) -> bytes:
    return header.encode() + b"\n" + raw


def put_tensor(store, dtype: str, shape: tuple[int, ...], raw: bytes) -> tuple[str, bytes]:
    header = TensorHeader(dtype, shape)
    oid = tensor_id(header, raw)
    store.put_tensor(header, raw, oid)
    return oid, tensor_payload(header, raw)


def put_any(store, kind: str, payload: bytes) -> str:
    """Store a payload of any kind the way mfgit does (tensors through put_tensor)."""
    if kind == "tensor":
        header, raw = split_tensor_payload(payload)
        oid = tensor_id(header, raw)
        store.put_tensor(header, raw, oid)
        return oid
    return store.put(kind, payload)


def gaussian(dtype: torch.dtype, n: int, seed: int = 0, std: float = 0.02) -> bytes:
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(n, generator=g, dtype=torch.float64) * std).to(dtype)
    return t.view(torch.uint8).numpy().tobytes()


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes()


def sample_objects() -> dict[str, bytes]:
    """One payload of every kind (structured ones in their canonical encoding)."""
    adapter = Adapter(
        config={"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]},
        base_model={"name": "tiny", "revision": None},
        tensors={"m.lora_A.weight": {"id": "a" * 64, "dtype": "F32", "shape": [8, 64]},
                 "m.lora_B.weight": {"id": "b" * 64, "dtype": "F32", "shape": [64, 8]}},
        modules={"m": {"kind": "linear", "lora_A": "m.lora_A.weight", "lora_B": "m.lora_B.weight", "r": 8}},
        metadata={"format": "pt"},
        files={"README.md": "c" * 64},
    )
    commit = Commit(adapter=adapter.id, parents=("d" * 64,), author={"name": "A", "email": "a@x"},
                    site="hospital-a", timestamp="2024-01-01T00:00:00.000000Z", message="m" * 600,
                    provenance={"kind": "import", "meta": {"samples": 1200, "lr": 1e-4}})
    tag = Tag(name="v1", target=commit.id, tagger={"name": "A", "email": "a@x"},
              timestamp="2024-01-01T00:00:00.000000Z", message="release")
    th = TensorHeader("BF16", (256, 8))
    return {
        "tensor": tensor_payload(th, gaussian(torch.bfloat16, 256 * 8)),
        "blob": b"# model card\n" * 100 + random_bytes(300),
        "adapter": adapter.encode(),
        "commit": commit.encode(),
        "tag": tag.encode(),
    }


# --- round trips and addressing -------------------------------------------------------


@pytest.mark.parametrize("kind", ["tensor", "blob", "adapter", "commit", "tag"])
def test_put_get_round_trip_for_every_kind(store, kind):
    payload = sample_objects()[kind]
    oid = put_any(store, kind, payload)
    assert oid == object_id(kind, payload)
    assert store.has(oid)
    assert store.get(oid) == (kind, payload)
    assert store.get(oid, verify=True) == (kind, payload)
    assert list(store.iter_ids()) == [oid]


@pytest.mark.parametrize("payload", [b"", b"x", b"abc" * 1000, random_bytes(5000)], ids=["empty", "one", "repetitive", "random"])
def test_blob_round_trip_of_any_size_and_entropy(store, payload):
    oid = store.put("blob", payload)
    assert store.get(oid, verify=True) == ("blob", payload)


def test_id_is_the_content_address_and_same_payload_is_stored_once(store, tmp_path):
    payload = sample_objects()["commit"]
    a = store.put("commit", payload)
    b = store.put("commit", payload)
    assert a == b == object_id("commit", payload)
    assert list(store.iter_ids()) == [a]
    # The kind is part of the address: the same bytes as a blob are another object.
    c = store.put("blob", payload)
    assert c != a
    assert sorted(store.iter_ids()) == sorted([a, c])
    # A tensor stored twice (even through put_tensor) is one object.
    t1, _ = put_tensor(store, "F32", (4,), gaussian(torch.float32, 4))
    assert store.put_tensor(TensorHeader("F32", (4,)), gaussian(torch.float32, 4), t1) is False
    assert len(list(store.iter_ids())) == 3
    if isinstance(store, DiskStore):
        files = [p for p in store.root.rglob("*") if p.is_file()]
        assert len(files) == 3


def test_missing_object_raises_object_not_found(store):
    oid = object_id("blob", b"never stored")
    assert not store.has(oid)
    with pytest.raises(ObjectNotFound) as info:
        store.get(oid)
    assert info.value.oid == oid
    store.put("blob", b"never stored")
    store.delete(oid)
    assert not store.has(oid)
    with pytest.raises(ObjectNotFound):
        store.get(oid)


def test_the_stored_encoding_never_changes_the_id(store):
    # A compressible tensor (stored by byte planes) and an incompressible
    # one (stored raw) both have the id of their decoded payload.
    for raw in (gaussian(torch.float32, 4096), random_bytes(4096, seed=3)):
        oid, payload = put_tensor(store, "F32", (1024,), raw)
        assert oid == object_id("tensor", payload)
        assert store.get(oid, verify=True) == ("tensor", payload)


# --- tensors through the byte-plane codec -------------------------------------------

_TORCH = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
_WIDTH = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8, "BOOL": 1}


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F64"])
@pytest.mark.parametrize(
    "shape", [(0,), (), (1,), (3, 0, 2), (7, 13), (300,), (640, 512)], ids=lambda s: "x".join(map(str, s)) or "scalar"
)
def test_float_tensors_round_trip_bit_exactly(store, dtype, shape):
    n = int(np.prod(shape)) if shape else 1
    # Realistic weights, then every bit pattern (NaN payloads, -0.0, inf,
    # subnormals) as random bytes.
    for raw in (gaussian(_TORCH[dtype], n), random_bytes(n * _WIDTH[dtype], seed=n)):
        oid, payload = put_tensor(store, dtype, shape, raw)
        kind, got = store.get(oid, verify=True)
        assert kind == "tensor"
        assert got == payload  # bit-exact, header included
        header, back = split_tensor_payload(got)
        assert header == TensorHeader(dtype, shape)
        assert bytes(back) == raw


@pytest.mark.parametrize("dtype", ["I8", "U8", "I16", "I32", "I64", "BOOL"])
@pytest.mark.parametrize("shape", [(0,), (), (1000,)], ids=["empty", "scalar", "1000"])
def test_integer_tensors_round_trip_bit_exactly(store, dtype, shape):
    n = int(np.prod(shape)) if shape else 1
    raw = random_bytes(n * _WIDTH[dtype], seed=7)
    oid, payload = put_tensor(store, dtype, shape, raw)
    assert store.get(oid, verify=True) == ("tensor", payload)


def test_large_tensor_with_random_mantissas_round_trips(store):
    # Planes above the sampling threshold take the "screened as random" path.
    raw = gaussian(torch.float32, 400_000, seed=11)
    oid, payload = put_tensor(store, "F32", (400_000,), raw)
    assert store.get(oid, verify=True) == ("tensor", payload)


def test_tensors_stored_one_after_another_on_a_thread_do_not_share_bytes(store):
    # put_tensor reuses one plane buffer per thread: a big tensor, then a
    # small one, then a big one again must each keep exactly their own bytes.
    raws = [gaussian(torch.bfloat16, n, seed=n) for n in (300_000, 1_000, 300_000, 70_001)]
    stored = [put_tensor(store, "BF16", (len(r) // 2,), r) for r in raws]
    for (oid, payload), raw in zip(stored, raws):
        assert store.get(oid, verify=True) == ("tensor", payload)


def test_decoding_into_a_reused_buffer_gives_each_tensor_its_own_bytes(store):
    # The checkout path decodes every tensor into one buffer per thread,
    # growing it when a tensor is bigger than any before.
    raws = [gaussian(dt, n, seed=n) for dt, n in ((torch.float32, 5_000), (torch.float32, 90_000),
                                                  (torch.float32, 1_000), (torch.float32, 200_000))]
    ids = [put_tensor(store, "F32", (len(r) // 4,), r) for r in raws]
    buf = bytearray()
    for (oid, payload), raw in zip(ids, raws):
        kind, got = store.get(oid, verify=True, out=buf)
        assert kind == "tensor" and bytes(got) == payload
        del got
    assert len(buf) >= len(ids[3][1])


def test_decoding_into_a_buffer_still_viewed_falls_back_to_a_new_one(store):
    small, big = gaussian(torch.bfloat16, 1_000), gaussian(torch.bfloat16, 50_000, seed=3)
    (s_id, s_payload), (b_id, b_payload) = (put_tensor(store, "BF16", (len(r) // 2,), r) for r in (small, big))
    buf = bytearray()
    _, first = store.get(s_id, out=buf)  # a view of buf: while it lives, buf cannot grow
    assert bytes(first) == s_payload
    _, second = store.get(b_id, out=buf)  # decoded into a new buffer instead of failing
    assert bytes(second) == b_payload
    assert bytes(first) == s_payload  # and the held view was left alone


@pytest.mark.parametrize("width", [2, 4, 8])
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_byte_planes_split_and_join_exactly_at_any_alignment(width, offset):
    from mfgit.store import codec

    n = 10_007
    src = bytearray(offset) + bytearray(random_bytes(n * width, seed=width + offset))
    raw = memoryview(src)[offset:]
    planes = codec.PlaneScratch().planes(width, n)
    codec.split_planes(raw, width, planes)
    arr = np.frombuffer(raw, dtype=np.uint8).reshape(n, width)
    for j in range(width):
        assert bytes(planes[j]) == arr[:, j].tobytes()  # plane j is byte j of every element
    out = bytearray(offset + n * width)
    codec.join_planes([planes[j] for j in range(width)], width, memoryview(out)[offset:])
    assert bytes(out[offset:]) == bytes(raw)


@pytest.mark.parametrize("dtype,limit,n", [("BF16", 0.70, 2 << 20), ("F32", 0.85, 1 << 20)])
def test_gaussian_tensors_compress(store, dtype, limit, n):
    # ~4 MB of N(0, 0.02) weights, the distribution of trained LoRA factors.
    raw = gaussian(_TORCH[dtype], n, seed=5)
    oid, _ = put_tensor(store, dtype, (n,), raw)
    ratio = store.stored_size(oid) / len(raw)
    assert ratio <= limit, f"{dtype}: stored/raw = {ratio:.3f} > {limit}"


# --- every read is checked (invariant 2) -------------------------------------------------

# Offsets in the stored file: the magic, version, kind, codec and reserved
# bytes, the digest, both lengths, the first payload byte, the middle, the end.
_OFFSETS = {"magic": 0, "version": 4, "kind": 5, "codec": 6, "reserved": 7, "digest": 8,
            "stored_len": 24, "raw_len": 32, "payload_first": HEADER_SIZE, "middle": None, "last": -1}


def _flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[offset % len(b)] ^= mask
    return bytes(b)


@pytest.mark.parametrize("kind", ["tensor", "blob", "adapter", "commit", "tag"])
@pytest.mark.parametrize("where", list(_OFFSETS))
@pytest.mark.parametrize("verify", [False, True], ids=["read", "verify"])
def test_a_flipped_bit_anywhere_is_detected_with_both_digests(store, kind, where, verify):
    payload = sample_objects()[kind]
    oid = put_any(store, kind, payload)
    good = stored_bytes(store, oid)
    offset = _OFFSETS[where]
    if offset is None:
        offset = HEADER_SIZE + (len(good) - HEADER_SIZE) // 2
    # A single-bit flip is the hardest case: e.g. kind 4 (commit) -> 5 (tag).
    replace_stored(store, oid, _flip(good, offset))
    with pytest.raises(CorruptObject) as info:
        store.get(oid, verify=verify)
    err = info.value
    assert err.oid == oid
    assert err.expected and err.actual and err.expected != err.actual
    assert oid in str(err) and err.expected in str(err) and err.actual in str(err)


def test_the_stores_own_corrupt_helper_is_detected(store):
    oid = store.put("blob", b"precious" * 100)
    good = store.read_stored(oid)
    for offset in (0, 17, HEADER_SIZE + 3, -1):
        store.corrupt(oid, offset)
        with pytest.raises(CorruptObject):
            store.get(oid)
        replace_stored(store, oid, good)
        assert store.get(oid, verify=True) == ("blob", b"precious" * 100)


@pytest.mark.parametrize("keep", [0, 3, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, -1])
def test_truncated_object_is_detected(store, keep):
    payload = sample_objects()["tensor"]
    header, raw = split_tensor_payload(payload)
    oid = tensor_id(header, raw)
    store.put_tensor(header, raw, oid)
    good = stored_bytes(store, oid)
    replace_stored(store, oid, good[:keep])
    for verify in (False, True):
        with pytest.raises(CorruptObject) as info:
            store.get(oid, verify=verify)
        assert info.value.oid == oid


def test_bytes_appended_to_an_object_are_detected(store):
    oid = store.put("commit", sample_objects()["commit"])
    replace_stored(store, oid, stored_bytes(store, oid) + b"\0")
    with pytest.raises(CorruptObject):
        store.get(oid)


def test_verify_catches_a_frame_forged_for_the_id(store):
    # Someone framed other content for this id on purpose (XXH3 is no
    # secret: anyone can compute the keyed digest): only the SHA-256 check
    # can see it, and verify=True does.
    oid = store.put("blob", b"the real content")
    replace_stored(store, oid, encode_stored("blob", b"forged content!!", oid=oid))
    with pytest.raises(CorruptObject) as info:
        store.get(oid, verify=True)
    assert info.value.algorithm == "sha256"
    assert info.value.expected == oid
    assert info.value.actual == object_id("blob", b"forged content!!")


def _misfiled_pairs(store) -> list[tuple[str, str, str]]:
    """(case, victim id, id of the valid object file copied over the victim's)."""
    th = TensorHeader("BF16", (64, 16))
    a = put_tensor(store, "BF16", (64, 16), gaussian(torch.bfloat16, 64 * 16, seed=1))[0]
    b = put_tensor(store, "BF16", (64, 16), gaussian(torch.bfloat16, 64 * 16, seed=2))[0]
    small_a = put_tensor(store, "F32", (2, 4), random_bytes(32, seed=3))[0]
    small_b = put_tensor(store, "F32", (2, 4), random_bytes(32, seed=4))[0]
    assert th.encode()  # same shape, same dtype: only the bytes differ
    parent = store.put("commit", Commit(adapter="a" * 64, parents=(), author={"name": "A", "email": "a@x"},
                                        site=None, timestamp="2024-01-01T00:00:00.000000Z", message="first",
                                        provenance={"kind": "import"}).encode())
    child = store.put("commit", Commit(adapter="b" * 64, parents=(parent,), author={"name": "A", "email": "a@x"},
                                       site=None, timestamp="2024-01-02T00:00:00.000000Z", message="second",
                                       provenance={"kind": "import"}).encode())
    return [("same-shape tensor", a, b), ("small same-shape tensor", small_a, small_b), ("parent commit", child, parent)]


@pytest.mark.parametrize("case", ["same-shape tensor", "small same-shape tensor", "parent commit"])
def test_a_valid_object_file_misfiled_under_another_id_fails_the_cheap_check(store, case):
    # The bug: only the XXH3 of the body was checked, so a whole valid file
    # of another object under this name passed every read but --read-data.
    (victim, other), = [(v, o) for c, v, o in _misfiled_pairs(store) if c == case]
    replace_stored(store, victim, stored_bytes(store, other))
    for verify in (False, True):
        with pytest.raises(CorruptObject) as info:
            store.get(victim, verify=verify)
        assert info.value.oid == victim
        assert info.value.algorithm == "xxh3-128" and "another object" in str(info.value)
    with pytest.raises(CorruptObject):
        check_frame(victim, stored_bytes(store, victim))
    # The file itself is still a sound copy of the object it was written for.
    assert store.get(other, verify=True)[0] in ("tensor", "commit")


def _v1_frame(v2: bytes) -> bytes:
    """The same object file as the previous format wrote it: version 1, digest without the id."""
    header = bytearray(v2[:HEADER_SIZE])
    header[4] = 1
    body = v2[HEADER_SIZE:]
    header[8:24] = xxhash.xxh3_128(bytes(header[:8]) + bytes(header[24:HEADER_SIZE]) + body).digest()
    return bytes(header) + body


@pytest.mark.parametrize("kind", ["tensor", "blob", "adapter", "commit", "tag"])
def test_version_1_object_files_are_read_and_bound_to_their_id_by_sha256(store, kind):
    payload = sample_objects()[kind]
    oid = put_any(store, kind, payload)
    old = _v1_frame(stored_bytes(store, oid))
    replace_stored(store, oid, old)
    assert store.get(oid) == (kind, payload) and store.get(oid, verify=True) == (kind, payload)
    check_frame(oid, old)
    # A version-1 file of another object under this id: its digest holds, the SHA-256 does not.
    other = put_any(store, "blob", b"another object" * 10)
    replace_stored(store, oid, _v1_frame(stored_bytes(store, other)))
    for verify in (False, True):
        with pytest.raises(CorruptObject) as info:
            store.get(oid, verify=verify)
        assert info.value.algorithm == "sha256" and info.value.actual == other
    with pytest.raises(CorruptObject):
        check_frame(oid, stored_bytes(store, oid))


def test_received_version_1_files_are_stored_as_version_2(store):
    src = MemoryStore()
    oid = src.put("commit", sample_objects()["commit"])
    old = _v1_frame(src.read_stored(oid))
    assert store.put_received(oid, old) is True
    data = stored_bytes(store, oid)
    assert data[4] == 2 and data[HEADER_SIZE:] == old[HEADER_SIZE:]
    assert store.get(oid, verify=True) == ("commit", sample_objects()["commit"])


def test_reusing_a_stored_object_freshens_it(store):
    payload = b"reused" * 100
    oid = store.put("blob", payload)
    old = time.time() - 30 * 86400
    if isinstance(store, MemoryStore):
        store._mtimes[oid] = old
    else:
        os.utime(store.root / oid[:2] / oid[2:], (old, old))
    assert store.mtime(oid) < time.time() - 86400
    assert store.put("blob", payload) == oid  # reused, not written again
    assert store.mtime(oid) > time.time() - 60
    assert store.freshen(oid) is True and store.freshen(object_id("blob", b"absent")) is False


# --- receiving objects from elsewhere --------------------------------------------------------


def test_put_received_accepts_verified_bytes(store):
    src = MemoryStore()
    for kind, payload in sample_objects().items():
        oid = put_any(src, kind, payload)
        assert store.put_received(oid, src.read_stored(oid)) is True
        assert store.put_received(oid, src.read_stored(oid)) is False
        assert store.get(oid, verify=True) == (kind, payload)


def test_put_received_rejects_bytes_whose_sha256_does_not_match_the_id(store):
    src = MemoryStore()
    real = src.put("blob", b"payload A" * 50)
    other = object_id("blob", b"payload B" * 50)
    # Another object's file: its digest names the other id.
    with pytest.raises(CorruptObject) as info:
        store.put_received(other, src.read_stored(real))
    assert info.value.oid == other
    assert info.value.algorithm == "xxh3-128"
    # A file forged for this id: only the SHA-256 sees it.
    with pytest.raises(CorruptObject) as info:
        store.put_received(other, encode_stored("blob", b"payload A" * 50, oid=other))
    assert info.value.oid == other
    assert info.value.algorithm == "sha256"
    assert not store.has(other)
    # Damaged bytes under the right id are refused too.
    with pytest.raises(CorruptObject):
        store.put_received(real, _flip(src.read_stored(real), HEADER_SIZE + 5))
    assert not store.has(real)
    with pytest.raises(MalformedObject):
        store.put_received("../../etc/passwd", src.read_stored(real))
    assert list(store.iter_ids()) == []


# --- DiskStore: atomic, read-only files (invariant 1) ----------------------------------------


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_disk_objects_are_read_only_files(tmp_path):
    store = DiskStore(tmp_path / "objects")
    oid = store.put("blob", b"x" * 1000)
    tid, _ = put_tensor(store, "BF16", (2048,), gaussian(torch.bfloat16, 2048))
    for o in (oid, tid):
        mode = (store.root / o[:2] / o[2:]).stat().st_mode
        assert stat.S_IMODE(mode) & 0o222 == 0, oct(mode)


def test_disk_write_failing_midway_leaves_no_object_and_no_file(tmp_path, monkeypatch):
    store = DiskStore(tmp_path / "objects")
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "write", failing_write)
    payload = random_bytes(10_000)
    with pytest.raises(OSError):
        store.put("blob", payload)
    monkeypatch.undo()
    oid = object_id("blob", payload)
    assert not store.has(oid)
    assert list(store.iter_ids()) == []
    assert _all_files(store.root) == []  # the temporary file was removed


def test_disk_crash_before_rename_leaves_only_a_temporary_name(tmp_path, monkeypatch):
    store = DiskStore(tmp_path / "objects")

    class Killed(BaseException):
        pass

    def crash(*a, **k):
        raise Killed()

    monkeypatch.setattr("mfgit.store.disk.os.replace", crash)
    payload = random_bytes(10_000, seed=1)
    with pytest.raises(Killed):
        store.put("blob", payload)
    monkeypatch.undo()
    oid = object_id("blob", payload)
    leftovers = _all_files(store.root)
    assert leftovers and all(fileio.is_temp_name(p.name) for p in leftovers)
    assert [Path(p) for p in store.iter_temp_files()] == leftovers
    assert not store.has(oid) and list(store.iter_ids()) == []
    # Writing again succeeds and the object is whole.
    assert store.put("blob", payload) == oid
    assert store.get(oid, verify=True) == ("blob", payload)


def test_disk_batch_publishes_objects_only_at_end_batch(tmp_path):
    store = DiskStore(tmp_path / "objects")
    store.begin_batch()
    ids = [put_tensor(store, "F32", (256,), gaussian(torch.float32, 256, seed=i))[0] for i in range(5)]
    # Nothing is visible under its id before the batch is made durable.
    assert all(fileio.is_temp_name(p.name) for p in _all_files(store.root))
    assert not any(store.has(o) for o in ids)
    store.end_batch()
    assert all(store.has(o) for o in ids)
    assert not any(fileio.is_temp_name(p.name) for p in _all_files(store.root))
    for o in ids:
        store.get(o, verify=True)
    # An aborted batch leaves nothing at all.
    store.begin_batch()
    extra = put_tensor(store, "F32", (256,), gaussian(torch.float32, 256, seed=99))[0]
    store.abort_batch()
    assert not store.has(extra)
    assert len(_all_files(store.root)) == 5


def test_disk_store_ignores_foreign_files(tmp_path):
    store = DiskStore(tmp_path / "objects")
    oid = store.put("blob", b"ok")
    (store.root / "zz").mkdir()
    (store.root / "zz" / "not-an-id").write_text("x")
    (store.root / "README").write_text("x")
    assert list(store.iter_ids()) == [oid]
    assert not store.has("zz" + "not-an-id")


# --- DiskStore: the writer lock gc deletes under -------------------------------------------

_WRITER = """
import sys, time
from mfgit.store import DiskStore
store = DiskStore(sys.argv[1])
store.begin_batch()
for i in range(int(sys.argv[2])):
    store.put("blob", b"blob %d " % i * 50)
print("ready", flush=True)
time.sleep(120)
"""


def _writer_process(root: Path, blobs: int = 3) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root), str(blobs)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_disk_exclusive_waits_for_a_writer_names_it_and_a_killed_writer_never_blocks(tmp_path):
    root = tmp_path / "objects"
    proc = _writer_process(root)
    try:
        t0 = time.monotonic()
        with pytest.raises(RepositoryBusy) as info:
            with DiskStore(root).exclusive(timeout=0.3):
                pass
        assert time.monotonic() - t0 >= 0.3
        assert "another mfgit process is writing" in str(info.value)
        if Path("/proc/locks").exists():
            assert info.value.holders == (proc.pid,) and str(proc.pid) in str(info.value)
        # The writer's batch is one temporary directory, which gc must not touch.
        (leftover,) = DiskStore(root).temp_files()
        assert leftover.is_dir() and leftover.name.startswith(".tmp-batch-")
    finally:
        proc.kill()
        proc.wait()
    # SIGKILL: the kernel dropped the lock; its batch is a leftover gc may remove.
    store = DiskStore(root)
    with store.exclusive(timeout=0.5):
        assert store.remove_temp_files(older_than=0) == 1
    assert store.temp_files() == [] and list(store.iter_ids()) == []


def test_disk_writers_wait_for_exclusive_then_proceed(tmp_path):
    root = tmp_path / "objects"
    gc_side, writer = DiskStore(root), DiskStore(root)
    writer.writer_wait = 0.2
    with gc_side.exclusive(timeout=1):
        with pytest.raises(RepositoryBusy) as info:
            writer.put("blob", b"too early")
        assert "gc" in str(info.value)
        assert not writer.has(object_id("blob", b"too early"))
        writer.writer_wait = 30
        done = threading.Event()
        t = threading.Thread(target=lambda: (writer.put("blob", b"waited"), done.set()))
        t.start()
        assert not done.wait(0.3)  # blocked while gc holds the store
    t.join(10)
    assert done.is_set() and writer.has(object_id("blob", b"waited"))


def test_disk_close_releases_the_writer_lock_and_the_next_write_takes_it_again(tmp_path):
    root = tmp_path / "objects"
    a, b = DiskStore(root), DiskStore(root)
    a.put("blob", b"one")
    with pytest.raises(RepositoryBusy):
        with b.exclusive(timeout=0.1):
            pass
    a.close()
    with b.exclusive(timeout=0.1):
        pass
    a.freshen(object_id("blob", b"one"))  # any mutation makes it a writer again
    with pytest.raises(RepositoryBusy):
        with b.exclusive(timeout=0.1):
            pass
    # Its own exclusive() is not blocked by its own writer lock, and nests.
    with a.exclusive(timeout=0.1):
        with a.exclusive(timeout=0.1):
            assert a.remove_temp_files(older_than=0) == 0
