"""What keeps objects alive: ref tips and reflog values, and everything they reach.

`scan_refs` reads every ref and reflog once and sorts what it finds into
values that keep objects alive and damage (bad refs, damaged reflog lines),
so that fsck can report damage and carry on, and gc can refuse on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mfgit.errors import BadRef, CorruptObject, MalformedObject, ObjectNotFound
from mfgit.objects.model import decode_object, is_object_id
from mfgit.refs import REFS, SYMREF

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


@dataclass
class RefScan:
    refs: dict[str, str] = field(default_factory=dict)  # ref (HEAD when detached) → the object id it holds
    entries: list[tuple[str, int, str]] = field(default_factory=list)  # (ref, n of ref@{n}, id) per reflog value
    bad_refs: dict[str, str] = field(default_factory=dict)  # ref → what is wrong with it
    bad_reflog_lines: list[tuple[str, int, str]] = field(default_factory=list)  # (ref, line, what is wrong)


def scan_refs(repo: "BaseRepository") -> RefScan:
    """Every ref and reflog value, and every damaged ref and reflog line; never raises for damage."""
    refs = repo.refs
    out = RefScan()

    def bad(name: str, reason: str) -> None:
        out.bad_refs.setdefault(name, reason)

    for d in refs.damage():
        bad(d["ref"], d["error"])
    try:
        names = refs.names(REFS)
    except BadRef as e:
        bad(e.name, e.reason)
        names = []
    for name in ["HEAD", *names]:
        try:
            value = refs.read(name)
            if value is not None and value.startswith(SYMREF):
                refs.resolve(name)  # a loop, or a chain into garbage, is damage too
        except BadRef as e:
            bad(e.name, e.reason)  # the ref at fault: `name`, or one its symbolic chain reaches
            continue
        if value is not None and not value.startswith(SYMREF):
            out.refs[name] = value
    # Every reflog file, also one whose ref is gone: what it names stays alive.
    for name in sorted(set(refs.reflog_names()) | {"HEAD", *names}):
        entries, damaged = refs.reflog_scan(name)
        out.bad_reflog_lines += [(name, d.line, d.reason) for d in damaged]
        for pos, e in enumerate(entries):
            for v in (e.old, e.new):
                if v and is_object_id(v):
                    out.entries.append((name, len(entries) - 1 - pos, v))
    return out


def ref_tips(repo: "BaseRepository") -> dict[str, str]:
    """Every ref and reflog value that keeps objects alive (``ref@{n}`` for reflog entries, newest 0)."""
    scan = scan_refs(repo)
    tips = dict(scan.refs)
    for name, n, v in scan.entries:
        tips.setdefault(f"{name}@{{{n}}}", v)
    return tips


def tip_ids(repo: "BaseRepository") -> list[str]:
    """The object ids among the tips (a ref holding garbage is fsck's to report, not a tip)."""
    return [v for v in ref_tips(repo).values() if is_object_id(v)]


def reachable(repo: "BaseRepository", tips: list[str], *, missing: dict[str, str] | None = None,
              known: set[str] | None = None, private: set[str] | None = None) -> set[str]:
    """All object ids reachable from `tips`; absent ones go into `missing`.

    Objects in `known` count as walked already: they are neither entered
    nor returned. The digests of the private attachments of the commits
    walked go into `private` (what keeps their kept copies alive, for gc).
    """
    seen: set[str] = set()
    known = known or set()
    stack = [t for t in tips if t not in known]
    while stack:
        oid = stack.pop()
        if oid in seen or oid in known:
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
            # --- attachments: the public ones are blobs the commit names; a
            # private one is no object: only its digest is collected ---
            _leaves(repo, obj.attachment_ids(), seen, known, missing)
            if private is not None:
                private.update(a["digest"] for a in obj.attachments if a["private"])
            # --- end attachments ---
        elif kind == "tag":
            stack.append(obj.target)
        elif kind == "adapter":
            _leaves(repo, obj.referenced_ids(), seen, known, missing)
    return seen


def _leaves(repo: "BaseRepository", ids: list[str], seen: set[str], known: set[str],
            missing: dict[str, str] | None) -> None:
    """Tensors and blobs name nothing: present is enough, they need not be read."""
    for t in ids:
        if t not in seen and t not in known:
            seen.add(t)
            if not repo.store.has(t) and missing is not None:
                missing.setdefault(t, "missing")


def reflog_reach(repo: "BaseRepository", entries: list[tuple[str, int, str]],
                 ref_seen: set[str], *, private: set[str] | None = None) -> tuple[set[str], dict[str, dict[str, str]]]:
    """What reflog values keep alive beyond `ref_seen` (what the refs reach), and their damage.

    Returns (the objects only reflog entries reach, {value: {damaged id:
    "missing" | "corrupt"}} for each value from which damage that no ref
    reaches can be reached). Damage the refs reach is the refs' to report.
    The private digests of the commits walked go into `private` (see reachable).
    """
    good = set(ref_seen)
    seen_all: set[str] = set()
    damaged: dict[str, dict[str, str]] = {}
    for _name, _n, v in entries:
        if v in good or v in damaged:
            continue
        found: dict[str, str] = {}
        walked = reachable(repo, [v], missing=found, known=good, private=private)
        seen_all |= walked
        if found:
            damaged[v] = found
        else:
            good |= walked  # a value whose history is whole spares the next walks
    return seen_all, damaged


def damaged_entries(entries: list[tuple[str, int, str]], damaged: dict[str, dict[str, str]]) -> list[dict]:
    """One record per reflog entry whose value reaches damage (`damaged`, from reflog_reach), by ref and @{n}."""
    hit = sorted({(name, n, v) for name, n, v in entries if v in damaged})
    out, done = [], set()
    for name, n, v in hit:
        if (name, n) not in done:  # an entry whose old and new both reach damage is one record
            done.add((name, n))
            out.append({"ref": name, "entry": f"{name}@{{{n}}}", "id": v, "reaches": sorted(damaged[v])})
    return out
