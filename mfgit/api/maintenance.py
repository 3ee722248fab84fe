"""fsck and gc."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from mfgit.errors import CorruptObject, MalformedObject, ObjectNotFound
from mfgit.objects.model import decode_object, is_object_id
from mfgit.refs.refstore import SYMREF
from mfgit.store import DiskStore

if TYPE_CHECKING:
    from mfgit.api.repository import Repository


def fsck(repo: "Repository", *, read_data: bool = False) -> dict[str, Any]:
    """Check every object and ref.

    Each stored object is read and its stored bytes checked (XXH3-128);
    with `read_data` it is decoded and its SHA-256 checked against its id.
    Then connectivity: everything reachable from refs and reflogs must be
    present. Damage (missing, corrupt, bad refs) sets ``ok`` to False;
    dangling objects and leftovers of interrupted writes are reported only.
    """
    corrupt: list[dict[str, str]] = []
    kinds: dict[str, str] = {}
    checked = 0
    for oid in repo.store.iter_ids():
        checked += 1
        try:
            kind, payload = repo.store.get(oid, verify=read_data)
            if kind not in ("tensor", "blob"):
                decode_object(oid, kind, payload)
            kinds[oid] = kind
        except CorruptObject as e:
            corrupt.append({"id": oid, "error": str(e), "expected": e.expected, "actual": e.actual,
                            "algorithm": e.algorithm})
        except MalformedObject as e:
            corrupt.append({"id": oid, "error": str(e), "expected": "", "actual": "", "algorithm": "decode"})

    bad_refs: list[dict[str, str]] = []
    tips: list[str] = []
    for name in ["HEAD", *repo.refs.names("refs/")]:
        value = repo.refs.read(name)
        if value is None:
            if name != "HEAD":
                bad_refs.append({"ref": name, "error": "empty ref file"})
            continue
        if value.startswith(SYMREF):
            continue
        if not is_object_id(value):
            bad_refs.append({"ref": name, "error": f"invalid value {value[:80]!r}"})
            continue
        if not repo.store.has(value):
            bad_refs.append({"ref": name, "error": f"points to missing object {value}"})
            continue
        kind = kinds.get(value)
        if kind not in ("commit", "tag"):
            bad_refs.append({"ref": name, "error": f"points to a {kind or 'unreadable object'}, not a commit"})
            continue
        tips.append(value)

    missing: dict[str, str] = {}
    # A ref holding garbage is reported as a bad ref above, not as a missing object.
    tip_values = [v for v in repo.ref_tips().values() if is_object_id(v)]
    reachable = repo.reachable(tip_values, missing=missing)
    corrupt_ids = {c["id"] for c in corrupt}
    dangling = sorted(oid for oid in kinds if oid not in reachable and kinds[oid] in ("commit", "tag", "adapter"))
    leftovers: list[str] = []
    stale_locks: list[str] = []
    if isinstance(repo.store, DiskStore):
        leftovers = [str(p) for p in repo.store.iter_temp_files()]
    if hasattr(repo.refs, "stale_locks"):
        stale_locks = [str(p) for p in repo.refs.stale_locks()]
    missing_list = [{"id": oid} for oid in sorted(missing) if oid not in corrupt_ids]
    ok = not corrupt and not missing_list and not bad_refs
    return {
        "ok": ok,
        "objects_checked": checked,
        "read_data": read_data,
        "corrupt": corrupt,
        "missing": missing_list,
        "bad_refs": bad_refs,
        "dangling": [{"id": oid, "kind": kinds[oid]} for oid in dangling],
        "temporary_files": leftovers,
        "stale_locks": stale_locks,
    }


def gc(repo: "Repository", *, prune_older_than: float = 14 * 86400, dry_run: bool = False) -> dict[str, Any]:
    """Delete objects unreachable from every ref and reflog entry.

    Only objects older than `prune_older_than` seconds are deleted: a
    commit in progress writes its objects before its ref, and the grace
    period keeps them alive until the ref lands. Temporary files of
    interrupted writes older than one hour are removed too.

    If anything reachable is missing or unreadable, nothing is deleted: what
    a damaged commit or adapter names is unknown, so objects that look
    unreachable may be its history (git refuses for the same reason). The
    error names the object; `mfgit fsck` lists them all.
    """
    tips = [v for v in repo.ref_tips().values() if is_object_id(v)]
    damaged: dict[str, str] = {}
    keep = repo.reachable(tips, missing=damaged)
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
    temp_removed = 0
    if isinstance(repo.store, DiskStore):
        for p in list(repo.store.iter_temp_files()):
            try:
                if now - p.stat().st_mtime > min(3600, prune_older_than) and not dry_run:
                    os.unlink(p)
                    temp_removed += 1
            except OSError:
                pass
    return {
        "deleted": len(deleted),
        "deleted_ids": deleted,
        "bytes_freed": freed,
        "kept_unreachable_young": kept_young,
        "reachable": len(keep),
        "temporary_files_removed": temp_removed,
        "dry_run": dry_run,
    }
