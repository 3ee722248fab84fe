"""Reading notes as evidence: each note decoded, its signature checked, its problems named.

Notes are stored by mfgit.repo.notes; this module says what each one is
worth. A note is ``ok`` only when it is a well-formed note about the commit
it is attached to and its signature, if any, verifies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mfgit.audit.signing import check_signature
from mfgit.errors import ObjectNotFound
from mfgit.objects.canonical import CanonicalError, canonical_json, parse_canonical
from mfgit.refs import NOTES_REF
from mfgit.repo.notes import NOTE_FORMAT, read_index

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


@dataclass(frozen=True)
class _SignedNote:
    """Adapter for mfgit.audit.signing.check_signature (it wants .signature and .signing_payload())."""

    body: dict[str, Any]
    signature: Any

    def signing_payload(self) -> bytes:
        return canonical_json(self.body)


def check_note(note: dict[str, Any]) -> dict[str, Any]:
    """The signature status of a note dict: {"status": good|bad|unsigned, "reason", "key_id"}."""
    body = {k: v for k, v in note.items() if k != "signature"}
    chk = check_signature(_SignedNote(body, note.get("signature")))
    return {"status": chk.status, "reason": chk.reason, "key_id": chk.key_id}


def read_note(repo: "BaseRepository", nid: str, commit_id: str | None = None) -> dict[str, Any]:
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


def notes_for(repo: "BaseRepository", commit_id: str, index: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """Every note attached to `commit_id`, checked (see read_note), oldest first."""
    idx = read_index(repo) if index is None else index
    notes = [read_note(repo, nid, commit_id) for nid in idx.get(commit_id, [])]
    notes.sort(key=lambda n: (str(n.get("timestamp") or ""), n["id"]))
    return notes


def notes_by_commit(repo: "BaseRepository", commit_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """commit id → its checked notes, for the commits listed (empty when the repository has no notes)."""
    if repo.refs.read(NOTES_REF) is None:
        return {}
    index = read_index(repo)
    return {cid: notes_for(repo, cid, index) for cid in commit_ids if cid in index}
