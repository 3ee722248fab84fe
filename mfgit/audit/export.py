"""export: a commit as a PEFT adapter directory, with a model card and a signed manifest.

``export REV OUTDIR [--card] [--manifest]`` writes

* the PEFT adapter directory of REV (``adapter_config.json``,
  ``adapter_model.safetensors`` and the adapter's other files), as
  ``checkout`` does, but with ``base_model_name_or_path`` in ``adapter_config.json`` a Hub id
  or null, never a local path (``checkout`` writes the config as committed);
* ``README.md``, a Hugging Face model card whose YAML front matter says
  ``base_model: <Hub id>``, ``base_model_relation: adapter`` (a merge
  composite too) and the committed card's metadata: without ``card``, the
  text of the card the commit was made with (if any); with ``card``, the
  commit, the lineage summary (leaves and effective weights), the merge
  recipe, and then that text;
* with ``manifest``: ``model.sig``, a SHA-256 manifest of every exported file
  in the format of the OpenSSF model-signing project (v1.0 predicate
  ``https://model_signing/signature/v1.0`` in an in-toto Statement v1, in a
  DSSE envelope, in a Sigstore bundle v0.3 with a public-key hint), signed
  with an ECDSA key, so that

      model_signing verify key --signature OUTDIR/model.sig --public_key KEY.pub.pem OUTDIR

  accepts the directory. model-signing's key method verifies ECDSA keys only
  (P-256, P-384, P-521), so the manifest key is ``signing.manifestKey`` (or
  ``signing.key`` when that is an ECDSA key); make one with
  ``mfgit keygen --type ecdsa-p256 PATH``.

It writes no attachment, and with ``force`` it refuses, before writing
anything, an OUTDIR that already holds a private attachment's bytes
(mfgit.audit.export_private): the directory is for publishing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from mfgit.audit.export_private import refuse_private_bytes
from mfgit.audit.keys import load_ec_private_key
from mfgit.audit.lineage import lineage
from mfgit.errors import InvalidHubId, IsAMixture, SigningKeyError, UnsafePath
from mfgit.formats import peft as peftfmt
from mfgit.formats.hubcard import CARD_NAME
from mfgit.formats.hubcard import body as card_body
from mfgit.render.card import committed_card, model_card
from mfgit.repo.attachments import entry_bytes
from mfgit.repo.checkout import card_entry, checkout
from mfgit.store.fileio import atomic_write

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository

SIGNATURE_NAME = "model.sig"
# What model-signing ignores by default; recorded in the statement so its
# verifier ignores the same paths.
IGNORE_PATHS = [SIGNATURE_NAME, ".gitattributes", ".github", ".git", ".gitignore"]
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"


def _write_file(out: Path, name: str, data: bytes) -> Path:
    target = out / name
    atomic_write(target, data, mode=0o644)  # replaces a symlink itself, never follows it
    return target


# -- model card ----------------------------------------------------------------------------------

# A Hub repository id as huggingface_hub's validate_repo_id accepts it: a name, or owner/name, of
# letters, digits, '-', '_' and '.', at most 96 characters, with no '--' or '..' and not starting
# or ending with '-' or '.'. A local path (what PEFT records for a model loaded from disk) is not one.
_HUB_ID = re.compile(r"(?:[\w.-]{1,96}/)?[\w.-]{1,96}")


def hub_model_id(name: Any) -> str | None:
    """`name` if it is a valid Hub model id, else None (a path, a URL, empty)."""
    if not isinstance(name, str) or not _HUB_ID.fullmatch(name) or "--" in name or ".." in name:
        return None
    if any(part[:1] in "-." or part[-1:] in "-." for part in name.split("/")):
        return None
    return name



def hub_base_model(repo: "BaseRepository", cid: str, base_model_id: str | None = None) -> str | None:
    """The base model of `cid` as a Hub id, or None: `base_model_id` if given, else the commit's
    base-model name or the config's base_model_name_or_path when either is a Hub id, else the
    base_model of the card the adapter was committed with — for a merge composite, the one
    Hub id the cards of its leaves (the site commits) agree on."""
    if base_model_id:
        return hub_model_id(base_model_id)
    commit = repo.read_commit(cid)
    adapter = repo.read_adapter(commit.adapter)
    prov = commit.provenance or {}
    found = (hub_model_id((adapter.base_model or {}).get("name"))
             or hub_model_id(adapter.config.get("base_model_name_or_path"))
             or hub_model_id((prov.get("card") or {}).get("base_model")))
    if found or prov.get("kind") != "merge":
        return found
    named = {hub_model_id((repo.read_commit(leaf["commit"]).provenance or {}).get("card", {}).get("base_model"))
             for leaf in lineage(repo, cid)["leaves"] if leaf.get("commit")}
    named.discard(None)
    return named.pop() if len(named) == 1 else None


def leaf_card_metadata(repo: "BaseRepository", lineage: dict[str, Any]) -> dict[str, Any]:
    """What the cards of a composite's leaves say of it: the union of their `datasets` and
    `language` lists (sorted: the same whatever order the leaves come in), and the `license` when every leaf that names one names
    the same. A license the leaves disagree on is no license of the composite: none is written."""
    cards = [(repo.read_commit(leaf["commit"]).provenance or {}).get("card") or {}
             for leaf in lineage["leaves"] if leaf.get("commit")]
    out: dict[str, Any] = {}
    for key in ("datasets", "language"):
        values = [v for c in cards for v in (c.get(key) if isinstance(c.get(key), list) else [c.get(key)])
                  if isinstance(v, str)]
        if values:
            out[key] = sorted(set(values))
    licenses = {c["license"] for c in cards if isinstance(c.get("license"), str)}
    if len(licenses) == 1:
        out["license"] = licenses.pop()
    return out


def committed_card_body(repo: "BaseRepository", cid: str, commit, adapter) -> str | None:
    """The text of the card the commit was made with, without its front matter (None without a card):
    its attachment README.md, or the manifest's README.md for commits made before that."""
    entry = card_entry(adapter, commit)
    if entry is not None:
        data = entry_bytes(repo, cid, commit, entry)
    elif CARD_NAME in adapter.files:
        data = repo.read_object(adapter.files[CARD_NAME]).data
    else:
        return None
    return card_body(bytes(data).decode("utf-8", "replace"))


