"""fetch: download the commits of the remote's branches that we lack, verified, stored bottom-up.

Fetch checks every received object against its id (full SHA-256) before it
enters the store, and stores bottom-up (tensors, then the adapter, then the
commit, oldest commit first), so a local commit is only ever present with
everything it needs. An interrupted fetch leaves only complete objects
behind, and the next fetch resumes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from mfgit.errors import CorruptObject, KeyNotFound, MalformedObject, RemoteError
from mfgit.objects.model import decode_object
from mfgit.parallel import bounded_map
from mfgit.refs import HEADS, REMOTES, TAGS
from mfgit.remote.negotiation import topo_order
from mfgit.remote.protocol import (
    CHECK_WORKERS,
    Progress,
    TransferReport,
    ensure_remote,
    object_key,
    remote_refs,
)
from mfgit.remote.transport import Transport
from mfgit.repo.crash import crashpoint
from mfgit.store.frame import decode_stored, stored_kind

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


def fetch(repo: "BaseRepository", transport: Transport, remote_name: str, *, refs: list[str] | None = None,
          progress: Progress | None = None, tags: bool = True) -> TransferReport:
    """Download the commits of the remote's branches (and tags) that we lack."""
    t0 = time.perf_counter()
    report = TransferReport()
    ensure_remote(transport)
    all_refs = remote_refs(transport)
    wanted = {}
    for ref, oid in all_refs.items():
        if ref.startswith(HEADS) and (refs is None or ref[len(HEADS):] in refs or ref in refs):
            wanted[ref] = oid
        elif ref.startswith(TAGS) and tags:
            wanted[ref] = oid
    # Walk the remote's history down to commits we have, fetching commit
    # objects into memory first (they are stored last, bottom-up).
    pending: dict[str, bytes] = {}
    order: list[str] = []
    # What each object must be: a branch and a parent name a commit, a tag
    # ref a tag or a commit. A remote whose ref names a tensor would
    # otherwise leave a tracking ref at something that is not a commit.
    # What we already have is freshened as it is found (git's rule; it takes the
    # store's writer lock): a gc cannot delete an old unreachable commit between
    # our finding it here and the tracking ref reaching it.
    have = repo.store.freshen
    expect: dict[str, tuple[str, str]] = {}
    for ref, oid in wanted.items():
        expect.setdefault(oid, (ref, "commit") if ref.startswith(HEADS) else (ref, "commit or tag"))
        if have(oid):
            check_kind(transport, oid, stored_kind(repo.store.read_stored(oid)), *expect[oid])
    stack = [oid for oid in wanted.values() if not have(oid)]
    while stack:
        batch = [o for o in dict.fromkeys(stack) if o not in pending and not have(o)]
        stack = []
        if not batch:
            break
        for oid, data in download(transport, batch):
            obj = verified(oid, data, transport)
            check_kind(transport, oid, obj[0], *expect.get(oid, ("a parent", "commit")))
            pending[oid] = data
            order.append(oid)
            if obj[0] == "commit":
                for p in obj[1].parents:
                    expect.setdefault(p, (f"the parent of {oid[:12]}", "commit"))
                stack.extend(p for p in obj[1].parents if not have(p))
            elif obj[0] == "tag":
                expect.setdefault(obj[1].target, (f"tag {oid[:12]}", "commit or tag"))
                if not have(obj[1].target):
                    stack.append(obj[1].target)
    report.negotiation_seconds = time.perf_counter() - t0
    # Adapters of the new commits, then their missing tensors.
    commits = {o: decode_object(o, "commit", _payload(o, d)) for o, d in pending.items() if stored_kind(d) == "commit"}
    adapter_ids = [c.adapter for c in commits.values() if not have(c.adapter)]
    adapters: dict[str, Any] = {}
    adapter_bytes: dict[str, bytes] = {}
    for oid, data in download(transport, list(dict.fromkeys(adapter_ids))):
        kind, obj = verified(oid, data, transport)
        check_kind(transport, oid, kind, "a commit's adapter", "adapter")
        adapters[oid] = obj
        adapter_bytes[oid] = data
    need = []
    for a in adapters.values():
        need.extend(t for t in a.referenced_ids() if not have(t))
    # --- attachments: the new commits' public ones (blobs), stored before the commits ---
    for c in commits.values():
        need.extend(b for b in c.attachment_ids() if not have(b))
    # --- end attachments ---
    need = list(dict.fromkeys(need))
    sizes_total = [0]
    done = [0]

    def count(n: int) -> None:
        done[0] += n
        report.bytes += n
        if progress:
            progress(done[0], max(done[0], sizes_total[0]))

    def receive(oid: str, data: bytes) -> int:
        try:
            repo.store.put_received(oid, data)  # full check (XXH3 and SHA-256) before it is written
        except CorruptObject as e:
            raise CorruptObject(oid, e.expected, e.actual, e.algorithm,
                                f"received from {transport.url}; it was not stored") from None
        return len(data)

    repo.store.begin_batch()
    try:
        # Checking and writing run on a few threads next to the downloads
        # (hashing, decompression and file writes release the GIL).
        for n in bounded_map(lambda item: receive(*item), download(transport, need), CHECK_WORKERS):
            report.objects += 1
            count(n)
    except BaseException:
        repo.store.end_batch()
        raise
    repo.store.end_batch()
    crashpoint("fetch-after-tensors")
    for oid, data in adapter_bytes.items():
        repo.store.put_received(oid, data)
        report.objects += 1
        count(len(data))
    # Commits oldest first: a commit is stored only once its parents are
    # (iteratively: a fetched history can be thousands of commits deep).
    for oid in topo_order({o: list(c.parents) for o, c in commits.items()}):
        if repo.store.has(oid):
            continue
        repo.store.put_received(oid, pending[oid])
        report.objects += 1
        count(len(pending[oid]))
    for oid in order:
        if stored_kind(pending[oid]) == "tag":
            repo.store.put_received(oid, pending[oid])
            report.objects += 1
    # Refs last, one at a time: each is at its old value or at a complete commit.
    crashpoint("fetch-before-refs")
    for ref, oid in sorted(wanted.items()):
        if ref.startswith(HEADS):
            tracking = f"{REMOTES}{remote_name}/{ref[len(HEADS):]}"
            old = repo.refs.read(tracking)
            if old != oid:
                repo.refs.update(tracking, oid, who=repo.who(), message=f"fetch {remote_name}")
                report.refs.append({"ref": tracking, "old": old, "new": oid})
                crashpoint("fetch-between-refs")
        elif ref.startswith(TAGS):
            if repo.refs.read(ref) is None:
                repo.refs.update(ref, oid, None, who=repo.who(), message=f"fetch {remote_name}")
                report.refs.append({"ref": ref, "old": None, "new": oid})
    # Tracking refs of branches deleted on the remote are pruned.
    if refs is None:
        for tracking in repo.refs.names(f"{REMOTES}{remote_name}/"):
            branch = tracking[len(f"{REMOTES}{remote_name}/"):]
            if HEADS + branch not in all_refs:
                old = repo.refs.read(tracking)
                repo.refs.update(tracking, None, who=repo.who(), message=f"fetch {remote_name}: pruned")
                report.refs.append({"ref": tracking, "old": old, "new": None})
    report.seconds = time.perf_counter() - t0
    return report


