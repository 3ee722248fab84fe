"""Mixture commits in the core: what `show` reports of one, and the names its checkout writes.

A mixture (docs/design.md, "Mixture") has no merged adapter: its checkout
(mfgit.repo.checkout.write_mixture_dir) writes each member as a PEFT
directory, ``members/<n>-<short id>/``, and ``mixture.json`` saying how to
combine them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mfgit.objects.model import Commit

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository

MIXTURE_FILE = "mixture.json"
MEMBERS_DIR = "members"
CHECKOUT_FORMAT = "mfgit-mixture/1"


def member_dir_name(index: int, commit_id: str) -> str:
    return f"{index}-{commit_id[:10]}"


def mixture_summary(repo: "BaseRepository", commit: Commit) -> dict[str, Any]:
    """The mixture of `commit` for `show`: combine rule and members with weight, site, subject and base model."""
    members = []
    for i, (cid, w) in enumerate(commit.mixture_members()):
        entry: dict[str, Any] = {"commit": cid, "weight": w, "dir": f"{MEMBERS_DIR}/{member_dir_name(i, cid)}"}
        try:
            mc = repo.read_commit(cid)
            entry.update(site=mc.site, subject=(mc.message.splitlines() or [""])[0],
                         base_model=repo.read_adapter(mc.adapter).base_model)
        except Exception as e:  # noqa: BLE001 - show reports a missing member; verify names it as a problem
            entry.update(site=None, subject=None, base_model=None, missing=str(e))
        members.append(entry)
    return {"combine": commit.mixture["combine"], "members": members,
            "weight_sum": float(sum(w for _, w in commit.mixture_members()))}


def flatten_members(revisions: "list[tuple[list[tuple[str, float]], float]]") -> list[tuple[str, float]]:
    """The members of weighted revisions ((members, revision weight) each), each member weighted by its
    revision's weight; a commit named twice once, with its weights summed (Σ wⱼ softmaxⱼ is the same)."""
    out: dict[str, float] = {}
    for members, a in revisions:
        for cid, w in members:
            out[cid] = out.get(cid, 0.0) + float(a) * float(w)
    return list(out.items())


def revision_members(commit: Commit, commit_id: str) -> list[tuple[str, float]]:
    """What a revision contributes to a mixture: a mixture its members, any other commit itself (weight 1)."""
    return commit.mixture_members() if commit.is_mixture else [(commit_id, 1.0)]


def reproduce_mixture(repo: "BaseRepository", commit_id: str) -> dict[str, Any]:
    """Re-run a mixture commit from its recorded inputs: every attachment its search read is read again by
    digest (a private or changed one raises), the inputs' members are flattened again with the recorded
    weights, and the result is compared with the committed members (and, for a searched mixture, the
    recorded choice with the inputs' weights). Returns {"commit", "identical", "max_abs_diff", "reason"}."""
    from mfgit.repo.attachments import read_recorded

    commit = repo.read_commit(commit_id)
    prov = commit.provenance or {}
    search = prov.get("search") or {}
    for a in search.get("attachments") or []:
        read_recorded(repo, a["commit"], a["name"], a["digest"])
    inputs = prov.get("inputs") or []
    again = flatten_members([(revision_members(repo.read_commit(i["commit"]), i["commit"]), float(i["weight"]))
                             for i in inputs])
    recorded = commit.mixture_members()
    got, want = dict(again), dict(recorded)
    diff = max((abs(got.get(k, 0.0) - want.get(k, 0.0)) for k in set(got) | set(want)), default=0.0)
    reasons = []
    if [c for c, _ in again] != [c for c, _ in recorded]:
        reasons.append("the recorded inputs flatten to other members")
    elif diff:
        reasons.append(f"the recorded inputs' weights give other member weights (max |difference| {diff:.3e})")
    chosen = (search.get("chosen") or {}).get("weights")
    if chosen is not None and [float(w) for w in chosen] != [float(i["weight"]) for i in inputs]:
        reasons.append("the search's recorded choice is not the inputs' weights")
    return {"commit": commit_id, "identical": not reasons, "max_abs_diff": diff,
            "reason": "; ".join(reasons) if reasons else "the same members and weights"}