def card_document(repo: "BaseRepository", cid: str, lineage: dict[str, Any], *,
                  base_model_id: str | None = None) -> dict[str, Any]:
    """What the model card of `cid` shows, as data (`mfgit.render.card.model_card` writes the text).

    `base_model` is a Hub id or None: `base_model_id` if given, else the
    commit's base-model name or the config's base_model_name_or_path when
    either is a Hub id, else the base_model of the card it was committed
    with; a local path is never written (the Hub rejects it).
    `base_model_recorded` keeps a path that was dropped, for the warning.
    A merge composite without a card of its own takes the metadata its
    leaves' cards agree on (`leaf_card_metadata`).
    """
    commit = repo.read_commit(cid)
    adapter = repo.read_adapter(commit.adapter)
    recorded = (adapter.base_model or {}).get("name") or adapter.config.get("base_model_name_or_path")
    prov = commit.provenance or {}
    is_merge = prov.get("kind") == "merge"
    card = prov.get("card") or (leaf_card_metadata(repo, lineage) if is_merge else {})
    base = hub_base_model(repo, cid, base_model_id)
    doc: dict[str, Any] = {
        "commit": cid,
        "adapter": commit.adapter,
        "message": commit.message,
        "author": commit.author or {},
        "site": commit.site,
        "timestamp": commit.timestamp,
        "signed_key": commit.signature.get("key_id", "?") if commit.signature else None,
        "ranks": sorted({m["r"] for m in adapter.modules.values()}),
        "modules": len(adapter.modules),
        "base_model": base,
        "base_model_recorded": recorded,
        "card_metadata": card,
        "card_body": committed_card_body(repo, cid, commit, adapter),
        "is_merge": is_merge,
    }
    if is_merge:
        doc["leaves"] = lineage["leaves"]
        doc["merges"] = len(lineage["nodes"]) - len(lineage["leaves"])
        doc["recipe"] = {
            "recipe": prov.get("recipe"),
            "inputs": prov.get("inputs"),
            "integration": (prov.get("integration") or {}).get("mode"),
            "kept_energy": prov.get("kept_energy"),
            "device": prov.get("device"),
        }
    else:
        doc["source"] = prov.get("source") or {}
        doc["code"] = prov.get("code") or {}
        doc["meta"] = prov.get("meta") or {}
    return doc


def _write_hub_config(repo: "BaseRepository", cid: str, out: Path, base_model_id: str | None,
                      warnings: list[str]) -> str | None:
    """Rewrite the exported adapter_config.json with base_model_name_or_path a Hub id (or null).

    PEFT records where the base model was loaded from, a local path for any
    model loaded from disk; a published adapter names its base model on the
    Hub, so a path is never written. `checkout` writes the config as committed."""
    adapter = repo.read_adapter(repo.read_commit(cid).adapter)
    base = hub_base_model(repo, cid, base_model_id)
    recorded = adapter.config.get("base_model_name_or_path")
    if base is None and recorded is not None:
        warnings.append(f"adapter_config.json's base_model_name_or_path {recorded!r} is not a Hub model id and is "
                        "written as null; name it with --base-model-id ID")
    if base != recorded:
        _write_file(out, peftfmt.CONFIG_NAME, peftfmt.config_bytes({**adapter.config, "base_model_name_or_path": base}))
    return base


# -- OpenSSF model-signing manifest ---------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _ignored(rel: PurePosixPath) -> bool:
    return any(rel == PurePosixPath(p) or PurePosixPath(p) in rel.parents for p in IGNORE_PATHS)


