"""push: send the objects the remote lacks, then move its branch by compare-and-swap.

Objects before refs: push uploads every object the remote lacks, then moves
the remote ref by compare-and-swap (S3 If-Match / If-None-Match, a lock file
on a folder). A push killed at any moment leaves the ref at a complete
commit; running it again sends only what did not arrive. A push never makes
a remote of a place that is not one unless asked (`create`), and then only
of an empty one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from mfgit.errors import CorruptObject, NonFastForward, PreconditionFailed, RefConflict
from mfgit.objects.model import is_object_id
from mfgit.refs import HEADS, REMOTES, check_ref_name
from mfgit.remote.negotiation import missing_on_remote, plan_push, topo_order
from mfgit.remote.protocol import Progress, TransferReport, ensure_remote, object_key, remote_refs
from mfgit.remote.transport import Transport
from mfgit.repo.crash import crashpoint
from mfgit.repo.history import is_ancestor
from mfgit.store.frame import check_frame

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


def push(repo: "BaseRepository", transport: Transport, remote_name: str, src: str, dst: str | None = None, *,
         force: bool = False, progress: Progress | None = None, create: bool = False) -> TransferReport:
    """Push local revision `src` to remote branch `dst` (default: the same name).

    A place that is not an mfgit remote is refused (`NotARemote`); with
    `create`, an empty one is made a remote first."""
    t0 = time.perf_counter()
    report = TransferReport()
    # A remote created just now holds nothing: nothing there to ask about.
    # Otherwise its format is checked, and every candidate object is asked
    # for, so a push killed midway resumes.
    new_remote = ensure_remote(transport, create=create, writing=True)
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
        if not is_object_id(remote_value) or not repo.store.has(remote_value) or not is_ancestor(repo, remote_value, local):
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
    missing = list(candidates) if new_remote else missing_on_remote(transport, candidates)
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
            transport.put_many(((object_key(o), outgoing(repo, o)) for o in oids), on_done)

    if missing:
        # Dependencies first, each group finished before the next starts:
        # tensors and blobs, then adapters, then commits (oldest first, in
        # parallel). A push killed before its ref update leaves no adapter
        # without its tensors and no commit without its adapter; what it
        # leaves is reachable from no ref, and the next push skips it.
        todo = set(missing)
        upload([o for o in plan.leaves if o in todo])
        crashpoint("push-after-tensors")
        upload([o for o in plan.adapters if o in todo])
        upload([c for c in topo_order(plan.commits) if c in todo])
    report.objects = len(missing)
    report.bytes = total
    crashpoint("push-before-ref")
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
    crashpoint("push-after-ref")
    _update_tracking(repo, remote_name, dst_ref, local)
    report.seconds = time.perf_counter() - t0
    return report


def outgoing(repo: "BaseRepository", oid: str) -> bytes:
    """A local object's stored bytes, checked against its id before they leave.

    The check binds the bytes to `oid` (check_frame: the XXH3-128 keyed by
    the id for a version-2 file, the full SHA-256 for a version-1 one), so a
    damaged copy, or a valid file of another object stored under this
    name, is never sent: the push stops with the object's name, the remote
    keeps its ref, and the fix is fsck --repair-from. What is sent is the
    very bytes that were checked.
    """
    data = repo.store.read_stored(oid)
    try:
        check_frame(oid, data)
    except CorruptObject as e:
        raise CorruptObject(oid, e.expected, e.actual, e.algorithm, "the local copy; it was not sent") from None
    return data


def _update_tracking(repo: "BaseRepository", remote_name: str, ref: str, value: str) -> None:
    if ref.startswith(HEADS):
        tracking = f"{REMOTES}{remote_name}/{ref[len(HEADS):]}"
        repo.refs.update(tracking, value, who=repo.who(), message="update by push/fetch")
