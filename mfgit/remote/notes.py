"""Notes over a remote: union with the remote's snapshot, objects first, then compare-and-swap.

Notes are append-only, so two snapshots merge by union and never conflict:
a push that loses the swap to another site fetches theirs, unions and tries
again; nothing is lost.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from mfgit.errors import KeyNotFound, PreconditionFailed, RefConflict, RemoteError
from mfgit.objects.model import is_object_id
from mfgit.refs import NOTES_REF
from mfgit.remote.fetch import check_kind, download, verified
from mfgit.remote.negotiation import missing_on_remote
from mfgit.remote.protocol import ensure_remote, object_key
from mfgit.remote.push import outgoing
from mfgit.remote.transport import Transport
from mfgit.repo import notes as notes_store
from mfgit.repo.crash import crashpoint

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


def _notes_tip(transport: Transport) -> tuple[str | None, str | None]:
    """(snapshot commit id, version) of the remote's notes ref; (None, None) when it has none."""
    try:
        cur = transport.get_versioned(NOTES_REF)
    except KeyNotFound:
        cur = None
    if cur is None:
        return None, None
    value = cur[0].decode("utf-8", "replace").strip()
    if not is_object_id(value):
        raise RemoteError(transport.url, f"{NOTES_REF} holds {value[:80]!r}, not an object id")
    return value, cur[1]


def _receive_notes_snapshot(repo: "BaseRepository", transport: Transport, cid: str) -> tuple[int, int]:
    """Download a notes snapshot we lack (commit, manifest, note blobs), verified, stored bottom-up.

    Returns (objects, bytes) received. Everything is checked against its id
    and its kind before it is stored; the commit is stored last.
    """
    if repo.store.has(cid):
        return 0, 0
    received = [0, 0]
    (_, data), = list(download(transport, [cid]))
    kind, commit = verified(cid, data, transport)
    check_kind(transport, cid, kind, NOTES_REF, "commit")
    if (commit.provenance or {}).get("kind") != "notes" or commit.parents:
        raise RemoteError(transport.url, f"{NOTES_REF} names commit {cid[:12]}, which is not a notes snapshot")
    adapter_data = None
    if not repo.store.has(commit.adapter):
        (_, adapter_data), = list(download(transport, [commit.adapter]))
        akind, manifest = verified(commit.adapter, adapter_data, transport)
        check_kind(transport, commit.adapter, akind, f"notes snapshot {cid[:12]}", "adapter")
    else:
        manifest = repo.read_adapter(commit.adapter)
    if manifest.tensors or manifest.modules:
        raise RemoteError(transport.url, f"notes snapshot {cid[:12]} names tensors; it is not a notes manifest")
    need = [b for b in dict.fromkeys(manifest.files.values()) if not repo.store.has(b)]
    for oid, blob in download(transport, need):
        bkind, _ = verified(oid, blob, transport)
        check_kind(transport, oid, bkind, f"notes snapshot {cid[:12]}", "blob")
        repo.store.put_received(oid, blob)
        received[0] += 1
        received[1] += len(blob)
    if adapter_data is not None:
        repo.store.put_received(commit.adapter, adapter_data)
        received[0] += 1
        received[1] += len(adapter_data)
    repo.store.put_received(cid, data)
    received[0] += 1
    received[1] += len(data)
    return received[0], received[1]


def fetch_notes(repo: "BaseRepository", transport: Transport, remote_name: str) -> dict[str, Any]:
    """Download the remote's notes and union them into the local refs/notes/metrics."""
    t0 = time.perf_counter()
    ensure_remote(transport)
    before = notes_store.count(notes_store.read_index(repo))
    tip, _version = _notes_tip(transport)
    objects = nbytes = 0
    if tip is not None:
        objects, nbytes = _receive_notes_snapshot(repo, transport, tip)
        crashpoint("fetch-notes-before-ref")
        notes_store.integrate(repo, notes_store.read_index(repo, tip), snapshot=tip, message=f"fetch {remote_name} --notes")
    after = notes_store.count(notes_store.read_index(repo))
    return {"ref": NOTES_REF, "remote": tip, "local": repo.refs.read(NOTES_REF), "new_notes": after - before,
            "notes": after, "objects": objects, "bytes": nbytes, "seconds": round(time.perf_counter() - t0, 4)}


def push_notes(repo: "BaseRepository", transport: Transport, remote_name: str, *, retries: int = 10,
               create: bool = False) -> dict[str, Any]:
    """Send our notes: union with the remote's, upload missing objects, then compare-and-swap the ref.

    Objects before refs: the note blobs, the snapshot manifest and the
    snapshot commit are uploaded before the remote ref moves. If another
    site pushed notes meanwhile, the swap fails; their snapshot is fetched,
    unioned, and the push is tried again (notes are append-only, so the
    union never conflicts and nothing is lost).
    """
    t0 = time.perf_counter()
    ensure_remote(transport, create=create, writing=True)
    objects = nbytes = 0
    for _ in range(retries):
        tip, version = _notes_tip(transport)
        remote_index: dict[str, list[str]] = {}
        if tip is not None:
            _receive_notes_snapshot(repo, transport, tip)
            remote_index = notes_store.read_index(repo, tip)
            notes_store.integrate(repo, remote_index, snapshot=tip, message=f"push {remote_name} --notes: remote notes")
        local = repo.refs.read(NOTES_REF)
        if local is None or local == tip:
            status = "up to date" if local is not None else "no notes"
            return {"ref": NOTES_REF, "old": tip, "new": tip, "status": status, "objects": objects, "bytes": nbytes,
                    "notes": notes_store.count(remote_index), "seconds": round(time.perf_counter() - t0, 4)}
        commit = repo.read_commit(local)
        manifest = repo.read_adapter(commit.adapter)
        candidates = [*dict.fromkeys(manifest.files.values()), commit.adapter, local]
        missing = missing_on_remote(transport, candidates)
        blobs = [o for o in missing if o not in (commit.adapter, local)]
        for group in (blobs, [o for o in missing if o == commit.adapter], [o for o in missing if o == local]):
            if group:
                sizes = [repo.store.stored_size(o) for o in group]
                transport.put_many(((object_key(o), outgoing(repo, o)) for o in group), None)
                objects += len(group)
                nbytes += sum(sizes)
        crashpoint("push-notes-before-ref")
        try:
            transport.put_if(NOTES_REF, (local + "\n").encode(), version)
        except PreconditionFailed:
            continue  # another site pushed notes: union with theirs and try again
        return {"ref": NOTES_REF, "old": tip, "new": local, "status": "new" if tip is None else "updated",
                "objects": objects, "bytes": nbytes, "notes": notes_store.count(notes_store.read_index(repo, local)),
                "seconds": round(time.perf_counter() - t0, 4)}
    raise RefConflict(f"{remote_name}:{NOTES_REF}", None, None)
