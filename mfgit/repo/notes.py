"""Notes storage: metrics attached to commits, append-only, under refs/notes/metrics.

A note is a ``blob`` of canonical JSON (format ``mfgit-note/1``, see
docs/search-and-eval.md); its id is the blob's id, so a note never changes.
``refs/notes/metrics`` names a *notes snapshot*: a commit with no parents
whose provenance is ``{"kind": "notes", "format": 1, "index": {commit id:
[note ids, sorted]}}`` and whose manifest (an adapter object with no
tensors) lists every note blob in ``files`` — git's notes design (a commit
whose tree holds the note blobs), so gc, fsck and the transfer protocol
handle notes with no special case. Two indexes merge by union, which never
conflicts; every update of the ref is a compare-and-swap retried on
conflict, locally and on a remote.

This module stores and indexes notes. Whether a note can be trusted (its
signature, its signer's site) is judged above, in mfgit.audit.notes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

from mfgit.errors import ConfigError, MalformedObject, ObjectNotFound, RefConflict
from mfgit.objects.canonical import canonical_json
from mfgit.objects.model import Adapter, Commit, is_object_id
from mfgit.objects.timestamp import utc_now
from mfgit.refs import NOTES_REF

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository

NOTE_FORMAT = "mfgit-note/1"
SNAPSHOT_FORMAT = 1
_RETRIES = 20


def is_snapshot(commit: Commit) -> bool:
    return (commit.provenance or {}).get("kind") == "notes"


def read_index(repo: "BaseRepository", snapshot: str | None = None) -> dict[str, list[str]]:
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


def _ident(repo: "BaseRepository") -> dict[str, str]:
    try:
        return repo.identity()
    except ConfigError:
        return {"name": "unknown", "email": "unknown"}


def write_snapshot(repo: "BaseRepository", index: dict[str, list[str]]) -> str:
    """Store a notes snapshot of `index` (every note blob must be present); return its commit id."""
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


def integrate(repo: "BaseRepository", index: dict[str, list[str]], *, snapshot: str | None = None,
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
            repo.refs.update(NOTES_REF, new, old, who=repo.who(), message=message)
            return new
        except RefConflict:
            time.sleep(0.01)
    raise RefConflict(NOTES_REF, repo.refs.read(NOTES_REF), None)


def add_notes(repo: "BaseRepository", notes: Sequence[dict[str, Any]]) -> list[str]:
    """Store note dicts as blobs and attach them (one ref update for all); return their ids."""
    ids, index = [], {}
    for note in notes:
        nid = repo.store.put("blob", canonical_json(note))
        ids.append(nid)
        index.setdefault(note["commit"], []).append(nid)
    integrate(repo, union(index), message=f"notes: add {len(ids)}")
    return ids
