"""gc: delete objects that no ref or reflog entry reaches, after a grace period."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from mfgit.errors import CorruptObject, ObjectNotFound
from mfgit.objects.model import decode_object
from mfgit.repo.reachability import reachable, tip_ids

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


def gc(repo: "BaseRepository", *, prune_older_than: float = 14 * 86400, dry_run: bool = False) -> dict[str, Any]:
    """Delete objects unreachable from every ref and reflog entry.

    Only objects older than `prune_older_than` seconds are deleted: a
    commit in progress writes its objects before its ref, and the grace
    period keeps them alive until the ref lands. Temporary files of
    interrupted writes older than one hour are removed too.

    If anything reachable is missing or unreadable, nothing is deleted: what
    a damaged commit or adapter names is unknown, so objects that look
    unreachable may be its history (git refuses for the same reason). The
    error names the object; `mfgit fsck` lists them all.

    Everything runs under the store's exclusive writer lock (waiting up to
    10 s, then RepositoryBusy): no writer can be between reusing or writing
    objects and moving its ref while reachability is computed and objects
    and temporary files are deleted (docs/design.md, "gc and fsck").
    """
    with contextlib.nullcontext() if dry_run else repo.store.exclusive():
        return _gc(repo, prune_older_than, dry_run)


def _gc(repo: "BaseRepository", prune_older_than: float, dry_run: bool) -> dict[str, Any]:
    damaged: dict[str, str] = {}
    keep = reachable(repo, tip_ids(repo), missing=damaged)
    for oid, why in sorted(damaged.items()):
        if why == "missing":
            raise ObjectNotFound(oid)
        kind, payload = repo.store.get(oid)  # raises CorruptObject naming the digests
        if kind not in ("tensor", "blob"):
            decode_object(oid, kind, payload)  # raises MalformedObject
        raise CorruptObject(oid, "a readable object", "an unreadable one", "decode")
    now = time.time()
    deleted, kept_young, freed = [], 0, 0
    for oid in list(repo.store.iter_ids()):
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
        deleted.append(oid)
        freed += size
    temp_removed = 0 if dry_run else repo.store.remove_temp_files(min(3600, prune_older_than))
    return {
        "deleted": len(deleted),
        "deleted_ids": deleted,
        "bytes_freed": freed,
        "kept_unreachable_young": kept_young,
        "reachable": len(keep),
        "temporary_files_removed": temp_removed,
        "dry_run": dry_run,
    }