def repair_objects(repo: "BaseRepository", transport: Transport, oids: list[str]) -> tuple[list[str], list[str]]:
    """Replace missing or damaged local objects with the remote's copies.

    Each object is downloaded and checked in full (XXH3-128 and SHA-256
    against its id) before it is stored; a damaged local copy is replaced
    atomically (ObjectStore.put_received). Returns (repaired, unavailable):
    the ids stored, and those the remote does not have or has damaged too,
    which are left as they were.
    """
    ensure_remote(transport)

    def one(oid: str) -> tuple[str, bool]:
        try:
            data = transport.get(object_key(oid))
        except KeyNotFound:
            return oid, False
        try:
            # False when the local copy verifies after all (a malformed
            # object whose bytes are the id's, a passing read error): the
            # remote had nothing better, so nothing was repaired.
            return oid, repo.store.put_received(oid, data)
        except (CorruptObject, MalformedObject):
            return oid, False

    repaired, unavailable = [], []
    for oid, ok in bounded_map(one, list(dict.fromkeys(oids)), CHECK_WORKERS):
        (repaired if ok else unavailable).append(oid)
    return sorted(repaired), sorted(unavailable)


def download(transport: Transport, oids: list[str]):
    if not oids:
        return
    keys = {object_key(o): o for o in oids}
    try:
        for key, data in transport.get_many(list(keys)):
            yield keys[key], data
    except KeyNotFound as e:
        missing = getattr(e, "key", str(e))
        raise RemoteError(transport.url, f"object {keys.get(missing, missing)} is missing on the remote "
                          "(the remote is damaged; push it again from a site that has it)") from None


def check_kind(transport: Transport, oid: str, kind: str, what: str, allowed: str) -> None:
    if kind not in allowed.split(" or "):
        raise RemoteError(transport.url, f"{what} names object {oid}, a {kind}, not a {allowed} "
                          "(the remote is damaged; push the branch again from a site that has it)")


def _payload(oid: str, data: bytes) -> bytes:
    return decode_stored(oid, data, verify=False)[1]


def verified(oid: str, data: bytes, transport: Transport):
    """Decode and SHA-256-check an object received from the remote."""
    try:
        kind, payload = decode_stored(oid, data, verify=True)
    except CorruptObject as e:
        raise CorruptObject(oid, e.expected, e.actual, e.algorithm,
                            f"received from {transport.url}; it was not stored") from None
    if kind in ("tensor", "blob"):
        return kind, None
    return kind, decode_object(oid, kind, payload)
