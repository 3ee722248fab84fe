"""The one typed schema every structured object is checked against, read or written.

Each rule here says what one field of one kind of object must be; the text
of docs/design.md ("Objects") is the same list. A value breaking a rule
raises `SchemaError` naming the field; `mfgit.objects.model` turns that into
`MalformedObject(oid, reason)` when an object is read and `InvalidObject`
when one is about to be written, so that no object mfgit writes is one it
would refuse to read.

Besides the types, two rules make a manifest say exactly one thing:

* ``modules`` is what `mfgit.formats.peft.lora_modules` derives from
  ``tensors`` — the same names, kinds, factors and ranks — and the config
  gives every module that rank (`mfgit.formats.peft.check_ranks`), so every
  reader can compute its scaling, and does so the same way;
* no name in ``files`` is a PEFT file name (`mfgit.formats.peft.file_name_problem`):
  checkout writes the config and the weights from the manifest's own
  fields, and a blob by that name would replace what verify checked.

With exact field sets, and canonical JSON (`mfgit.objects.canonical`),
an object has exactly one encoding: nothing can be added to, or spelled
differently in, a signed commit without changing what its signature covers.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from datetime import datetime
from typing import Any, Callable, Mapping

from mfgit.errors import InvalidAdapter
from mfgit.formats.dtypes import DTYPE_SIZES
from mfgit.formats.peft import check_ranks, file_name_problem, lora_modules, tensor_name_problem

ADAPTER_FORMAT = 1
NOTE_FORMAT = "mfgit-note/1"
MAX_NAME_CHARS = 4096
MAX_DIMS = 32
MAX_ELEMENTS = 1 << 62
_ID = re.compile(r"[0-9a-f]{64}")
# mfgit writes microseconds (mfgit.objects.timestamp); a time given through the API may have
# none or fewer digits, as earlier repositories hold: every such time stays readable.
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z")
_SIG_FORMAT = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_MAX_B64 = 8192


class SchemaError(ValueError):
    """A value breaks one rule of the schema; `field` is the path of the value."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# -- rules for one value -------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _fields(value: Any, where: str, required: set[str], optional: set[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SchemaError(where, f"must be an object, not {_type_name(value)}")
    missing = required - set(value)
    if missing:
        raise SchemaError(where, f"lacks the field(s) {', '.join(sorted(missing))}")
    unknown = set(value) - required - optional
    if unknown:
        raise SchemaError(where, f"has unknown field(s) {', '.join(repr(k[:40]) for k in sorted(unknown))}")
    return value


def _string(value: Any, where: str, *, text: bool = False, empty: bool = True) -> str:
    """A string; `text` ones (names, emails, sites) also hold no control characters."""
    if not isinstance(value, str):
        raise SchemaError(where, f"must be a string, not {_type_name(value)}")
    if not empty and not value:
        raise SchemaError(where, "must not be empty")
    if text:
        if len(value) > MAX_NAME_CHARS:
            raise SchemaError(where, f"longer than {MAX_NAME_CHARS} characters")
        if not value.isprintable() and any(unicodedata.category(c) == "Cc" for c in value):
            raise SchemaError(where, "holds control characters")
    return value


def _optional(check: Callable[..., Any]) -> Callable[..., Any]:
    def inner(value: Any, where: str, **kw: Any) -> Any:
        return None if value is None else check(value, where, **kw)
    return inner


def _object_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise SchemaError(where, "must be an object id (64 lowercase hex digits)")
    return value


