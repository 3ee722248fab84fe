"""The object schema: every kind decodes through one typed set of rules, to exactly one encoding.

Valid objects round-trip byte for byte; each malformed field is refused with
a MalformedObject naming it; random mutations of valid objects never raise
anything else, and never decode to an object whose encoding differs from
the bytes it was decoded from.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import time
import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfgit.errors import InvalidObject, MalformedObject
from mfgit.formats.patterns import PatternError, check_key, key_matches
from mfgit.objects import Commit, decode_note, decode_object, decode_tensor, is_object_id, object_id
from mfgit.objects.canonical import canonical_json

A, B, C, D = "a" * 64, "b" * 64, "c" * 64, "d" * 64
TS = "2026-01-02T03:04:05.000006Z"
SIG = {"format": "ed25519", "public_key": base64.b64encode(bytes(range(32))).decode(),
       "key_id": "SHA256:" + base64.b64encode(bytes(range(1, 33))).decode().rstrip("="),
       "sig": base64.b64encode(bytes(64)).decode()}
Q = "base_model.model.layers.0.q_proj"


def valid_adapter() -> dict[str, Any]:
    return {
        "format": 1,
        "config": {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"],
                   "rank_pattern": {}, "alpha_pattern": {}},
        "base_model": {"name": "tiny", "revision": None},
        "tensors": {f"{Q}.lora_A.weight": {"id": A, "dtype": "F32", "shape": [8, 64]},
                    f"{Q}.lora_B.weight": {"id": B, "dtype": "F32", "shape": [64, 8]}},
        "modules": {Q: {"kind": "linear", "lora_A": f"{Q}.lora_A.weight", "lora_B": f"{Q}.lora_B.weight", "r": 8}},
        "metadata": {"format": "pt"},
        "files": {"README.md": C},
    }


def valid_commit() -> dict[str, Any]:
    return {"adapter": A, "parents": [B], "author": {"name": "Ada", "email": "ada@example.org"},
            "site": "hospital-a", "timestamp": TS, "message": "fixed\n",
            "provenance": {"kind": "import", "meta": {"samples": 12}}, "signature": dict(SIG)}


def valid_tag() -> dict[str, Any]:
    return {"name": "v1", "target": A, "tagger": {"name": "Ada", "email": "ada@example.org"},
            "timestamp": TS, "message": "release", "signature": dict(SIG)}


def valid_note() -> dict[str, Any]:
    return {"format": "mfgit-note/1", "kind": "metrics", "commit": A, "adapter": B, "name": "val",
            "values": {"auc": 0.91, "loss": None}, "measured_by": {"name": "Ada", "email": "a@x", "site": "s"},
            "code": None, "scorer": {"name": "score"}, "timestamp": TS, "tool": {"mfgit": "0.1"}}


def valid_commit_with_attachments() -> dict[str, Any]:
    c = valid_commit()
    c["attachments"] = [{"name": "distilled", "size": 12, "digest": C, "private": True},
                        {"name": "task.json", "size": 3, "digest": A, "private": False, "id": B}]
    return c


def valid_mixture_commit() -> dict[str, Any]:
    c = valid_commit()
    c["parents"] = [A, B]
    c["mixture"] = {"combine": "softmax", "members": [{"commit": A, "weight": 0.25}, {"commit": B, "weight": 0.75}]}
    return c


VALID = {"adapter": valid_adapter, "commit": valid_commit, "tag": valid_tag}
# Commits with the optional fields, for the property tests: decoded as "commit".
VARIANTS = {"commit+attachments": valid_commit_with_attachments, "commit+mixture": valid_mixture_commit}


def decode(kind: str, value: Any) -> Any:
    data = canonical_json(value)
    return decode_object(object_id(kind, data), kind, data)


def refused(kind: str, value: Any) -> str:
    with pytest.raises(MalformedObject) as info:
        if kind == "note":
            decode_note("e" * 64, canonical_json(value))
        elif kind == "tensor":
            decode_tensor("e" * 64, canonical_json(value) + b"\n")
        else:
            decode(kind, value)
    return info.value.reason


# -- valid round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(VALID))
def test_valid_object_round_trips_to_its_own_bytes(kind):
    data = canonical_json(VALID[kind]())
    obj = decode_object(object_id(kind, data), kind, data)
    assert obj.encode() == data
    assert obj.id == object_id(kind, data)


def test_unsigned_commit_and_tag_round_trip():
    for kind in ("commit", "tag"):
        value = VALID[kind]()
        del value["signature"]
        assert decode(kind, value).encode() == canonical_json(value)


def test_valid_tensor_header_and_note_decode():
    header, raw = decode_tensor("e" * 64, canonical_json({"dtype": "BF16", "shape": [2, 3]}) + b"\n" + bytes(12))
    assert (header.dtype, header.shape, len(raw)) == ("BF16", (2, 3), 12)
    assert decode_note("e" * 64, canonical_json(valid_note())) == valid_note()


def test_notes_snapshot_manifest_without_tensors_is_valid():
    value = {"format": 1, "config": {"mfgit_notes": 1}, "base_model": {"name": None, "revision": None},
             "tensors": {}, "modules": {}, "metadata": {"kind": "notes"}, "files": {A: A, B: B}}
    assert decode("adapter", value).files == {A: A, B: B}


# -- each malformed field, named ----------------------------------------------------------------


def _set(value: dict, path: str | tuple, new: Any) -> dict:
    value = copy.deepcopy(value)
    keys = path.split("/") if isinstance(path, str) else list(path)
    target = value
    for k in keys[:-1]:
        target = target[k]
    if new is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = new
    return value


class _Deleted:
    """Marks a field the case removes; its repr keeps test ids the same in every worker."""

    def __repr__(self):
        return "<deleted>"


_DELETE = _Deleted()
TA = f"{Q}.lora_A.weight"

MALFORMED = [
    # (kind, path, new value, words the reason must contain)
    ("adapter", f"tensors/{TA}/shape", "8x64", "shape"),
    ("adapter", f"tensors/{TA}/shape", [8, -1], "shape[1]"),
    ("adapter", f"tensors/{TA}/shape", [8.0, 64], "shape[0]"),
    ("adapter", f"tensors/{TA}/dtype", "F128", "unknown dtype"),
    ("adapter", f"tensors/{TA}/id", _DELETE, "lacks the field(s) id"),
    ("adapter", f"tensors/{TA}/id", "A" * 64, "id"),
    ("adapter", f"tensors/{TA}/extra", 1, "unknown field"),
    ("adapter", "tensors", [1, 2], "tensors: must be an object"),
    ("adapter", "modules", [], "modules: must be an object"),
    ("adapter", f"modules/{Q}/r", 4, "modules"),
    ("adapter", f"modules/{Q}/r", 8.0, "modules"),
    ("adapter", f"modules/{Q}/lora_A", "nothing", "modules"),
    ("adapter", "modules/ghost", {"kind": "linear", "lora_A": TA, "lora_B": TA, "r": 8}, "ghost"),
    ("adapter", f"tensors/{TA}/shape", [8, 64, 1], "2-D"),
    ("adapter", f"tensors/{Q}.lora_B.weight/shape", [64, 4], "rank"),
    ("adapter", "config/r", 4, "rank 4"),
    ("adapter", "config/r", 1e30, "r must be an integer"),
    ("adapter", "config/lora_alpha", "sixteen", "lora_alpha"),
    ("adapter", "config/rank_pattern", {"(": 8}, "rank_pattern key"),
    ("adapter", "config/rank_pattern", {"q_proj": "eight"}, "rank_pattern"),
    ("adapter", "config/rank_pattern", {"q_proj": {"r": 8}}, "rank_pattern"),
    ("adapter", "config/rank_pattern", {"q_proj": 4}, "rank_pattern['q_proj']"),
    ("adapter", "config/alpha_pattern", {"q_proj": None}, "alpha_pattern"),
    ("adapter", "config/alpha_pattern", [], "alpha_pattern must be an object"),
    ("adapter", "config", [], "config: must be an object"),
    ("adapter", "base_model", "tiny", "base_model: must be an object"),
    ("adapter", "base_model/name", 3, "base_model.name"),
    ("adapter", "metadata", {"format": 1}, "metadata"),
    ("adapter", "metadata", _DELETE, "lacks the field(s) metadata"),
    ("adapter", "files", _DELETE, "lacks the field(s) files"),
    ("adapter", "files/adapter_model.safetensors", D, "PEFT file name"),
    ("adapter", "files/adapter_config.json", D, "PEFT file name"),
    ("adapter", "files/Adapter_Model.SafeTensors", D, "PEFT file name"),
    ("adapter", "files/adapter_model.bin", D, "PEFT file name"),
    ("adapter", "files/sub\\evil", D, "not a plain name"),
    ("adapter", ("files", "../evil"), D, "not a plain name"),
    ("adapter", ("files", "/tmp/evil"), D, "not a plain name"),
    ("adapter", "files/.hidden", D, "hidden"),
    ("adapter", "files/a\u0007b", D, "control characters"),
    ("adapter", "files/readme.MD", D, "case-insensitive"),
    ("adapter", "files/README.md", 5, "files['README.md']"),
    ("adapter", "format", 2, "format"),
    ("adapter", "format", True, "format"),
    ("adapter", "extra", {}, "unknown field"),
    ("commit", "author", "Ada <ada@example.org>", "author: must be an object"),
    ("commit", "author/name", ["Ada"], "author.name"),
    ("commit", "author/phone", "1", "unknown field"),
    ("commit", "timestamp", 1767322800, "timestamp"),
    ("commit", "timestamp", "2026-01-02 03:04:05", "timestamp"),
    ("commit", "timestamp", "2026-02-30T03:04:05.000000Z", "not a date and time that exists"),
    ("commit", "message", ["fixed"], "message"),
    ("commit", "message", _DELETE, "lacks the field(s) message"),
    ("commit", "site", 5, "site"),
    ("commit", "site", "a\nb", "control characters"),
    ("commit", "parents", B, "parents"),
    ("commit", "parents", [B, B], "twice"),
    ("commit", "parents", [B + "\n"], "parents[0]"),
    ("commit", "adapter", "HEAD", "adapter"),
    ("commit", "provenance", "import", "provenance"),
    ("commit", "provenance/kind", 3, "provenance.kind"),
    ("commit", "provenance", {"kind": "merge", "inputs": ["x"]}, "provenance.inputs"),
    ("commit", "signature", None, "signature"),
    ("commit", "signature/extra", "x", "unknown field"),
    ("commit", "signature/sig", 5, "signature.sig"),
    ("commit", "signature/sig", "AAB=", "canonical base64"),
    ("commit", "signature/public_key", "not base64!", "base64"),
    ("commit", "signature/key_id", "MD5:xx", "key_id"),
    ("commit", "signature/format", "ED 25519", "signature.format"),
    ("commit", "extra", 1, "unknown field"),
    ("tag", "name", "", "name"),
    ("tag", "target", 7, "target"),
    ("tag", "tagger", None, "tagger"),
    ("tag", "signature/note", "x", "unknown field"),
    ("note", "format", "mfgit-note/2", "format"),
    ("note", "values/auc", "high", "values"),
    ("note", "measured_by/site", 3, "measured_by.site"),
    ("note", "commit", "HEAD", "commit"),
    ("note", "signature", {"format": "ed25519"}, "signature"),
    ("note", "extra", 1, "unknown field"),
    ("tensor", "shape", "8", "shape"),
    ("tensor", "dtype", "F128", "unknown dtype"),
    ("tensor", "extra", 1, "unknown field"),
]


@pytest.mark.parametrize("kind,path,new,words", MALFORMED, ids=[f"{k}:{p}={n!r}"[:60] for k, p, n, _ in MALFORMED])
def test_each_malformed_field_is_refused_naming_it(kind, path, new, words):
    base = {"note": valid_note, "tensor": lambda: {"dtype": "F32", "shape": [2]}}.get(kind) or VALID[kind]
    reason = refused(kind, _set(base(), path, new))
    assert words in reason, reason


def test_reserved_file_name_in_manifest_is_refused_at_decode():
    # The bug: a manifest whose `files` named adapter_model.safetensors let
    # checkout write that blob over the weights the manifest's tensors give.
    value = valid_adapter()
    value["files"]["adapter_model.safetensors"] = D
    assert "adapter_model.safetensors" in refused("adapter", value)


def test_extra_field_in_commit_signature_is_refused_at_decode():
    # The bug: fields the signature does not cover gave one signed commit many ids.
    value = valid_commit()
    value["signature"]["comment"] = "any text, any id"
    assert "comment" in refused("commit", value)


def test_non_canonical_base64_in_signature_is_refused_at_decode():
    value = valid_commit()
    sig = value["signature"]["sig"]
    twin = sig[:-3] + "B=="  # the same 64 bytes (the low padding bits are ignored by b64decode)
    assert base64.b64decode(twin) == base64.b64decode(sig)
    value["signature"]["sig"] = twin
    assert "canonical base64" in refused("commit", value)


def test_tensor_name_matching_no_module_is_allowed():
    value = valid_adapter()
    value["tensors"]["base_model.model.lm_head.weight"] = {"id": D, "dtype": "F32", "shape": [4, 4]}
    assert "base_model.model.lm_head.weight" in decode("adapter", value).tensors


def test_is_object_id_refuses_a_trailing_newline():
    assert is_object_id(A) and not is_object_id(A + "\n") and not is_object_id(A.upper())


# -- only MalformedObject, and one encoding ------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=True)
    | st.text(max_size=8) | st.sampled_from([A, TS, "", "LORA", 8, 8.0, "adapter_model.safetensors"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated(draw):
    kind = draw(st.sampled_from(["adapter", "commit", "tag", "note", *VARIANTS]))
    value = valid_note() if kind == "note" else {**VALID, **VARIANTS}[kind]()
    kind = kind.split("+")[0]
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(value)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            value = draw(json_values) if op == "replace" else value
            continue
        parent = value
        for k in path[:-1]:
            parent = parent[k]
        if op == "replace":
            parent[path[-1]] = draw(json_values)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.text(max_size=6))] = draw(json_values)
    return kind, value


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_objects_raise_only_malformed_and_never_decode_to_another_encoding(case):
    kind, value = case
    try:
        data = canonical_json(value)
    except ValueError:
        # Not encodable canonically (NaN, huge int): write the bytes as json would.
        data = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace")
    try:
        if kind == "note":
            decode_note("e" * 64, data)
            assert canonical_json(json.loads(data)) == data
        else:
            obj = decode_object(object_id(kind, data), kind, data)
            assert obj.encode() == data
    except MalformedObject:
        pass


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["adapter", "commit", "tag", *VARIANTS]), st.data())
def test_byte_mutations_raise_only_malformed(kind, data):
    raw = bytearray(canonical_json({**VALID, **VARIANTS}[kind]()))
    kind = kind.split("+")[0]
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        obj = decode_object("e" * 64, kind, bytes(raw))
        assert obj.encode() == bytes(raw)
    except MalformedObject:
        pass


@pytest.mark.parametrize("payload", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' + b"9" * 5000 + b"}",
    b'{"a":"\\ud800"}',
    b'{"a":NaN}',
    b'{"a":1e400}',
    b'{"a":1,"a":1}',
    b"\xff\xfe",
    b"",
])
def test_hostile_json_in_an_object_raises_only_malformed(payload):
    for kind in ("adapter", "commit", "tag"):
        with pytest.raises(MalformedObject):
            decode_object("e" * 64, kind, payload)
    with pytest.raises(MalformedObject):
        decode_note("e" * 64, payload)
    with pytest.raises(MalformedObject):
        decode_tensor("e" * 64, payload + b"\n")


def test_an_object_the_schema_refuses_is_never_written():
    value = valid_commit()
    c = Commit.from_dict({**value, "timestamp": "yesterday"})
    with pytest.raises(InvalidObject) as info:
        c.encode()
    assert "timestamp" in info.value.reason


# -- the linear-time pattern matcher -------------------------------------------------------------

# Keys of the kind PEFT users and mfgit's own merges write, and module names of real models.
REAL_KEYS = [
    "q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "query", "value", "lm_head",
    r"model\.layers\.0\.self_attn\.q_proj", r"layers\.0\.self_attn\.q_proj", r"layers\.\d+\.mlp\.down_proj",
    r"layers\.(0|1|2)\.self_attn\.(q|v)_proj", r".*\.q_proj", r"layers.1[0-5].*", r"^model\.layers\.1\..*",
    r"encoder\.layer\.[0-9]+\.attention\.self\.query", r"(q|k|v)_proj", r"self_attn\.\w+", r"mlp\..*proj",
    r"layers\.\d{1,2}\.", r"[^.]+_proj", r"attn\.c_attn", r"transformer\.h\.\d+\.attn\.c_attn",
    r"model.layers.0.self_attn.q_proj", r"layers\.0\.self_attn\.q_proj|layers\.1\.mlp\.up_proj",
    r"(?P<proj>q|v)_proj", r"(?:gate|up)_proj", r"\s*q_proj", r"q_proj$", r"layers\.[^1]\.", r"(?a:\bq)_proj",
    r"h\.\d*", r"x{0,3}q_proj", r"layers\.\d+?\.mlp", r"(?s:.)_proj", "a)|(q_proj",
]
REAL_NAMES = [
    f"model.layers.{i}.{m}" for i in (0, 1, 2, 12) for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
] + [f"encoder.layer.{i}.attention.self.{m}" for i in (0, 5) for m in ("query", "key", "value")] + [
    "transformer.h.3.attn.c_attn", "lm_head", "q_proj", "model.embed_tokens", "xq_proj", "a", "layers.1x.mlp",
    "model.layers.١.mlp.down_proj", "модель.layers.0.q_proj", "x q_proj",
]


def test_linear_matcher_agrees_with_python_re_on_real_patterns():
    for key in REAL_KEYS:
        check_key(key)
        for name in REAL_NAMES:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                want = re.match(rf"(.*\.)?({key})$", name) is not None
            assert key_matches(key, name) == want, (key, name)


@pytest.mark.parametrize("key", ["(", "(a)\\1", "(?=q)", "(?<=x)q", "(?(1)a|b)", "a*+", "(?>a)", "\\bq",
                                 "(?i:Q_PROJ)", "a{1001}", "[[:alpha:]]", "(?i)q", 5])
def test_keys_without_an_exact_linear_time_match_are_refused(key):
    with pytest.raises(PatternError):
        check_key(key)


def test_catastrophic_backtracking_key_is_matched_in_linear_time():
    # With Python's re, (a+)+b against 28 a's took 17 s, and four times more per two a's.
    t0 = time.perf_counter()
    for n in (28, 60, 5000):
        assert not key_matches("(a+)+b", "a" * n)
    assert key_matches("(a+)+b", "x." + "a" * 60 + "b")
    assert time.perf_counter() - t0 < 1.0


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats() | st.text(max_size=4)
    | st.builds(lambda x: __import__("numpy").float64(x), st.floats()) | st.just("\ud800") | st.just(object()),
    lambda children: st.lists(children, max_size=3) | st.tuples(children)
    | st.dictionaries(st.text(max_size=3) | st.just("\udc80") | st.integers(), children, max_size=3),
    max_leaves=10))
def test_the_json_value_rules_have_one_answer(value):
    from mfgit.formats.jsonvalue import JSONValueError, _first_problem, check_value

    try:
        check_value(value)
        refused = False
    except JSONValueError as e:
        refused = True
        assert "breaks a rule" not in e.reason  # the full pass named the value the fast pass found
    assert _first_problem(value, 64) == refused


# -- ECDSA signatures: one form ------------------------------------------------------------------

_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _ecdsa_signed_commit() -> tuple[dict[str, Any], Any]:
    from cryptography.hazmat.primitives.asymmetric import ec

    from mfgit.audit.keys import SigningKey

    key = SigningKey("test", ec.generate_private_key(ec.SECP256R1()))
    value = valid_commit()
    del value["signature"]
    value["signature"] = key.signature_for(Commit.from_dict(value).signing_payload())
    return value, key


def test_ecdsa_signatures_are_made_and_accepted_in_low_s_form_only():
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

    from mfgit.audit.signing import check_signature

    for _ in range(8):  # half of all raw ECDSA signatures are high-S
        value, _key = _ecdsa_signed_commit()
        r, s = decode_dss_signature(base64.b64decode(value["signature"]["sig"]))
        assert s <= _P256_N // 2
        assert check_signature(decode("commit", value)).status == "good"
    # The bug: (r, n - s) verifies too, so anyone could give the signed commit a second id.
    twin = json.loads(json.dumps(value))
    twin["signature"]["sig"] = base64.b64encode(encode_dss_signature(r, _P256_N - s)).decode()
    assert "high S" in refused("commit", twin)


def test_compressed_ecdsa_public_key_is_refused_at_decode():
    from cryptography.hazmat.primitives import serialization

    value, key = _ecdsa_signed_commit()
    compressed = key.private.public_key().public_bytes(serialization.Encoding.X962,
                                                       serialization.PublicFormat.CompressedPoint)
    value["signature"]["public_key"] = base64.b64encode(compressed).decode()
    assert "uncompressed" in refused("commit", value)
