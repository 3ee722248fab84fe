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
  commits the other side is known to have (push: the current values of the
  remote's refs; fetch: commits already in the local store), so its cost
  follows the size of the change, not the length of the history.
* Every object and ref name read from a remote is data: ids are checked,
  a branch must name a commit, nothing is executed.
"""

from __future__ import annotations

import json
import os
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
from mfgit.remote.transport import KeyNotFound, PreconditionFailed, Transport, _bounded_map

_CHECK_WORKERS = max(2, min(8, os.cpu_count() or 2))  # threads checking and storing received objects

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
    values: dict[str, bytes] = {}

    def one(key: str) -> tuple[str, bytes | None]:
        # Each on its own: a ref deleted between list and get is simply gone.
        try:
            return key, transport.get(key)
        except KeyNotFound:
            return key, None

    if len(keys) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(16, len(keys))) as pool:
            got = list(pool.map(one, keys))
    else:
        got = [one(k) for k in keys]
    values = {k: v for k, v in got if v is not None}
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


@dataclass
class PushPlan:
    """What a push may have to send, in dependency classes."""

    leaves: list[str]  # tensors and blobs
    adapters: list[str]
    commits: dict[str, list[str]]  # new commit -> its parents
    known_remote: set[str]  # objects of boundary commits: on the remote already

    @property
    def order(self) -> list[str]:
        return [*self.leaves, *self.adapters, *topo_order(self.commits)]


def topo_order(parents: dict[str, list[str]]) -> list[str]:
    """The commits of `parents` (commit -> parent ids), every parent that is
    itself a key before its children. Iterative: histories are deep."""
    return [c for wave in commit_waves(parents) for c in wave]


def commit_waves(parents: dict[str, list[str]]) -> list[list[str]]:
    """Group commits so that each comes in a later wave than its parents
    among them (wave 0: no parent among them)."""
    level: dict[str, int] = {}
    for start in parents:
        if start in level:
            continue
        stack = [start]
        while stack:
            c = stack[-1]
            if c in level:
                stack.pop()
                continue
            todo = [p for p in parents[c] if p in parents and p not in level]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            level[c] = 1 + max((level[p] for p in parents[c] if p in parents), default=-1)
    waves: list[list[str]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for c in parents:  # keeps the callers' order within a wave
        waves[level[c]].append(c)
    return waves


def plan_push(repo: "Repository", tips: Iterable[str], remote_has: set[str]) -> PushPlan:
    """The objects of the commits reachable from `tips` but not from `remote_has`.

    The walk stops at commits the remote is known to have; the adapters of
    those boundary commits tell which tensors need no existence check.
    """
    known_remote: set[str] = set()
    seen: set[str] = set()
    stack = list(tips)
    new_commits: dict[str, list[str]] = {}
    adapters: list[str] = []
    leaves: list[str] = []
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
        commit = repo.read_commit(cid)
        adapter = repo.read_adapter(commit.adapter)
        new_commits[cid] = list(commit.parents)
        adapters.append(commit.adapter)
        leaves.extend(adapter.referenced_ids())
        stack.extend(commit.parents)

    def fresh(ids: list[str]) -> list[str]:
        return [o for o in dict.fromkeys(ids) if o not in known_remote]

    return PushPlan(fresh(leaves), fresh(adapters),
                    {c: p for c, p in new_commits.items() if c not in known_remote}, known_remote)


def objects_to_push(repo: "Repository", tips: Iterable[str], remote_has: set[str]) -> tuple[list[str], set[str]]:
    """(candidates in upload order, objects known to be on the remote); see `plan_push`."""
    plan = plan_push(repo, tips, remote_has)
    return plan.order, plan.known_remote


# -- push ----------------------------------------------------------------------------------


def push(repo: "Repository", transport: Transport, remote_name: str, src: str, dst: str | None = None, *,
         force: bool = False, progress: Progress | None = None, tags: bool = False) -> TransferReport:
    """Push local revision `src` to remote branch `dst` (default: the same name)."""
    t0 = time.perf_counter()
    report = TransferReport()
    # A remote without a config is new (push writes the config before any
    # object): nothing there to ask about. Otherwise it is checked, and every
    # candidate object is asked for, so a push killed midway resumes.
    new_remote = not check_remote_format(transport, create=False)
    if new_remote:
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
    # What the remote has, where the walk stops: the current values of its
    # refs, each at a complete commit (objects before refs). Not our
    # remote-tracking refs: they may be stale (a remote emptied or recreated
    # would then get a commit without its history).
    remote_has: set[str] = {o for o in remote_refs(transport).values() if repo.store.has(o)}
    if remote_value and is_object_id(remote_value) and repo.store.has(remote_value):
        remote_has.add(remote_value)
    plan = plan_push(repo, [local], remote_has)
    candidates = plan.order
    missing = list(candidates) if new_remote else _missing_on_remote(transport, candidates)
    report.negotiation_seconds = time.perf_counter() - t0
    report.skipped = len(candidates) - len(missing)
    sizes = {oid: repo.store.stored_size(oid) for oid in missing}
    total = sum(sizes.values())
    done = 0

    def on_done(_key: str, n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    def upload(oids: list[str]) -> None:
        if oids:
            transport.put_many(((object_key(o), _outgoing(repo, o)) for o in oids), on_done)

    if missing:
        # Dependencies first, each group finished before the next starts:
        # tensors and blobs, then adapters, then commits (oldest first, in
        # parallel). A push killed before its ref update leaves no adapter
        # without its tensors and no commit without its adapter; what it
        # leaves is reachable from no ref, and the next push skips it.
        todo = set(missing)
        upload([o for o in plan.leaves if o in todo])
        upload([o for o in plan.adapters if o in todo])
        upload([c for c in topo_order(plan.commits) if c in todo])
    report.objects = len(missing)
    report.bytes = total
    from mfgit.api.repository import _crashpoint  # lazily: the remote layer does not import the API

    _crashpoint("push-before-ref")
    # Objects before refs (invariant 4): only now may the remote ref move.
    try:
        transport.put_if(dst_ref, (local + "\n").encode(), version)
    except PreconditionFailed:
        # Someone else moved the ref since we read it.
        now = transport.get_versioned(dst_ref)
        theirs = now[0].decode("utf-8", "replace").strip() if now is not None else ""
        if force:
            raise RefConflict(f"{remote_name}/{dst_ref[len(HEADS):] if dst_ref.startswith(HEADS) else dst_ref}",
                              theirs or None, remote_value) from None
        raise NonFastForward(dst_ref, local, theirs) from None
    report.refs.append({"ref": dst_ref, "old": remote_value, "new": local,
                        "status": "forced update" if remote_value and force else ("new" if not remote_value else "fast-forward")})
    _update_tracking(repo, remote_name, dst_ref, local)
    report.seconds = time.perf_counter() - t0
    return report


def _outgoing(repo: "Repository", oid: str) -> bytes:
    """A local object's stored bytes, checked (XXH3-128) before they leave.

    A damaged local copy is never sent: the push stops with the object's
    name, the remote keeps its ref, and the fix is fsck --repair-from.
    """
    from mfgit.store.objectstore import check_frame

    data = repo.store.read_stored(oid)
    try:
        check_frame(oid, data)
    except CorruptObject as e:
        raise CorruptObject(oid, e.expected, e.actual, e.algorithm, "the local copy; it was not sent") from None
    return data


def _missing_on_remote(transport: Transport, candidates: list[str]) -> list[str]:
    if not candidates:
        return []
    if len(candidates) == 1:
        return [] if transport.exists(object_key(candidates[0])) else list(candidates)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(16, len(candidates))) as pool:
        present = list(pool.map(lambda o: transport.exists(object_key(o)), candidates))
    return [o for o, p in zip(candidates, present) if not p]


def _update_tracking(repo: "Repository", remote_name: str, ref: str, value: str) -> None:
    if ref.startswith(HEADS):
        tracking = f"refs/remotes/{remote_name}/{ref[len(HEADS):]}"
        repo.refs.update(tracking, value, who=repo._who(), message="update by push/fetch")


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
    # What each object must be: a branch and a parent name a commit, a tag
    # ref a tag or a commit. A remote whose ref names a tensor would
    # otherwise leave a tracking ref at something that is not a commit.
    expect: dict[str, tuple[str, str]] = {}
    for ref, oid in wanted.items():
        expect.setdefault(oid, (ref, "commit") if ref.startswith(HEADS) else (ref, "commit or tag"))
        if repo.store.has(oid):
            _check_kind(transport, oid, _kind(repo.store.read_stored(oid)), *expect[oid])
    stack = [oid for oid in wanted.values() if not repo.store.has(oid)]
    while stack:
        batch = [o for o in dict.fromkeys(stack) if o not in pending and not repo.store.has(o)]
        stack = []
        if not batch:
            break
        for oid, data in _download(transport, batch):
            obj = _verified(oid, data, transport)
            _check_kind(transport, oid, obj[0], *expect.get(oid, ("a parent", "commit")))
            pending[oid] = data
            order.append(oid)
            if obj[0] == "commit":
                for p in obj[1].parents:
                    expect.setdefault(p, (f"the parent of {oid[:12]}", "commit"))
                stack.extend(p for p in obj[1].parents if not repo.store.has(p))
            elif obj[0] == "tag":
                expect.setdefault(obj[1].target, (f"tag {oid[:12]}", "commit or tag"))
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
        _check_kind(transport, oid, kind, "a commit's adapter", "adapter")
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
        for n in _bounded_map(lambda item: receive(*item), _download(transport, need), _CHECK_WORKERS):
            report.objects += 1
            count(n)
    except BaseException:
        repo.store.end_batch()
        raise
    repo.store.end_batch()
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


def repair_objects(repo: "Repository", transport: Transport, oids: list[str]) -> tuple[list[str], list[str]]:
    """Replace missing or damaged local objects with the remote's copies.

    Each object is downloaded and checked in full (XXH3-128 and SHA-256
    against its id) before it is stored; a damaged local copy is replaced
    atomically (ObjectStore.put_received). Returns (repaired, unavailable):
    the ids stored, and those the remote does not have or has damaged too,
    which are left as they were.
    """
    if not check_remote_format(transport, create=False):
        raise RemoteError(transport.url, "is not an mfgit repository (no config); name a remote that holds this history")

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
    for oid, ok in _bounded_map(one, list(dict.fromkeys(oids)), _CHECK_WORKERS):
        (repaired if ok else unavailable).append(oid)
    return sorted(repaired), sorted(unavailable)


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


def _check_kind(transport: Transport, oid: str, kind: str, what: str, allowed: str) -> None:
    if kind not in allowed.split(" or "):
        raise RemoteError(transport.url, f"{what} names object {oid}, a {kind}, not a {allowed} "
                          "(the remote is damaged; push the branch again from a site that has it)")


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


# -- notes (refs/notes/metrics: metrics measured at the sites; mfgit.api.notes) -------------------------

NOTES_REF = "refs/notes/metrics"


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


def _receive_notes_snapshot(repo: "Repository", transport: Transport, cid: str) -> tuple[int, int]:
    """Download a notes snapshot we lack (commit, manifest, note blobs), verified, stored bottom-up.

    Returns (objects, bytes) received. Everything is checked against its id
    and its kind before it is stored; the commit is stored last.
    """
    if repo.store.has(cid):
        return 0, 0
    received = [0, 0]
    (_, data), = list(_download(transport, [cid]))
    kind, commit = _verified(cid, data, transport)
    _check_kind(transport, cid, kind, NOTES_REF, "commit")
    if (commit.provenance or {}).get("kind") != "notes" or commit.parents:
        raise RemoteError(transport.url, f"{NOTES_REF} names commit {cid[:12]}, which is not a notes snapshot")
    adapter_data = None
    if not repo.store.has(commit.adapter):
        (_, adapter_data), = list(_download(transport, [commit.adapter]))
        akind, manifest = _verified(commit.adapter, adapter_data, transport)
        _check_kind(transport, commit.adapter, akind, f"notes snapshot {cid[:12]}", "adapter")
    else:
        manifest = repo.read_adapter(commit.adapter)
    if manifest.tensors or manifest.modules:
        raise RemoteError(transport.url, f"notes snapshot {cid[:12]} names tensors; it is not a notes manifest")
    need = [b for b in dict.fromkeys(manifest.files.values()) if not repo.store.has(b)]
    for oid, blob in _download(transport, need):
        bkind, _ = _verified(oid, blob, transport)
        _check_kind(transport, oid, bkind, f"notes snapshot {cid[:12]}", "blob")
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


def fetch_notes(repo: "Repository", transport: Transport, remote_name: str) -> dict[str, Any]:
    """Download the remote's notes and union them into the local refs/notes/metrics."""
    from mfgit.api import notes as notes_api

    t0 = time.perf_counter()
    if not check_remote_format(transport, create=False):
        raise RemoteError(transport.url, "is not an mfgit repository (no config)")
    before = notes_api.count(notes_api.read_index(repo))
    tip, _version = _notes_tip(transport)
    objects = nbytes = 0
    if tip is not None:
        objects, nbytes = _receive_notes_snapshot(repo, transport, tip)
        notes_api.integrate(repo, notes_api.read_index(repo, tip), snapshot=tip, message=f"fetch {remote_name} --notes")
    after = notes_api.count(notes_api.read_index(repo))
    return {"ref": NOTES_REF, "remote": tip, "local": repo.refs.read(NOTES_REF), "new_notes": after - before,
            "notes": after, "objects": objects, "bytes": nbytes, "seconds": round(time.perf_counter() - t0, 4)}


def push_notes(repo: "Repository", transport: Transport, remote_name: str, *, retries: int = 10) -> dict[str, Any]:
    """Send our notes: union with the remote's, upload missing objects, then compare-and-swap the ref.

    Objects before refs: the note blobs, the snapshot manifest and the
    snapshot commit are uploaded before the remote ref moves. If another
    site pushed notes meanwhile, the swap fails; their snapshot is fetched,
    unioned, and the push is tried again (notes are append-only, so the
    union never conflicts and nothing is lost).
    """
    from mfgit.api import notes as notes_api

    t0 = time.perf_counter()
    check_remote_format(transport, create=True)
    objects = nbytes = 0
    for _ in range(retries):
        tip, version = _notes_tip(transport)
        remote_index: dict[str, list[str]] = {}
        if tip is not None:
            _receive_notes_snapshot(repo, transport, tip)
            remote_index = notes_api.read_index(repo, tip)
            notes_api.integrate(repo, remote_index, snapshot=tip, message=f"push {remote_name} --notes: remote notes")
        local = repo.refs.read(NOTES_REF)
        if local is None or local == tip:
            status = "up to date" if local is not None else "no notes"
            return {"ref": NOTES_REF, "old": tip, "new": tip, "status": status, "objects": objects, "bytes": nbytes,
                    "notes": notes_api.count(remote_index), "seconds": round(time.perf_counter() - t0, 4)}
        commit = repo.read_commit(local)
        manifest = repo.read_adapter(commit.adapter)
        candidates = [*dict.fromkeys(manifest.files.values()), commit.adapter, local]
        missing = _missing_on_remote(transport, candidates)
        blobs = [o for o in missing if o not in (commit.adapter, local)]
        for group in (blobs, [o for o in missing if o == commit.adapter], [o for o in missing if o == local]):
            if group:
                sizes = [repo.store.stored_size(o) for o in group]
                transport.put_many(((object_key(o), _outgoing(repo, o)) for o in group), None)
                objects += len(group)
                nbytes += sum(sizes)
        try:
            transport.put_if(NOTES_REF, (local + "\n").encode(), version)
        except PreconditionFailed:
            continue  # another site pushed notes: union with theirs and try again
        return {"ref": NOTES_REF, "old": tip, "new": local, "status": "new" if tip is None else "updated",
                "objects": objects, "bytes": nbytes, "notes": notes_api.count(notes_api.read_index(repo, local)),
                "seconds": round(time.perf_counter() - t0, 4)}
    raise RefConflict(f"{remote_name}:{NOTES_REF}", None, None)
