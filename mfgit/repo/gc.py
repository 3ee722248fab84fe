"""gc: delete objects, and kept copies of private attachments, that no ref or reflog entry reaches,
after a grace period."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, Callable

from mfgit.errors import BadRef, BadReflog, CorruptObject, DamagedReflogEntry, ObjectNotFound
from mfgit.objects.model import decode_object
from mfgit.repo.attachments import private_files
from mfgit.repo.crash import crashpoint
from mfgit.repo.reachability import damaged_entries, reachable, reflog_reach, scan_refs
from mfgit.store.fileio import fsync_dir

if TYPE_CHECKING:
    from pathlib import Path

    from mfgit.repo.base import BaseRepository


def gc(repo: "BaseRepository", *, prune_older_than: float = 14 * 86400, dry_run: bool = False,
       progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Delete objects unreachable from every ref and reflog entry.

    Only objects older than `prune_older_than` seconds are deleted: a
    commit in progress writes its objects before its ref, and the grace
    period keeps them alive until the ref lands. Temporary files of
    interrupted writes older than one hour are removed too. So are the
    kept copies of private attachments (``private/<sha256>``) whose digest
    no reachable commit names, by the same grace period: once the commits
    that name private bytes are gone, so are the bytes. The walk and
    the deletions run under the store's exclusive lock, so no writer adds
    or reuses an object, or a private copy, between what gc saw and what it deletes.

    Nothing is deleted while what keeps objects alive is itself in doubt:
    a bad ref or a damaged reflog line (what it named is unknown), or a
    missing or unreadable object reachable from a ref or reflog entry
    (what a damaged commit or adapter names is unknown, so objects that look
    unreachable may be its history; git refuses for the same reason). The
    error names the ref, line, entry or object and the command that fixes
    it — for reflog entries, `mfgit reflog expire`; `mfgit fsck` lists them all.

    The exclusive lock waits up to 10 s for writers, then RepositoryBusy; a
    dry run deletes nothing and takes no lock (docs/design.md, "gc and fsck").
    """
    with contextlib.nullcontext() if dry_run else repo.store.exclusive():
        scan = scan_refs(repo)
        if scan.bad_refs:
            name, reason = min(scan.bad_refs.items())
            raise BadRef(name, reason, repo.refs.location(name))
        if scan.bad_reflog_lines:
            name, line, reason = scan.bad_reflog_lines[0]
            raise BadReflog(name, repo.refs.reflog_location(name), line, reason)
        damaged: dict[str, str] = {}
        named: set[str] = set()  # the private digests that reachable commits name
        keep = reachable(repo, list(scan.refs.values()), missing=damaged, private=named)
        _refuse(repo, damaged)
        more, reflog_damage = reflog_reach(repo, scan.entries, keep, private=named)
        if reflog_damage:
            e = damaged_entries(scan.entries, reflog_damage)[0]
            raise DamagedReflogEntry(e["ref"], e["entry"], e["id"], e["reaches"])
        keep |= more
        return _delete_unreachable(repo, keep, named, prune_older_than, dry_run, progress)


def _refuse(repo: "BaseRepository", damaged: dict[str, str]) -> None:
    for oid, why in sorted(damaged.items()):
        if why == "missing":
            raise ObjectNotFound(oid)
        kind, payload = repo.store.get(oid)  # raises CorruptObject naming the digests
        if kind not in ("tensor", "blob"):
            decode_object(oid, kind, payload)  # raises MalformedObject
        raise CorruptObject(oid, "a readable object", "an unreadable one", "decode")


def _delete_unreachable(repo: "BaseRepository", keep: set[str], named: set[str], prune_older_than: float,
                        dry_run: bool, progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    now = time.time()
    deleted, kept_young, freed = [], 0, 0
    # listed before anything is deleted: a private/ that cannot be read stops gc with nothing deleted
    private_copies = private_files(repo)
    ids = list(repo.store.iter_ids())
    for i, oid in enumerate(ids, 1):
        if progress is not None:
            progress(i, len(ids), oid[:10])
        if oid in keep:
            continue
        try:
            age = now - repo.store.mtime(oid)
        except ObjectNotFound:
            continue
        if age < prune_older_than:
            kept_young += 1
            continue
        try:
            size = repo.store.stored_size(oid)
        except ObjectNotFound:
            continue
        if not dry_run:
            repo.store.delete(oid)
            crashpoint("gc-during-delete")
        deleted.append(oid)
        freed += size
    private = _delete_unnamed_private(private_copies, named, now - prune_older_than, dry_run)
    if not dry_run:
        crashpoint("gc-after-delete")
    temp_removed = 0 if dry_run else repo.store.remove_temp_files(min(3600, prune_older_than))
    return {
        "deleted": len(deleted),
        "deleted_ids": deleted,
        "bytes_freed": freed,
        "kept_unreachable_young": kept_young,
        "reachable": len(keep),
        **private,
        "temporary_files_removed": temp_removed,
        "dry_run": dry_run,
    }


def _delete_unnamed_private(copies: list[tuple[str, Path]], named: set[str], cutoff: float,
                            dry_run: bool) -> dict[str, Any]:
    """Delete the kept private copies no reachable commit names, last written (or freshened) before `cutoff`.

    A commit stores its private copies before its commit object, as its
    objects, so the grace period keeps a copy whose commit has not landed
    yet, for writers the lock cannot see.
    """
    deleted, kept_young, freed = [], 0, 0
    for digest, path in copies:
        if digest in named:
            continue
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if st.st_mtime > cutoff:
            kept_young += 1
            continue
        if not dry_run:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            crashpoint("gc-during-private-delete")
        deleted.append(digest)
        freed += st.st_size
    if deleted and not dry_run:
        fsync_dir(path.parent)  # the deletions are durable before gc reports them
    return {
        "private_deleted": len(deleted),
        "private_deleted_digests": deleted,
        "private_bytes_freed": freed,
        "private_kept_young": kept_young,
    }
