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
