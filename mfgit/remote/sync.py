"""push / fetch / clone over any Transport.

A remote has the layout of a bare repository: ``config``, ``HEAD``,
``objects/ab/cdef…`` (object files exactly as stored locally) and
``refs/heads/…``, ``refs/tags/…`` holding commit ids. So ``mfgit init --bare
PATH`` makes a remote, and a remote folder can be opened as a repository.

Guarantees (docs/design.md, "Remotes"):

* Objects before refs: push uploads every object the remote lacks, then
  moves the remote ref by compare-and-swap (S3 If-Match / If-None-Match, a
  lock file on a folder). A push killed at any moment leaves the ref at a
  complete commit; running it again sends only what did not arrive.
* Fetch checks every received object against its id (full SHA-256) before
  it enters the store, and stores bottom-up (tensors, then the adapter,
  then the commit, oldest commit first), so a local commit is only ever
  present with everything it needs. An interrupted fetch leaves only
  complete objects behind, and the next fetch resumes.
* Negotiation walks only the commits that are new to one side: it stops at
  commits the other side is known to have, so its cost follows the size of
  the change, not the length of the history.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from mfgit.errors import (
    CorruptObject,
    MalformedObject,
    NonFastForward,
    ObjectNotFound,
    RefConflict,
    RemoteError,
    UnsupportedRepositoryFormat,
)
from mfgit.objects.model import decode_object, is_object_id
from mfgit.refs import check_ref_name
from mfgit.remote.transport import KeyNotFound, PreconditionFailed, Transport

if TYPE_CHECKING:
    from mfgit.api.repository import Repository

HEADS = "refs/heads/"
TAGS = "refs/tags/"
REMOTE_CONFIG = (
    "[core]\n"
    "objectformat = sha256\n"
    "formatversion = 1\n"
    "bare = true\n"
)

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def object_key(oid: str) -> str:
    return f"objects/{oid[:2]}/{oid[2:]}"


@dataclass
class TransferReport:
    objects: int = 0
    bytes: int = 0
    skipped: int = 0
    refs: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    negotiation_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"objects": self.objects, "bytes": self.bytes, "skipped": self.skipped, "refs": self.refs,
                "seconds": round(self.seconds, 4), "negotiation_seconds": round(self.negotiation_seconds, 4)}


# -- remote metadata ---------------------------------------------------------------------


def check_remote_format(transport: Transport, *, create: bool) -> bool:
    """Refuse a remote whose format we do not know; create it if asked. True if it exists."""
    try:
        data = transport.get("config")
    except KeyNotFound:
        if not create:
            return False
        try:
            transport.put_if("config", REMOTE_CONFIG.encode(), None)
            transport.put_if("HEAD", b"ref: refs/heads/main\n", None)
        except PreconditionFailed:
            pass  # someone else created it at the same time
        return True
    import configparser

    cp = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        cp.read_string(data.decode("utf-8"))
        fmt, ver = cp.get("core", "objectformat"), cp.get("core", "formatversion")
    except (configparser.Error, UnicodeDecodeError):
        raise RemoteError(transport.url, "its config is unreadable; is this an mfgit remote?") from None
    if fmt != "sha256" or ver != "1":
        raise UnsupportedRepositoryFormat(transport.url, fmt, ver)
    return True


def remote_refs(transport: Transport) -> dict[str, str]:
    """refs/heads/* and refs/tags/* of the remote → commit (or tag) ids."""
    out: dict[str, str] = {}
    keys = [k for k in transport.list("refs/") if not k.endswith(".lock") and "/.tmp-" not in k]
    values = dict(transport.get_many(keys)) if keys else {}
    for key in keys:
        value = values.get(key, b"").decode("utf-8", "replace").strip()
        if is_object_id(value):
            out[key] = value
    return out


def remote_head(transport: Transport) -> str | None:
    try:
        value = transport.get("HEAD").decode("utf-8").strip()
    except KeyNotFound:
        return None
    if value.startswith("ref: "):
        return value[5:]
    return None


# -- object closure ------------------------------------------------------------------------


def _commit_objects(repo: "Repository", cid: str) -> tuple[list[str], list[str]]:
    """(parents, objects of this commit: the commit, its adapter, tensors and blobs)."""
    commit = repo.read_commit(cid)
    adapter = repo.read_adapter(commit.adapter)
    return list(commit.parents), [cid, commit.adapter, *adapter.referenced_ids()]


def objects_to_push(repo: "Repository", tips: Iterable[str], remote_has: set[str]) -> tuple[list[str], set[str]]:
    """Objects of the commits reachable from `tips` but not from `remote_has`.

    Returns (candidates in upload order, objects known to be on the remote).
    The walk stops at commits the remote is known to have; the adapters of
    those boundary commits tell which tensors need no existence check.
    """
    order: list[str] = []
    known_remote: set[str] = set()
    seen: set[str] = set()
    stack = list(tips)
    new_commits: list[str] = []
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        if cid in remote_has:
            try:
                _, objs = _commit_objects(repo, cid)
                known_remote.update(objs)
            except ObjectNotFound:
                pass
            continue
        parents, objs = _commit_objects(repo, cid)
        new_commits.append(cid)
        stack.extend(parents)
    # Upload order: tensors and blobs, adapters, then commits oldest first, so
    # that even without the final ref update the remote only gains objects
    # whose dependencies are there.
    leaf_objs: list[str] = []
    adapters: list[str] = []
    for cid in reversed(new_commits):
        commit = repo.read_commit(cid)
        adapter = repo.read_adapter(commit.adapter)
        leaf_objs.extend(adapter.referenced_ids())
        adapters.append(commit.adapter)
    seen_objs: set[str] = set()
    for oid in [*leaf_objs, *adapters, *reversed(new_commits)]:
        if oid not in seen_objs and oid not in known_remote:
            seen_objs.add(oid)
            order.append(oid)
    return order, known_remote


# -- push ----------------------------------------------------------------------------------


def push(repo: "Repository", transport: Transport, remote_name: str, src: str, dst: str | None = None, *,
         force: bool = False, progress: Progress | None = None, tags: bool = False) -> TransferReport:
    """Push local revision `src` to remote branch `dst` (default: the same name)."""
    t0 = time.perf_counter()
    report = TransferReport()
    check_remote_format(transport, create=True)
    local = repo.resolve(src)
    if dst is None:
        dst = src if not src.startswith(HEADS) else src[len(HEADS):]
    dst_ref = dst if dst.startswith("refs/") else HEADS + dst
    check_ref_name(dst_ref)
    current = transport.get_versioned(dst_ref)
    remote_value, version = (None, None)
    if current is not None:
        remote_value = current[0].decode("utf-8", "replace").strip()
        version = current[1]
    if remote_value == local:
        report.refs.append({"ref": dst_ref, "old": remote_value, "new": local, "status": "up to date"})
        _update_tracking(repo, remote_name, dst_ref, local)
        report.seconds = time.perf_counter() - t0
        return report
    if remote_value and not force:
        if not is_object_id(remote_value) or not repo.store.has(remote_value) or not repo.is_ancestor(remote_value, local):
            raise NonFastForward(dst_ref, local, remote_value or "")
    # What the remote has: every remote-tracking ref of this remote that we
    # know, plus the remote's current value of this ref when we have it.
    remote_has: set[str] = set()
    for ref, oid in repo.refs.items(f"refs/remotes/{remote_name}/").items():
        remote_has.add(oid)
    if remote_value and is_object_id(remote_value) and repo.store.has(remote_value):
        remote_has.add(remote_value)
    candidates, _known = objects_to_push(repo, [local], remote_has)
    missing = _missing_on_remote(transport, candidates)
    report.negotiation_seconds = time.perf_counter() - t0
    report.skipped = len(candidates) - len(missing)
    sizes = {oid: repo.store.stored_size(oid) for oid in missing}
    total = sum(sizes.values())
    done = 0

    def items():
        for oid in missing:
            yield object_key(oid), repo.store.read_stored(oid)

    def on_done(_key: str, n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    if missing:
        # Tensors and blobs first, commits last: put_many keeps the order of
        # submission for completion of each group only loosely, so upload in
        # two phases to keep "dependencies first" on the remote.
        structural = [o for o in missing if _is_structural(repo, o)]
        leaves = [o for o in missing if o not in set(structural)]
        transport.put_many(((object_key(o), repo.store.read_stored(o)) for o in leaves), on_done)
        transport.put_many(((object_key(o), repo.store.read_stored(o)) for o in structural), on_done)
    report.objects = len(missing)
    report.bytes = total
    # Objects before refs (invariant 4): only now may the remote ref move.
    try:
        transport.put_if(dst_ref, (local + "\n").encode(), version)
    except PreconditionFailed:
        raise RefConflict(f"{remote_name}/{dst_ref[len(HEADS):] if dst_ref.startswith(HEADS) else dst_ref}",
                          "(moved by someone else)", remote_value) from None
    report.refs.append({"ref": dst_ref, "old": remote_value, "new": local,
                        "status": "forced update" if remote_value and force else ("new" if not remote_value else "fast-forward")})
    _update_tracking(repo, remote_name, dst_ref, local)
    report.seconds = time.perf_counter() - t0
    return report


def _is_structural(repo: "Repository", oid: str) -> bool:
    try:
        kind, _ = repo.store.get(oid)
    except (ObjectNotFound, CorruptObject, MalformedObject):
        return False
    return kind in ("commit", "adapter", "tag")


def _missing_on_remote(transport: Transport, candidates: list[str]) -> list[str]:
    if not candidates:
        return []
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:
        present = list(pool.map(lambda o: transport.exists(object_key(o)), candidates))
    return [o for o, p in zip(candidates, present) if not p]


def _update_tracking(repo: "Repository", remote_name: str, ref: str, value: str) -> None:
    if ref.startswith(HEADS):
        tracking = f"refs/remotes/{remote_name}/{ref[len(HEADS):]}"
        repo.refs.update(tracking, value, who=repo._who(), message=f"update by push/fetch")


# -- fetch ---------------------------------------------------------------------------------


def fetch(repo: "Repository", transport: Transport, remote_name: str, *, refs: list[str] | None = None,
          progress: Progress | None = None, tags: bool = True) -> TransferReport:
    """Download the commits of the remote's branches (and tags) that we lack."""
    t0 = time.perf_counter()
    report = TransferReport()
    if not check_remote_format(transport, create=False):
        raise RemoteError(transport.url, "is not an mfgit repository (no config); push to it first or create it with mfgit init --bare")
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
    stack = [oid for oid in wanted.values() if not repo.store.has(oid)]
    while stack:
        batch = [o for o in dict.fromkeys(stack) if o not in pending and not repo.store.has(o)]
        stack = []
        if not batch:
            break
        for oid, data in _download(transport, batch):
            obj = _verified(oid, data, transport)
            pending[oid] = data
            order.append(oid)
            if obj[0] == "commit":
                stack.extend(p for p in obj[1].parents if not repo.store.has(p))
            elif obj[0] == "tag":
                if not repo.store.has(obj[1].target):
                    stack.append(obj[1].target)
    report.negotiation_seconds = time.perf_counter() - t0
    # Adapters of the new commits, then their missing tensors.
    commits = {o: decode_object(o, "commit", _payload(o, d)) for o, d in pending.items() if _kind(d) == "commit"}
    adapter_ids = [c.adapter for c in commits.values() if not repo.store.has(c.adapter)]
    adapters: dict[str, Any] = {}
    adapter_bytes: dict[str, bytes] = {}
    for oid, data in _download(transport, list(dict.fromkeys(adapter_ids))):
        kind, obj = _verified(oid, data, transport)
        adapters[oid] = obj
        adapter_bytes[oid] = data
    need = []
    for a in adapters.values():
        need.extend(t for t in a.referenced_ids() if not repo.store.has(t))
    need = list(dict.fromkeys(need))
    sizes_total = [0]
    done = [0]

    def count(n: int) -> None:
        done[0] += n
        report.bytes += n
        if progress:
            progress(done[0], max(done[0], sizes_total[0]))

    repo.store.begin_batch()
    try:
        for oid, data in _download(transport, need):
            repo.store.put_received(oid, data)  # full SHA-256 check inside
            report.objects += 1
            count(len(data))
    except BaseException:
        repo.store.end_batch()
        raise
    repo.store.end_batch()
    for oid, data in adapter_bytes.items():
        repo.store.put_received(oid, data)
        report.objects += 1
        count(len(data))
    # Commits oldest first: a commit is stored only once its parents are.
    stored: set[str] = set()

    def store_commit(oid: str) -> None:
        if oid in stored or repo.store.has(oid):
            return
        c = commits.get(oid)
        if c is not None:
            for p in c.parents:
                if p in pending:
                    store_commit(p)
        repo.store.put_received(oid, pending[oid])
        stored.add(oid)
        report.objects += 1
        count(len(pending[oid]))

    for oid in order:
        if _kind(pending[oid]) == "commit":
            store_commit(oid)
    for oid in order:
        if _kind(pending[oid]) == "tag":
            repo.store.put_received(oid, pending[oid])
            report.objects += 1
    # Refs last.
    for ref, oid in sorted(wanted.items()):
        if ref.startswith(HEADS):
            tracking = f"refs/remotes/{remote_name}/{ref[len(HEADS):]}"
            old = repo.refs.read(tracking)
            if old != oid:
                repo.refs.update(tracking, oid, who=repo._who(), message=f"fetch {remote_name}")
                report.refs.append({"ref": tracking, "old": old, "new": oid})
        elif ref.startswith(TAGS):
            if repo.refs.read(ref) is None:
                repo.refs.update(ref, oid, None, who=repo._who(), message=f"fetch {remote_name}")
                report.refs.append({"ref": ref, "old": None, "new": oid})
    # Tracking refs of branches deleted on the remote are pruned.
    if refs is None:
        for tracking in repo.refs.names(f"refs/remotes/{remote_name}/"):
            branch = tracking[len(f"refs/remotes/{remote_name}/"):]
            if HEADS + branch not in all_refs:
                old = repo.refs.read(tracking)
                repo.refs.update(tracking, None, who=repo._who(), message=f"fetch {remote_name}: pruned")
                report.refs.append({"ref": tracking, "old": old, "new": None})
    report.seconds = time.perf_counter() - t0
    return report


def _download(transport: Transport, oids: list[str]):
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


def _kind(data: bytes) -> str:
    from mfgit.store.objectstore import _CODE_KIND

    return _CODE_KIND.get(data[5], "?") if len(data) > 5 else "?"


def _payload(oid: str, data: bytes) -> bytes:
    from mfgit.store.objectstore import decode_stored

    return decode_stored(oid, data, verify=False)[1]


def _verified(oid: str, data: bytes, transport: Transport):
    """Decode and SHA-256-check an object received from the remote."""
    from mfgit.store.objectstore import decode_stored

    try:
        kind, payload = decode_stored(oid, data, verify=True)
    except CorruptObject as e:
        raise CorruptObject(oid, e.expected, e.actual, e.algorithm,
                            f"received from {transport.url}; it was not stored") from None
    if kind in ("tensor", "blob"):
        return kind, None
    return kind, decode_object(oid, kind, payload)


def pretty_refs(report: TransferReport) -> str:
    return json.dumps(report.to_dict(), indent=2)