def manifest_statement(out: Path, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The in-toto statement over every file under `out` (model-signing "files" serialization)."""
    resources = []
    for path in sorted(out.rglob("*"), key=lambda p: PurePosixPath(p.relative_to(out).as_posix())):
        rel = PurePosixPath(path.relative_to(out).as_posix())
        if _ignored(rel):
            continue
        if path.is_symlink():
            raise UnsafePath(str(path), "the export directory holds a symbolic link; model-signing refuses those")
        if path.is_file():
            resources.append({"name": str(rel), "algorithm": "sha256", "digest": _sha256_file(path)})
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    predicate: dict[str, Any] = {
        "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": False,
                          "ignore_paths": list(IGNORE_PATHS)},
        "resources": resources,
    }
    if extra:
        predicate.update(extra)
    name = out.name or os.path.basename(str(out.resolve()))
    return {"_type": STATEMENT_TYPE, "subject": [{"name": name, "digest": {"sha256": root}}],
            "predicateType": PREDICATE_TYPE, "predicate": predicate}


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    return b"DSSEv1 %d %s %d " % (len(payload_type), payload_type.encode(), len(payload)) + payload


def sign_statement(statement: dict[str, Any], private_key) -> dict[str, Any]:
    """A Sigstore bundle (v0.3, public-key hint, no transparency log) over the DSSE envelope."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    hash_for = {256: hashes.SHA256, 384: hashes.SHA384, 521: hashes.SHA512}
    size = private_key.curve.key_size
    if size not in hash_for:
        raise SigningKeyError("-", f"ECDSA curve {private_key.curve.name} is not supported by model-signing")
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    sig = private_key.sign(pae(PAYLOAD_TYPE, payload), ec.ECDSA(hash_for[size]()))
    pem = private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": hashlib.sha256(pem).hexdigest()}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(sig).decode("ascii"), "keyid": ""}],
        },
    }


def manifest_key_path(repo: "BaseRepository", explicit: str | os.PathLike | None = None) -> Path:
    value = explicit or repo.config.get("signing.manifestKey") or repo.config.get("signing.key")
    if not value:
        raise SigningKeyError("(none)", "no key to sign the manifest with: set signing.manifestKey (an ECDSA key: "
                                        "mfgit keygen --type ecdsa-p256 PATH) or pass --key PATH")
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = (repo.worktree or repo.gitdir or Path(".")) / p
    return p


# -- the verb ------------------------------------------------------------------------------------


def export(repo: "BaseRepository", rev: str, outdir: str | os.PathLike, *, card: bool = False, manifest: bool = False,
           force: bool = False, key: str | os.PathLike | None = None,
           base_model_id: str | None = None) -> dict[str, Any]:
    """Write `rev` as a PEFT adapter directory at `outdir`, with a card and/or a signed manifest.

    `base_model_id`: the Hub id the card names as base_model (it must be a
    valid one: InvalidHubId otherwise). Without it and without a Hub id on
    record, the card has no base_model and the report's `warnings` say why.
    """
    if base_model_id is not None and hub_model_id(base_model_id) is None:
        raise InvalidHubId(base_model_id)
    if repo.read_commit(repo.resolve(rev)).is_mixture:  # --- mixture ---
        raise IsAMixture(rev, "export writes one PEFT adapter; write its members and mixture.json with "
                              "mfgit checkout, or export each member")

    cid = repo.resolve(rev)
    private_key = None
    key_path = None
    if manifest:  # fail before writing anything when there is no usable key
        key_path = manifest_key_path(repo, key)
        private_key = load_ec_private_key(key_path)
    # Export writes no attachment; with --force the directory may hold some already (a checkout
    # --with-attachments), which would be published and signed with it. Without --force a directory
    # with files in it is refused by checkout, so it is not read.
    if force:
        refuse_private_bytes(repo, repo.read_commit(cid), outdir)
    out = Path(checkout(repo, cid, outdir, force=force))
    report: dict[str, Any] = {"commit": cid, "dir": str(out), "card": None, "manifest": None, "warnings": []}
    report["base_model"] = _write_hub_config(repo, cid, out, base_model_id, report["warnings"])
    # The committed card is published too, its front matter brought to the Hub's conventions;
    # --card adds mfgit's record of the commit and its lineage.
    doc = card_document(repo, cid, lineage(repo, cid), base_model_id=base_model_id)
    if card or doc["card_body"] is not None:
        if doc["base_model"] is None:
            report["warnings"].append(
                f"the card has no base_model: the recorded base model {doc['base_model_recorded']!r} is not a Hub "
                "model id; name it with --base-model-id ID")
        text = model_card(doc) if card else committed_card(doc)
        report["card"] = str(_write_file(out, CARD_NAME, text.encode("utf-8")))
    if manifest:
        commit = repo.read_commit(cid)
        stmt = manifest_statement(out, extra={"mfgit": {"commit": cid, "adapter": commit.adapter}})
        bundle = sign_statement(stmt, private_key)
        path = _write_file(out, SIGNATURE_NAME, (json.dumps(bundle, indent=2) + "\n").encode("utf-8"))
        report["manifest"] = str(path)
        report["manifest_key"] = str(key_path)
        report["root_digest"] = stmt["subject"][0]["digest"]["sha256"]
        report["files"] = [r["name"] for r in stmt["predicate"]["resources"]]
    else:
        report["files"] = sorted(str(PurePosixPath(p.relative_to(out).as_posix())) for p in out.rglob("*") if p.is_file())
    return report
