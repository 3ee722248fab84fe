"""What keeps objects alive: ref tips and reflog values, and everything they reach."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mfgit.errors import CorruptObject, MalformedObject, ObjectNotFound
from mfgit.objects.model import decode_object, is_object_id
from mfgit.refs import SYMREF

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


def ref_tips(repo: "BaseRepository") -> dict[str, str]:
    """Every ref and reflog value that keeps objects alive."""
    tips: dict[str, str] = {}
    head = repo.refs.read("HEAD")
    if head and not head.startswith(SYMREF):
        tips["HEAD"] = head
    names = repo.refs.names("refs/")
    for n in names:
        v = repo.refs.read(n)
        if v and not v.startswith(SYMREF):
            tips[n] = v
    for n in names + ["HEAD"]:
        for i, e in enumerate(repo.refs.reflog(n)):
            for v in (e.old, e.new):
                if v and is_object_id(v):
                    tips[f"{n}@{{{i}}}"] = v
    return tips


def tip_ids(repo: "BaseRepository") -> list[str]:
    """The object ids among the tips (a ref holding garbage is fsck's to report, not a tip)."""
    return [v for v in ref_tips(repo).values() if is_object_id(v)]


def reachable(repo: "BaseRepository", tips: list[str], *, missing: dict[str, str] | None = None) -> set[str]:
    """All object ids reachable from `tips`; absent ones go into `missing`."""
    seen: set[str] = set()
    stack = list(tips)
    while stack:
        oid = stack.pop()
        if oid in seen:
            continue
        seen.add(oid)
        try:
            kind, payload = repo.store.get(oid)
            obj = decode_object(oid, kind, payload) if kind in ("commit", "tag", "adapter") else None
        except ObjectNotFound:
            if missing is not None:
                missing.setdefault(oid, "missing")
            continue
        except (CorruptObject, MalformedObject):
            if missing is not None:
                missing.setdefault(oid, "corrupt")  # what it names is unknown
            continue
        if kind == "commit":
            stack.extend(obj.parents)
            stack.append(obj.adapter)
        elif kind == "tag":
            stack.append(obj.target)
        elif kind == "adapter":
            for t in obj.referenced_ids():
                if t not in seen:
                    seen.add(t)
                    if not repo.store.has(t) and missing is not None:
                        missing.setdefault(t, "missing")
    return seen
