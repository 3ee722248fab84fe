"""fsck: check every object, every ref and the connectivity between them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mfgit.errors import CorruptObject, MalformedObject
from mfgit.objects.model import decode_object, is_object_id
from mfgit.refs import SYMREF
from mfgit.repo.reachability import reachable, tip_ids

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


def fsck(repo: "BaseRepository", *, read_data: bool = False) -> dict[str, Any]:
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
    reached = reachable(repo, tip_ids(repo), missing=missing)
    corrupt_ids = {c["id"] for c in corrupt}
    dangling = sorted(oid for oid in kinds if oid not in reached and kinds[oid] in ("commit", "tag", "adapter"))
    leftovers = [str(p) for p in repo.store.temp_files()]
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
