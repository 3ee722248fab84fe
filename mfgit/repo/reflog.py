"""The reflog verbs: show a ref's reflog, and expire entries from it.

A reflog records every move of a ref, and its entries keep the objects
they name alive. `expire` is the way out when an entry names something
that is gone (``--missing``), a line is damaged (``--malformed``) or old
entries are no longer wanted (``--older-than``): fsck and gc name it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from mfgit.errors import BadRef, InvalidRefName, RefNotFound
from mfgit.refs import HEADS, REFS, REMOTES, TAGS, ReflogBadLine, ReflogItem, check_ref_name
from mfgit.repo.reachability import reachable, reflog_reach, scan_refs

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


def reflog_name(repo: "BaseRepository", ref: str | None) -> str:
    """The full name of `ref` (a branch, tag or remote branch name, ``refs/…`` or HEAD); default: HEAD's branch."""
    if ref is None:
        return repo.refs.symbolic_target("HEAD") or "HEAD"
    if ref in ("HEAD", "@"):
        return "HEAD"
    if ref.startswith(REFS):
        return check_ref_name(ref)
    logs = set(repo.refs.reflog_names())
    for full in (HEADS + ref, TAGS + ref, REMOTES + ref):
        if full in logs or _exists(repo, full):
            return full
    raise RefNotFound(ref)


def _exists(repo: "BaseRepository", name: str) -> bool:
    try:
        check_ref_name(name)
        return repo.refs.read(name) is not None
    except BadRef:
        return True  # damaged, but there
    except InvalidRefName:
        return False


def show(repo: "BaseRepository", ref: str | None = None) -> dict[str, Any]:
    """`ref`'s reflog, newest first, as ``ref@{n}`` entries, and its damaged lines."""
    name = reflog_name(repo, ref)
    entries, bad = repo.refs.reflog_scan(name)
    n = len(entries)
    out = [{"entry": f"{name}@{{{n - 1 - i}}}", "index": n - 1 - i, **e.to_dict()}
           for i, e in reversed(list(enumerate(entries)))]
    return {"ref": name, "entries": out, "damaged_lines": [{"line": b.line, "error": b.reason} for b in bad]}


def _utc(t: float) -> str:
    # The reflog's own timestamp format (mfgit.objects.timestamp), so entries compare as strings.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def expire(repo: "BaseRepository", refs: list[str], *, all_refs: bool = False, missing: bool = False,
           malformed: bool = False, older_than: float | None = None) -> dict[str, Any]:
    """Drop reflog entries: those from which a missing or unreadable object that no ref reaches
    can be reached (`missing`), damaged lines (`malformed`), entries older than `older_than` seconds.

    `refs` names the reflogs (see reflog_name); `all_refs`: every reflog.
    Returns {"refs": [{"ref", "dropped", "kept"}], "dropped"}.
    """
    if not (missing or malformed or older_than is not None):
        raise ValueError("say what to drop: missing, malformed or older_than")
    names = repo.refs.reflog_names() if all_refs else sorted({reflog_name(repo, r) for r in refs})
    cutoff = _utc(time.time() - older_than) if older_than is not None else None
    doomed: set[str] = set()
    if missing:
        scan = scan_refs(repo)
        ref_seen = reachable(repo, list(scan.refs.values()))
        doomed = set(reflog_reach(repo, scan.entries, ref_seen)[1])

    def drop(item: ReflogItem) -> bool:
        if isinstance(item, ReflogBadLine):
            return malformed
        if missing and (item.old in doomed or item.new in doomed):
            return True
        return cutoff is not None and item.time < cutoff

    done = []
    for name in names:
        dropped, kept = repo.refs.expire_reflog(name, drop)
        done.append({"ref": name, "dropped": dropped, "kept": kept})
    return {"refs": done, "dropped": sum(d["dropped"] for d in done)}