def _timestamp(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        raise SchemaError(where, "must be a UTC time written YYYY-MM-DDTHH:MM:SS[.ffffff]Z")
    try:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ" if "." in value else "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise SchemaError(where, f"{value} is not a date and time that exists") from None
    return value


def _person(value: Any, where: str) -> dict[str, str]:
    _fields(value, where, {"name", "email"})
    _string(value["name"], f"{where}.name", text=True)
    _string(value["email"], f"{where}.email", text=True)
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SchemaError(where, f"must be an object, not {_type_name(value)}")
    return value


def _canonical_b64(value: Any, where: str, *, padded: bool = True) -> bytes:
    if not isinstance(value, str) or not value or len(value) > _MAX_B64:
        raise SchemaError(where, "must be non-empty base64")
    try:
        raw = base64.b64decode(value + ("" if padded else "=" * (-len(value) % 4)), validate=True)
    except (binascii.Error, ValueError):
        raise SchemaError(where, "is not valid base64") from None
    again = base64.b64encode(raw).decode("ascii")
    # Base64 has spellings that decode to the same bytes (non-zero padding
    # bits); only the one b64encode writes is accepted, or one signature
    # could stand in several objects with different ids.
    if (again if padded else again.rstrip("=")) != value:
        raise SchemaError(where, "is not in canonical base64 (as b64encode writes it)")
    return raw


# The order of the P-256 group (SEC 2, secp256r1).
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _der_integer(data: bytes, at: int, where: str) -> tuple[int, int]:
    if data[at:at + 1] != b"\x02" or at + 2 > len(data):
        raise SchemaError(where, "is not a DER ECDSA signature")
    n = data[at + 1]
    body = data[at + 2:at + 2 + n]
    # Minimal DER: no length forms above 127 here, no needless leading zero, non-negative.
    if n == 0 or n > 33 or len(body) != n or body[0] & 0x80 or (n > 1 and body[0] == 0 and not body[1] & 0x80):
        raise SchemaError(where, "is not a minimal DER ECDSA signature")
    return int.from_bytes(body, "big"), at + 2 + n


def _ecdsa_p256_signature(raw: bytes, where: str) -> None:
    """DER SEQUENCE {r, s} with 0 < r < n and 0 < s <= n/2 ("low S"): (r, n - s)
    verifies as well, so without this rule anyone could give a signed
    object a second id with a good signature."""
    if len(raw) < 8 or raw[0] != 0x30 or raw[1] != len(raw) - 2:
        raise SchemaError(where, "is not a DER ECDSA signature")
    r, at = _der_integer(raw, 2, where)
    s, at = _der_integer(raw, at, where)
    if at != len(raw) or not 0 < r < _P256_N or not 0 < s < _P256_N:
        raise SchemaError(where, "is not a DER ECDSA signature")
    if s > _P256_N // 2:
        raise SchemaError(where, "has a high S value; the one accepted form of an ECDSA signature has S <= n/2")


def signature(value: Any, where: str = "signature") -> dict[str, str]:
    """{format, public_key, key_id, sig}: exactly these, each a string in its one spelling."""
    _fields(value, where, {"format", "public_key", "key_id", "sig"})
    if not isinstance(value["format"], str) or not _SIG_FORMAT.fullmatch(value["format"]):
        raise SchemaError(f"{where}.format", "must be a signature format name such as ed25519")
    key = _canonical_b64(value["public_key"], f"{where}.public_key")
    sig = _canonical_b64(value["sig"], f"{where}.sig")
    if value["format"] == "ed25519" and (len(key) != 32 or len(sig) != 64):
        raise SchemaError(where, "an ed25519 key is 32 bytes and its signature 64")
    if value["format"] == "ecdsa-p256":
        # One spelling of the key too: the compressed point names the same key.
        if len(key) != 65 or key[0] != 4:
            raise SchemaError(f"{where}.public_key", "must be the uncompressed P-256 point (65 bytes, 0x04 first)")
        _ecdsa_p256_signature(sig, f"{where}.sig")
    key_id = value["key_id"]
    if not isinstance(key_id, str) or not key_id.startswith("SHA256:"):
        raise SchemaError(f"{where}.key_id", "must be an OpenSSH fingerprint SHA256:<base64>")
    if len(_canonical_b64(key_id[len("SHA256:"):], f"{where}.key_id", padded=False)) != 32:
        raise SchemaError(f"{where}.key_id", "must be the SHA-256 fingerprint of the key (32 bytes)")
    return value


# -- tensor header -------------------------------------------------------------------------------


def _shape(value: Any, where: str) -> list[int]:
    if not isinstance(value, list):
        raise SchemaError(where, f"must be an array of dimensions, not {_type_name(value)}")
    if len(value) > MAX_DIMS:
        raise SchemaError(where, f"has more than {MAX_DIMS} dimensions")
    n = 1
    for i, d in enumerate(value):
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise SchemaError(f"{where}[{i}]", "must be a non-negative integer")
        n *= d
        if n > MAX_ELEMENTS:
            raise SchemaError(where, "has more elements than any tensor can")
    return value


def _dtype(value: Any, where: str) -> str:
    if not isinstance(value, str) or value not in DTYPE_SIZES:
        raise SchemaError(where, f"unknown dtype {str(value)[:20]!r} (known: {' '.join(DTYPE_SIZES)})")
    return value


def tensor_header(value: Any) -> dict[str, Any]:
    """{"dtype", "shape"}: a known dtype and a list of non-negative dimensions."""
    _fields(value, "tensor header", {"dtype", "shape"})
    _dtype(value["dtype"], "dtype")
    _shape(value["shape"], "shape")
    return value


# -- adapter manifest ----------------------------------------------------------------------------


def _tensor_name(name: str, where: str) -> str:
    problem = tensor_name_problem(name)
    if problem:
        raise SchemaError(f"{where}[{name[:80]!r}]", f"cannot name a tensor: {problem}")
    return name


def adapter(value: Any) -> dict[str, Any]:
    """An adapter manifest (docs/design.md, "Adapter manifest")."""
    _fields(value, "adapter", {"format", "config", "base_model", "tensors", "modules", "metadata", "files"})
    if type(value["format"]) is not int or value["format"] != ADAPTER_FORMAT:
        raise SchemaError("format", f"must be {ADAPTER_FORMAT}")
    config = _object(value["config"], "config")
    _fields(value["base_model"], "base_model", {"name", "revision"})
    _optional(_string)(value["base_model"]["name"], "base_model.name")
    _optional(_string)(value["base_model"]["revision"], "base_model.revision")
    tensors = _object(value["tensors"], "tensors")
    shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, t in tensors.items():
        where = f"tensors[{name[:80]!r}]"
        _tensor_name(name, "tensors")
        _fields(t, where, {"id", "dtype", "shape"})
        _object_id(t["id"], f"{where}.id")
        shapes[name] = (_dtype(t["dtype"], f"{where}.dtype"), tuple(_shape(t["shape"], f"{where}.shape")))
    metadata = value["metadata"]
    if metadata is not None:
        for k, v in _object(metadata, "metadata").items():
            _string(v, f"metadata[{k[:40]!r}]")
    seen: dict[str, str] = {}
    for name, bid in _object(value["files"], "files").items():
        problem = file_name_problem(name)
        if problem:
            raise SchemaError(f"files[{name[:80]!r}]", f"cannot be an adapter's file: {problem}")
        if name.casefold() in seen:
            raise SchemaError(f"files[{name[:80]!r}]", f"names the same file as {seen[name.casefold()]!r} "
                                                       "on a case-insensitive file system")
        seen[name.casefold()] = name
        _object_id(bid, f"files[{name[:80]!r}]")
    modules = _object(value["modules"], "modules")
    try:
        derived = lora_modules(shapes, "tensors", require=False)
    except InvalidAdapter as e:
        raise SchemaError("tensors", e.reason) from None
    # type(r) too: 8.0 and True equal 8 in Python, but not in the encoding.
    if modules != derived or any(type(m.get("r")) is not int for m in modules.values()):
        bad = next((m for m in sorted(set(modules) | set(derived)) if modules.get(m) != derived.get(m)), "?")
        want = derived.get(bad)
        raise SchemaError(f"modules[{bad[:80]!r}]",
                          f"must be {want} as the tensors give it" if want else "names no lora_A/lora_B tensor pair")
    if derived:
        try:
            check_ranks(config, derived, "config")
        except InvalidAdapter as e:
            raise SchemaError("config", e.reason) from None
    return value


# -- commit attachments --------------------------------------------------------------------------

# The optional commit field that lists them (docs/design.md, "Attachments").
_COMMIT_ATTACHMENT_FIELDS = frozenset({"attachments"})
MAX_ATTACHMENT_NAME_BYTES = 4096
MAX_ATTACHMENT_SIZE = (1 << 63) - 1


def attachment_name_problem(name: Any) -> str | None:
    """Why `name` cannot name an attachment, or None.

    A relative POSIX path of plain segments (a folder attached as NAME
    gives NAME/relpath), written under OUT/attachments/ by checkout: no
    absolute path, no empty, "." or ".." segment, no backslash (a separator
    elsewhere), no control characters, valid UTF-8, at most 255 bytes a
    segment and 4096 in all. So no name can leave the folder it is written to.
    """
    if not isinstance(name, str) or not name:
        return "an empty name"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if size > MAX_ATTACHMENT_NAME_BYTES:
        return f"longer than {MAX_ATTACHMENT_NAME_BYTES} bytes"
    if not name.isprintable() and any(unicodedata.category(c) == "Cc" for c in name):
        return "it contains control characters"
    if "\\" in name:
        return "it contains a backslash (use / between folders)"
    if name.startswith("/"):
        return "an absolute path"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return f"a path with an {'empty' if not part else repr(part)} segment, which could leave its folder"
        if len(part.encode("utf-8")) > 255:
            return "a segment longer than 255 bytes"
    return None


def attachments(value: Any, where: str = "attachments") -> list[dict[str, Any]]:
    """The commit's attachments: a non-empty array sorted by name (absent when
    there are none: one encoding), each exactly {name, size, digest, private}
    plus, when it is public, either "id" (the blob) or, for a safetensors file
    stored as its tensors, "header" (the blob of its header) and "tensors"
    (a non-empty object: tensor name → tensor id); names unique, also
    case-folded, and no name a folder of another (checkout writes each as a file)."""
    if not isinstance(value, list):
        raise SchemaError(where, f"must be an array, not {_type_name(value)}")
    if not value:
        raise SchemaError(where, "must not be empty (a commit without attachments has no such field)")
    folded: dict[str, str] = {}
    previous = None
    for i, a in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(a, dict):
            raise SchemaError(at, f"must be an object, not {_type_name(a)}")
        private = a.get("private")
        if type(private) is not bool:
            raise SchemaError(f"{at}.private", "must be a boolean")
        split = not private and ("tensors" in a or "header" in a)
        _fields(a, at, {"name", "size", "digest", "private"}
                | (set() if private else {"header", "tensors"} if split else {"id"}))
        name = a["name"]
        problem = attachment_name_problem(name)
        if problem:
            raise SchemaError(f"{at}.name", f"cannot name an attachment: {problem}")
        if previous is not None and not previous < name:
            raise SchemaError(f"{at}.name", f"{name[:80]!r} " + ("appears twice" if previous == name
                                                                 else "is out of order (sorted by name)"))
        previous = name
        key = name.casefold()
        if key in folded:
            raise SchemaError(f"{at}.name", f"names the same file as {folded[key][:80]!r} "
                                            "on a case-insensitive file system")
        folded[key] = name
        size = a["size"]
        if type(size) is not int or not 0 <= size <= MAX_ATTACHMENT_SIZE:
            raise SchemaError(f"{at}.size", "must be a non-negative integer")
        if not isinstance(a["digest"], str) or not _ID.fullmatch(a["digest"]):
            raise SchemaError(f"{at}.digest", "must be a SHA-256 digest (64 lowercase hex digits)")
        if split:
            _object_id(a["header"], f"{at}.header")
            tensors = a["tensors"]
            if not isinstance(tensors, dict) or not tensors:
                raise SchemaError(f"{at}.tensors", "must be a non-empty object: tensor name → tensor id")
            for tname, tid in tensors.items():
                _tensor_name(tname, f"{at}.tensors")
                _object_id(tid, f"{at}.tensors[{tname[:80]!r}]")
        elif not private:
            _object_id(a["id"], f"{at}.id")
    for key, name in folded.items():
        # "a" and "a/b" cannot both be files of one folder.
        parts = key.split("/")
        for n in range(1, len(parts)):
            if "/".join(parts[:n]) in folded:
                raise SchemaError(where, f"{folded['/'.join(parts[:n])][:80]!r} is a file and the folder of {name[:80]!r}")
    return value


# -- commit and tag ------------------------------------------------------------------------------


def _provenance(value: Any, where: str = "provenance") -> dict[str, Any]:
    prov = _object(value, where)
    if "kind" in prov:
        _string(prov["kind"], f"{where}.kind", text=True, empty=False)
    if prov.get("kind") == "merge":
        # What verify, lineage and replay walk: lists of objects.
        for key in ("inputs", "leaves"):
            items = prov.get(key, [])
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise SchemaError(f"{where}.{key}", "must be an array of objects")
            for i, item in enumerate(items):
                if "commit" in item:
                    _object_id(item["commit"], f"{where}.{key}[{i}].commit")
    return prov


def commit(value: Any) -> dict[str, Any]:
    """A commit (docs/design.md, "Commit")."""
    _fields(value, "commit", {"adapter", "parents", "author", "site", "timestamp", "message", "provenance"},
            {"signature"} | _COMMIT_ATTACHMENT_FIELDS | set(COMMIT_EXTENSIONS))
    _object_id(value["adapter"], "adapter")
    parents = value["parents"]
    if not isinstance(parents, list):
        raise SchemaError("parents", f"must be an array of commit ids, not {_type_name(parents)}")
    for i, p in enumerate(parents):
        _object_id(p, f"parents[{i}]")
    if len(set(parents)) != len(parents):
        raise SchemaError("parents", "names the same commit twice")
    _person(value["author"], "author")
    _optional(_string)(value["site"], "site", text=True)
    _timestamp(value["timestamp"], "timestamp")
    _string(value["message"], "message")
    _provenance(value["provenance"])
    # --- attachments (optional) ---
    if "attachments" in value:
        attachments(value["attachments"])
    # --- end attachments ---
    if "signature" in value:
        signature(value["signature"])
    for name, rule in COMMIT_EXTENSIONS.items():
        if name in value:
            rule(value[name], value)
    return value


# Optional commit fields, each with its own rule `rule(field_value, commit_value)`. A commit
# without the field encodes as it did before the field existed, so every earlier id stays.
COMMIT_EXTENSIONS: dict[str, Callable[[Any, dict[str, Any]], Any]] = {}


# --- mixture (MedForge-Mixture: an output-space composite) --------------------------------------

MIXTURE_COMBINE = ("softmax",)


def mixture(value: Any, commit_value: dict[str, Any]) -> dict[str, Any]:
    """``{"combine": "softmax", "members": [{"commit", "weight"}, ...]}`` (docs/design.md, "Mixture").

    The members are the commit's last parents, in order (before them at most
    one other parent: the branch's previous tip), so everything that walks
    parents — reachability, push, fetch, gc, verify — reaches every member.
    A weight is a float, never an integer: 1 and 1.0 would be two encodings
    of one mixture.
    """
    _fields(value, "mixture", {"combine", "members"})
    if value["combine"] not in MIXTURE_COMBINE:
        raise SchemaError("mixture.combine", f"must be one of {', '.join(MIXTURE_COMBINE)}")
    members = value["members"]
    if not isinstance(members, list) or not members:
        raise SchemaError("mixture.members", "must be a non-empty array of {commit, weight}")
    ids = []
    for i, m in enumerate(members):
        where = f"mixture.members[{i}]"
        _fields(m, where, {"commit", "weight"})
        ids.append(_object_id(m["commit"], f"{where}.commit"))
        if type(m["weight"]) is not float:
            raise SchemaError(f"{where}.weight", f"must be a floating-point number, not {_type_name(m['weight'])}")
    if len(set(ids)) != len(ids):
        raise SchemaError("mixture.members", "names the same commit twice")
    parents = commit_value.get("parents") or []
    if parents[len(parents) - len(ids):] != ids or len(parents) - len(ids) not in (0, 1):
        raise SchemaError("parents", "of a mixture must be its members in order, after at most one other "
                                     "parent (the branch's previous tip)")
    return value


COMMIT_EXTENSIONS["mixture"] = mixture

# --- end mixture --------------------------------------------------------------------------------


def tag(value: Any) -> dict[str, Any]:
    """An annotated tag (docs/design.md, "Tag")."""
    _fields(value, "tag", {"name", "target", "tagger", "timestamp", "message"}, {"signature"})
    _string(value["name"], "name", text=True, empty=False)
    _object_id(value["target"], "target")
    _person(value["tagger"], "tagger")
    _timestamp(value["timestamp"], "timestamp")
    _string(value["message"], "message")
    if "signature" in value:
        signature(value["signature"])
    return value


# -- notes ---------------------------------------------------------------------------------------


def note(value: Any) -> dict[str, Any]:
    """A note (format mfgit-note/1, docs/search-and-eval.md), stored as a blob of canonical JSON."""
    _fields(value, "note", {"format", "kind", "commit", "adapter", "name", "values", "measured_by", "code",
                            "scorer", "timestamp", "tool"}, {"message", "signature"})
    if value["format"] != NOTE_FORMAT:
        raise SchemaError("format", f"must be {NOTE_FORMAT!r}")
    _string(value["kind"], "kind", text=True, empty=False)
    _object_id(value["commit"], "commit")
    _object_id(value["adapter"], "adapter")
    _string(value["name"], "name", text=True, empty=False)
    for k, v in _object(value["values"], "values").items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise SchemaError(f"values[{k[:40]!r}]", "must be a number or null")
    by = _fields(value["measured_by"], "measured_by", {"name", "email", "site"})
    _string(by["name"], "measured_by.name", text=True)
    _string(by["email"], "measured_by.email", text=True)
    _optional(_string)(by["site"], "measured_by.site", text=True)
    _optional(_object)(value["code"], "code")
    _object(value["scorer"], "scorer")
    _timestamp(value["timestamp"], "timestamp")
    _object(value["tool"], "tool")
    if "message" in value:
        _string(value["message"], "message")
    if "signature" in value:
        signature(value["signature"])
    return value


RULES: Mapping[str, Callable[[Any], dict[str, Any]]] = {"adapter": adapter, "commit": commit, "tag": tag}
