"""Notes: metrics attached to commits, measured at the sites, signed, append-only.

A site evaluates a commit on its own private data (``mfgit eval REV --score
MOD:FUNC --name NAME``); only the numbers leave the site, as a *note*. The
format (docs/search-and-eval.md, "Notes"):

* **A note** is a ``blob`` object holding canonical JSON::

      {"format": "mfgit-note/1", "kind": "metrics",
       "commit": "<commit id>", "adapter": "<adapter id of that commit>",
       "name": "breakhis-val", "values": {"score": 0.12, "auc": 0.97, ...},
       "measured_by": {"name": ..., "email": ..., "site": ...},
       "code": {"commit": ..., "branch": ..., "remote_url": ..., "dirty": ...} | null,
       "scorer": {"score": "mypkg.evaluate:score", "base": ..., "data": ...},
       "timestamp": "2025-...Z", "tool": {"mfgit": ..., "torch": ...},
       "message": "...",                          (optional)
       "signature": {"format": "ed25519", ...}}   (when signing.key is set)

  The signature (mfgit.audit.signing, the same keys as commits) covers the
  canonical JSON of the note without its ``signature`` field. A note's id is
  the blob's id, so a note can never change: an edited note is another note,
  and its old signature no longer verifies.
* **The notes ref** ``refs/notes/metrics`` names a *notes snapshot*: a
  commit with no parents whose provenance is ``{"kind": "notes", "format":
  1, "index": {commit id: [note ids, sorted]}}`` and whose manifest (an
  adapter object with no tensors) lists every note blob in ``files``. Like
  git's notes (a commit whose tree holds the note blobs), this keeps notes
  reachable for ``gc``, checked by ``fsck`` and transferable by the same
  object protocol as everything else, with no special case anywhere.
* **Append-only.** Notes are only ever added; two indexes merge by union,
  which never conflicts. Every update of the ref is a compare-and-swap
  (``refs.update(name, new, expected)``) retried on conflict, locally and on
  a remote (``push --notes`` unions with the remote's index first).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from mfgit.errors import ConfigError, MalformedObject, ObjectNotFound, RefConflict, ScoreError
from mfgit.objects.canonical import CanonicalError, canonical_json, parse_canonical
from mfgit.objects.model import is_object_id

if TYPE_CHECKING:
    from mfgit.api.repository import Repository

NOTES_REF = "refs/notes/metrics"
NOTE_FORMAT = "mfgit-note/1"
SNAPSHOT_FORMAT = 1
_RETRIES = 20


# -- reading ------------------------------------------------------------------------------------------


def is_snapshot(commit) -> bool:
    return (commit.provenance or {}).get("kind") == "notes"


def read_index(repo: "Repository", snapshot: str | None = None) -> dict[str, list[str]]:
    """commit id → sorted note ids, from `snapshot` (default: the notes ref); {} when there are none."""
    if snapshot is None:
        snapshot = repo.refs.read(NOTES_REF)
        if snapshot is None:
            return {}
    commit = repo.read_commit(snapshot)
    prov = commit.provenance or {}
    if prov.get("kind") != "notes" or not isinstance(prov.get("index"), dict):
        raise MalformedObject(snapshot, f"{NOTES_REF} must name a notes snapshot (provenance kind 'notes')")
    index: dict[str, list[str]] = {}
    for cid, ids in prov["index"].items():
        if not is_object_id(cid) or not isinstance(ids, list) or not all(isinstance(i, str) and is_object_id(i) for i in ids):
            raise MalformedObject(snapshot, f"notes index entry {cid[:16]!r} is not commit id -> [note ids]")
        index[cid] = sorted(set(ids))
    return index


def union(*indexes: dict[str, list[str]]) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {}
    for idx in indexes:
        for cid, ids in idx.items():
            out.setdefault(cid, set()).update(ids)
    return {cid: sorted(ids) for cid, ids in sorted(out.items())}


def count(index: dict[str, list[str]]) -> int:
    return sum(len(v) for v in index.values())


@dataclass(frozen=True)
class _SignedNote:
    """Adapter for mfgit.audit.signing.check_signature (it wants .signature and .signing_payload())."""

    body: dict[str, Any]
    signature: Any

    def signing_payload(self) -> bytes:
        return canonical_json(self.body)


def check_note(note: dict[str, Any]) -> dict[str, Any]:
    """The signature status of a note dict: {"status": good|bad|unsigned, "reason", "key_id"}."""
    from mfgit.audit.signing import check_signature

    body = {k: v for k, v in note.items() if k != "signature"}
    chk = check_signature(_SignedNote(body, note.get("signature")))
    return {"status": chk.status, "reason": chk.reason, "key_id": chk.key_id}


def read_note(repo: "Repository", nid: str, commit_id: str | None = None) -> dict[str, Any]:
    """A note by id, decoded and checked: its fields plus ``id``, ``signature``
    (the check), ``ok`` and, when not ok, ``problem``."""
    problem = None
    try:
        kind, payload = repo.store.get(nid)
    except ObjectNotFound:
        return {"id": nid, "ok": False, "problem": "the note object is missing", "signature": {"status": "unsigned",
                "reason": "missing", "key_id": None}}
    if kind != "blob":
        return {"id": nid, "ok": False, "problem": f"a {kind}, not a note blob",
                "signature": {"status": "unsigned", "reason": "not a note", "key_id": None}}
    try:
        note = parse_canonical(bytes(payload))
        if not isinstance(note, dict):
            raise CanonicalError("not an object")
    except CanonicalError as e:
        return {"id": nid, "ok": False, "problem": f"not a canonical JSON note ({e})",
                "signature": {"status": "unsigned", "reason": "unreadable", "key_id": None}}
    sig = check_note(note)
    out = {k: v for k, v in note.items() if k != "signature"}
    out["id"] = nid
    out["signature"] = sig
    if note.get("format") != NOTE_FORMAT:
        problem = f"unknown note format {note.get('format')!r}"
    elif sig["status"] == "bad":
        problem = f"bad signature: {sig['reason']}"
    elif commit_id is not None and note.get("commit") != commit_id:
        problem = f"the note is about commit {str(note.get('commit'))[:12]}, not {commit_id[:12]}"
    elif not isinstance(note.get("values"), dict):
        problem = "the note has no values"
    out["ok"] = problem is None
    if problem:
        out["problem"] = problem
    return out


def notes_for(repo: "Repository", commit_id: str, index: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """Every note attached to `commit_id`, checked (see read_note), oldest first."""
    idx = read_index(repo) if index is None else index
    notes = [read_note(repo, nid, commit_id) for nid in idx.get(commit_id, [])]
    notes.sort(key=lambda n: (str(n.get("timestamp") or ""), n["id"]))
    return notes


def show(repo: "Repository", rev: str = "HEAD") -> dict[str, Any]:
    cid = repo.resolve(rev)
    notes = notes_for(repo, cid)
    return {"commit": cid, "notes": notes, "ok": all(n["ok"] for n in notes)}


def listing(repo: "Repository") -> dict[str, Any]:
    """Every annotated commit with its note names (no signature checks: see show for those)."""
    snap = repo.refs.read(NOTES_REF)
    index = read_index(repo, snap) if snap else {}
    return {"ref": NOTES_REF, "snapshot": snap, "notes": count(index),
            "commits": [{"commit": cid, "notes": ids} for cid, ids in index.items()]}


# -- writing --------------------------------------------------------------------------------------------


def _ident(repo: "Repository") -> dict[str, str]:
    try:
        return repo.identity()
    except ConfigError:
        return {"name": "unknown", "email": "unknown"}


def write_snapshot(repo: "Repository", index: dict[str, list[str]]) -> str:
    """Store a notes snapshot of `index` (every note blob must be present); return its commit id."""
    from mfgit.objects.model import Adapter, Commit
    from mfgit.refs.refstore import utc_now

    ids = sorted({nid for v in index.values() for nid in v})
    for nid in ids:
        if not repo.store.has(nid):
            raise ObjectNotFound(nid)
    manifest = Adapter(config={"mfgit_notes": SNAPSHOT_FORMAT}, base_model={"name": None, "revision": None},
                       tensors={}, modules={}, metadata={"kind": "notes"}, files={nid: nid for nid in ids})
    aid = repo.put_adapter(manifest)
    commit = Commit(adapter=aid, parents=(), author=_ident(repo), site=repo.site(), timestamp=utc_now(),
                    message=f"notes: {len(ids)} note(s) on {len(index)} commit(s)",
                    provenance={"kind": "notes", "format": SNAPSHOT_FORMAT, "ref": NOTES_REF,
                                "index": {cid: sorted(v) for cid, v in sorted(index.items())}})
    return repo.put_commit(commit)


def integrate(repo: "Repository", index: dict[str, list[str]], *, snapshot: str | None = None,
              message: str = "notes") -> str | None:
    """Union `index` into the local notes ref (compare-and-swap, retried); return the ref's new value.

    `snapshot`, when given, is a stored snapshot holding exactly `index`:
    adopted as it is when it already holds everything we have.
    """
    for _ in range(_RETRIES):
        old = repo.refs.read(NOTES_REF)
        mine = read_index(repo, old) if old else {}
        merged = union(mine, index)
        if merged == mine:
            return old
        new = snapshot if (snapshot is not None and merged == union(index)) else write_snapshot(repo, merged)
        try:
            repo.refs.update(NOTES_REF, new, old, who=repo._who(), message=message)
            return new
        except RefConflict:
            time.sleep(0.01)
    raise RefConflict(NOTES_REF, repo.refs.read(NOTES_REF), None)


def add_notes(repo: "Repository", notes: Sequence[dict[str, Any]]) -> list[str]:
    """Store note dicts as blobs and attach them (one ref update for all); return their ids."""
    ids, index = [], {}
    for note in notes:
        nid = repo.store.put("blob", canonical_json(note))
        ids.append(nid)
        index.setdefault(note["commit"], []).append(nid)
    integrate(repo, union(index), message=f"notes: add {len(ids)}")
    return ids


def _signing_key(repo: "Repository", sign: Any):
    """None (unsigned) or a SigningKey: sign=None signs when config signing.key is set."""
    from mfgit.api.audit import signing_key_path
    from mfgit.audit.signing import SigningKey, load_signing_key

    if sign is False:
        return None
    if isinstance(sign, SigningKey):
        return sign
    if sign is None and not repo.config.get("signing.key"):
        return None
    if isinstance(sign, (str, bytes)) or hasattr(sign, "__fspath__"):
        return load_signing_key(sign)
    return load_signing_key(signing_key_path(repo))


def make_note(repo: "Repository", commit_id: str, name: str, values: dict[str, float], *,
              scorer: dict[str, Any] | None = None, code: dict[str, Any] | None = None,
              message: str | None = None, key=None, timestamp: str | None = None) -> dict[str, Any]:
    from mfgit.api.provenance import library_versions
    from mfgit.refs.refstore import utc_now

    clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in values.items()}
    ident = repo.identity()
    note: dict[str, Any] = {
        "format": NOTE_FORMAT,
        "kind": "metrics",
        "commit": commit_id,
        "adapter": repo.read_commit(commit_id).adapter,
        "name": name,
        "values": clean,
        "measured_by": {"name": ident["name"], "email": ident["email"], "site": repo.site()},
        "code": code,
        "scorer": {k: v for k, v in (scorer or {}).items() if k != "code"},
        "timestamp": timestamp or utc_now(),
        "tool": library_versions(),
    }
    if message:
        note["message"] = message
    if key is not None:
        note["signature"] = key.signature_for(canonical_json(note))
    return note


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or any(ord(c) < 0x20 for c in name) \
            or "," in name:
        raise ScoreError("-", f"--name {name!r}: give a short name for the data evaluated on, e.g. breakhis-val "
                              "(no commas)")
    return name.strip()


def evaluate(repo: "Repository", revs: Iterable[str], *, score: Any, name: str, base: Any = None, data: Any = None,
             code: Any = None, message: str | None = None, sign: Any = None) -> list[dict[str, Any]]:
    """Score each revision with the user's function at this site and attach the values as notes.

    The score function gets the commit's adapter loaded as a PeftModel onto
    the base model, and the data object the data loader returns (this
    site's own data) — nothing else; only the returned numbers are
    recorded. See mfgit.api.search.resolve_scorer for how score, base and
    data are found. Returns the notes written, as read back (see read_note).
    """
    from pathlib import Path

    from mfgit.api.provenance import code_revision
    from mfgit.api.search import resolve_scorer

    name = check_name(name)
    revs = list(revs)
    if not revs:
        raise ScoreError("-", "name at least one revision to evaluate")
    commits = [repo.resolve(r) for r in revs]
    key = _signing_key(repo, sign)
    repo.identity()  # who measured: fail before any work
    scorer = resolve_scorer(score, base, data)
    code_info = code_revision(Path(code), required=True) if code else scorer.record.get("code")
    notes = []
    base_model = scorer.base_model()
    for cid in commits:
        model = repo.load_adapter(base_model, cid)
        try:
            model.eval()
            values = scorer(model)
        finally:
            model.unload()  # back to the plain base model for the next revision
        notes.append(make_note(repo, cid, name, values, scorer=scorer.record, code=code_info, message=message, key=key))
    ids = add_notes(repo, notes)
    return [read_note(repo, i, n["commit"]) for n, i in zip(notes, ids)]
