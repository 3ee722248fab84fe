"""pages: static HTML pages of a repository, for a coordinator to open in a browser (``mfgit pages OUT``).

What the pages show is gathered here from the audit verbs — signature
verdicts (`mfgit.audit.verify`), the sites' notes with their trust
(`mfgit.audit.notes`), lineages with effective weights
(`mfgit.audit.lineage`) and per-module diffs (`mfgit.audit.diff`) — and
drawn by `mfgit.render.pages`, which reads no repository.

Why static files rather than a server: the hub is a shared folder or an S3
bucket, and so can the pages be — a folder of plain files is served by the
bucket itself (or opened from disk), needs no process to run, no port, no
account and no credentials beyond the bucket's, and shows the same thing
to every reader. The pages load nothing (no script, no web font, no CDN),
so opening them sends no request anywhere.

The output is written whole or not at all: into a temporary directory
beside OUT, then swapped into place (`mfgit.store.fileio.replace_directory`).
OUT must be absent, empty, or a directory these pages wrote before (it
holds the marker file `MARKER`); anything else is refused, so a mistyped
path never replaces someone's files.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mfgit.audit.diff import diff
from mfgit.audit.lineage import lineage
from mfgit.audit.notes import notes_by_commit
from mfgit.audit.policy import judge, load_policy
from mfgit.audit.signing import check_signature
from mfgit.audit.verify import check_signatures, history, ref_branch
from mfgit.errors import MfgitError, PagesTargetInUse, SigningKeyError
from mfgit.objects.model import is_object_id
from mfgit.objects.timestamp import utc_now
from mfgit.refs import HEADS, REMOTES, TAGS
from mfgit.render.pages import commit_page, index_page, page_name
from mfgit.repo.history import adapter_summary
from mfgit.repo.notes import is_snapshot
from mfgit.store.fileio import fsync_dir, replace_directory
from mfgit.version import __version__

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository

MARKER = ".mfgit-pages"
SITE_PREFIX = "sites/"
HISTORY_SHOWN = 200  # commits listed per branch on the index (every commit still has its page)

Progress = Callable[[int, int, str], None]


# -- what the pages show ------------------------------------------------------------------------


def _branches(repo: "BaseRepository") -> list[dict[str, Any]]:
    """Every local and remote-tracking branch: its ref, its name as shown, the branch it is, its tip."""
    out = []
    for prefix in (HEADS, REMOTES):
        for ref, tip in sorted(repo.refs.items(prefix).items()):
            branch = ref_branch(ref)
            if branch is None or not is_object_id(tip):
                continue  # refs/remotes/origin/HEAD and damaged refs: fsck reports those
            out.append({"ref": ref, "name": ref[len(prefix):], "branch": branch, "commit": tip,
                        "remote": prefix == REMOTES})
    return out


def _tags(repo: "BaseRepository") -> list[dict[str, Any]]:
    out = []
    for ref, value in sorted(repo.refs.items(TAGS).items()):
        try:
            target = repo.resolve(ref)
        except MfgitError:
            continue
        out.append({"name": ref[len(TAGS):], "ref": ref, "object": value, "commit": target})
    return out


def _first_parent_chain(repo: "BaseRepository", tip: str, limit: int) -> list[str]:
    chain, cid = [], tip
    while cid and len(chain) < limit and cid not in chain:
        chain.append(cid)
        try:
            parents = repo.read_commit(cid).parents
        except MfgitError:
            break
        cid = parents[0] if parents else None
    return chain


def _signatures(repo: "BaseRepository", branches: list[dict[str, Any]], tags: list[dict[str, Any]],
                ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """commit id → its verdicts, one per branch it belongs to (verify's attribution), and the policy used."""
    try:
        policy = load_policy(repo)
        policy_info = {"source": policy.source if policy else None, "error": None}
    except SigningKeyError as e:
        policy, policy_info = None, {"source": None, "error": str(e)}
    policies = [policy] if policy is not None else []
    verdicts: dict[str, dict[str | None, dict[str, Any]]] = {}
    walked: set[tuple[str, str | None]] = set()
    starts = [(b["commit"], b["branch"]) for b in branches] + [(t["commit"], None) for t in tags]
    for tip, branch in starts:
        if (tip, branch) in walked:
            continue
        walked.add((tip, branch))
        for e in check_signatures(repo, tip, [branch], policies):
            verdicts.setdefault(e["commit"], {}).setdefault(e["branch"], e)
    return {cid: sorted(v.values(), key=lambda e: e["branch"] or "") for cid, v in verdicts.items()}, policy_info


def _unattributed_verdict(commit) -> dict[str, Any]:
    chk = check_signature(commit)
    ok, reason = judge(chk, None, [])
    return {"branch": None, "ok": ok, "status": chk.status, "key_id": chk.key_id, "reason": reason}


def _diffs(repo: "BaseRepository", cid: str, commit) -> list[dict[str, Any]]:
    """What changed, module by module: against the first parent, or for a merge against each input."""
    prov = commit.provenance or {}
    if commit.is_mixture:  # --- mixture: no modules to compare; its page lists the members instead ---
        return []
    if prov.get("kind") == "merge":
        against = [(i.get("commit"), i.get("label") or "input") for i in prov.get("inputs", [])]
    else:
        against = [(commit.parents[0], "first parent")] if commit.parents else []
    out = []
    for other, label in against:
        if not isinstance(other, str) or not is_object_id(other):
            continue
        entry: dict[str, Any] = {"against": other, "label": label}
        try:
            entry["diff"] = diff(repo, other, cid, stat=True)
        except MfgitError as e:  # a missing input is shown, not fatal: the other pages still help
            entry["error"] = str(e)
        out.append(entry)
    return out


def _attachments(commit) -> Any:
    """The commit's attachments, where its format has them (None otherwise)."""
    value = commit.to_dict().get("attachments")
    return value if value is not None else getattr(commit, "attachments", None)


def commit_entry(repo: "BaseRepository", cid: str, *, verdicts: list[dict[str, Any]] | None,
                 notes: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything one commit's page shows."""
    commit = repo.read_commit(cid)
    entry: dict[str, Any] = {
        "id": cid,
        "commit": commit.to_dict(),
        "kind": "merge" if commit.is_merge else "commit",
        "signatures": verdicts or [_unattributed_verdict(commit)],
        "notes": notes,
        "attachments": _attachments(commit),
        "diffs": _diffs(repo, cid, commit),
    }
    try:
        entry["adapter"] = adapter_summary(commit.adapter, repo.read_adapter(commit.adapter))
    except MfgitError as e:
        entry["adapter"] = {"id": commit.adapter, "error": str(e)}
    if commit.is_merge:
        entry["lineage"] = lineage(repo, cid)
    if commit.is_mixture:  # --- mixture ---
        from mfgit.repo.mixture import mixture_summary

        entry["mixture"] = mixture_summary(repo, commit)
    return entry


def _summary(repo: "BaseRepository", cid: str) -> dict[str, Any] | None:
    try:
        c = repo.read_commit(cid)
    except MfgitError:
        return None
    prov = c.provenance or {}
    inputs = [{"commit": i.get("commit"), "weight": i.get("weight")} for i in prov.get("inputs", [])
              if isinstance(i, dict)] if c.is_merge else []
    return {"id": cid, "kind": "merge" if c.is_merge else "commit", "site": c.site, "author": c.author,
            "timestamp": c.timestamp, "subject": c.message.splitlines()[0] if c.message else "",
            "strategy": (prov.get("recipe") or {}).get("strategy") if c.is_merge else None,
            "inputs": inputs, "snapshot": is_snapshot(c)}


def _merged_into(summaries: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """commit id → the merges that took it as an input, with the weight each gave it, newest first."""
    out: dict[str, list[dict[str, Any]]] = {}
    for mid, s in summaries.items():  # already newest first
        for i in s["inputs"]:
            out.setdefault(i["commit"], []).append({"merge": mid, "weight": i["weight"]})
    return out


def _repo_name(repo: "BaseRepository") -> str:
    where = repo.worktree or repo.gitdir
    return where.name if where is not None else "repository"


# -- writing ------------------------------------------------------------------------------------


def _check_target(out: Path) -> None:
    if out.is_symlink():
        raise PagesTargetInUse(str(out), "it is a symbolic link (the pages replace a directory, never follow a link)")
    if out.exists() and not out.is_dir():
        raise PagesTargetInUse(str(out), "it is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise PagesTargetInUse(str(out), f"it is not empty and was not written by mfgit pages (no {MARKER})")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def collect(repo: "BaseRepository") -> dict[str, Any]:
    """What the index shows, and what each commit page needs besides its own commit (no tensor read yet)."""
    branches, tags = _branches(repo), _tags(repo)
    seen: set[str] = set()
    reached: list[str] = []
    for tip in [b["commit"] for b in branches] + [t["commit"] for t in tags]:
        for cid in history(repo, tip, exclude=seen):  # parents and merge inputs
            seen.add(cid)
            reached.append(cid)
    found = {cid: s for cid in reached if (s := _summary(repo, cid)) is not None and not s["snapshot"]}
    commits = {cid: found[cid] for cid in sorted(found, key=lambda c: (found[c]["timestamp"], c), reverse=True)}
    verdicts, policy = _signatures(repo, branches, tags)
    for b in branches:
        b["history"] = [c for c in _first_parent_chain(repo, b["commit"], HISTORY_SHOWN) if c in commits]
    tips: dict[str, list[str]] = {}
    for b in branches:
        tips.setdefault(b["commit"], []).append(b["name"])
    for t in tags:
        tips.setdefault(t["commit"], []).append(f"tag: {t['name']}")
    return {
        "repository": _repo_name(repo),
        "generated": utc_now(),
        "version": __version__,
        "policy": policy,
        "branches": branches,
        "tags": tags,
        "commits": commits,  # id → summary, newest first
        "notes": notes_by_commit(repo, list(commits)),
        "tips": tips,
        "merged_into": _merged_into(commits),
        "verdicts": verdicts,
    }


def pages(repo: "BaseRepository", out: str | os.PathLike, *, progress: Progress | None = None) -> dict[str, Any]:
    """Write the pages of `repo` to directory `out` (replaced whole); return what was written."""
    out = Path(os.path.abspath(out))  # ".." folded, links not followed (a link as OUT is refused)
    _check_target(out)
    if not out.parent.is_dir():
        raise PagesTargetInUse(str(out), f"its parent directory {out.parent} does not exist")
    doc = collect(repo)
    commits, notes = doc["commits"], doc["notes"]
    stage = out.parent / f".{out.name}.tmp-{secrets.token_hex(6)}"
    stage.mkdir()
    try:
        for i, cid in enumerate(commits, 1):
            entry = commit_entry(repo, cid, verdicts=doc["verdicts"].get(cid), notes=notes.get(cid, []))
            entry["merged_into"] = doc["merged_into"].get(cid, [])
            # The index shows each tip's signature: known once its page is drawn.
            commits[cid]["signed"] = entry["commit"].get("signature") is not None
            commits[cid]["signatures_ok"] = all(v["ok"] for v in entry["signatures"])
            _write(stage / page_name(cid), commit_page(entry, doc))
            if progress is not None:
                progress(i, len(commits), cid[:10])
        _write(stage / "index.html", index_page(doc))
        _write(stage / MARKER, json.dumps({"written_by": "mfgit pages", "version": __version__,
                                           "generated": doc["generated"]}, sort_keys=True) + "\n")
        fsync_dir(stage)
        _check_target(out)  # again: something may have appeared there while the pages were drawn
        replace_directory(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    branches = doc["branches"]
    return {"out": str(out), "index": str(out / "index.html"), "commits": len(commits),
            "sites": len({b["branch"] for b in branches if b["branch"].startswith(SITE_PREFIX)}),
            "branches": len(branches), "notes": sum(len(v) for v in notes.values())}
