"""fsck: check every object, every ref and reflog, and the connectivity between them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from mfgit.errors import CorruptObject, MalformedObject
from mfgit.objects.model import decode_object, is_object_id
from mfgit.refs import HEADS, REFS
from mfgit.repo.attachments import check_private, check_public
from mfgit.repo.reachability import damaged_entries, reachable, reflog_reach, scan_refs

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


def bad_ref_fix(name: str) -> str:
    """The command (or step) that repairs the bad ref `name`."""
    if name == "HEAD":
        return "point HEAD at a branch: mfgit switch BRANCH"
    if name == REFS:
        return "restore the refs/ folder from a backup, or fetch the branches again from a remote"
    if name.startswith(HEADS) and not name.endswith("/"):
        return f"point it at a commit: mfgit branch -f {name[len(HEADS):]} REV"
    return "restore the file from a copy, or remove it"


def reflog_fix(name: str, selector: str) -> str:
    """The command that drops the reflog lines of `name` that `selector` (malformed, missing) names."""
    return f"mfgit reflog expire --{selector} {name}"


def fsck(repo: "BaseRepository", *, read_data: bool = False,
         progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Check every object, ref and reflog.

    Each stored object is read and its stored bytes checked (XXH3-128);
    with `read_data` it is decoded and its SHA-256 checked against its id.
    Every ref must hold an id of an existing commit or tag (or be a
    symbolic ref into refs/ without a loop); every reflog line must be an
    entry. Then connectivity: everything reachable from refs and reflogs
    must be present, and a reflog entry from which damage no ref reaches
    can be reached is named with the command that drops it. Damage
    (missing, corrupt, bad refs and reflogs, a private attachment's kept copy
    that fails its digest, a public attachment whose objects do not give back
    its recorded bytes) sets ``ok`` to False; private attachments whose
    bytes are not here (any repository but their site's) are listed only; dangling
    objects and leftovers of interrupted writes are reported only.
    `progress(done, total, id)` is called after each object.
    """
    corrupt: list[dict[str, str]] = []
    kinds: dict[str, str] = {}
    checked = 0
    ids = list(repo.store.iter_ids())
    for oid in ids:
        checked += 1
        if progress is not None:
            progress(checked, len(ids), oid[:10])
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

    scan = scan_refs(repo)
    bad = dict(scan.bad_refs)
    for name, value in scan.refs.items():
        if not repo.store.has(value):
            bad.setdefault(name, f"points to missing object {value}")
        elif kinds.get(value) not in ("commit", "tag"):
            kind = kinds.get(value) or "unreadable object"
            bad.setdefault(name, f"points to {'an' if kind[0] in 'aeiou' else 'a'} {kind}, not a commit")
    bad_refs = [{"ref": name, "error": error, "fix": bad_ref_fix(name)} for name, error in sorted(bad.items())]
    bad_reflog = [{"ref": name, "line": line, "error": error, "fix": reflog_fix(name, "malformed")}
                  for name, line, error in scan.bad_reflog_lines]

    missing: dict[str, str] = {}
    reached = reachable(repo, [v for v in scan.refs.values() if is_object_id(v)], missing=missing)
    more, reflog_damage = reflog_reach(repo, scan.entries, reached)
    reached |= more
    for found in reflog_damage.values():
        for oid, why in found.items():
            missing.setdefault(oid, why)
    entries = [dict(e, fix=reflog_fix(e["ref"], "missing")) for e in damaged_entries(scan.entries, reflog_damage)]

    corrupt_ids = {c["id"] for c in corrupt}
    dangling = sorted(oid for oid in kinds if oid not in reached and kinds[oid] in ("commit", "tag", "adapter"))
    leftovers = [str(p) for p in repo.store.temp_files()]
    stale_locks = [str(p) for p in repo.refs.stale_locks()]
    missing_list = [{"id": oid} for oid in sorted(missing) if oid not in corrupt_ids]
    # --- attachments: private ones are no objects; their kept copies are checked where they are ---
    commits = sorted(o for o in reached if kinds.get(o) == "commit")
    private_absent, private_corrupt = check_private(repo, commits)
    public_corrupt = check_public(repo, commits)  # split ones put together and checked against their digest
    # --- end attachments ---
    ok = (not corrupt and not missing_list and not bad_refs and not bad_reflog and not entries
          and not private_corrupt and not public_corrupt)
    return {
        "ok": ok,
        "objects_checked": checked,
        "read_data": read_data,
        "corrupt": corrupt,
        "missing": missing_list,
        "bad_refs": bad_refs,
        "bad_reflog_lines": bad_reflog,
        "reflog_damage": entries,
        "dangling": [{"id": oid, "kind": kinds[oid]} for oid in dangling],
        "temporary_files": leftovers,
        "stale_locks": stale_locks,
        "private_attachments_absent": private_absent,
        "corrupt_private_attachments": private_corrupt,
        "corrupt_attachments": public_corrupt,
    }
