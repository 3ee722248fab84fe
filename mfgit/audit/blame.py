"""blame: for each module of a commit's adapter, the commit that last changed it.

A module's value is its (lora_A id, lora_B id, scaling). Starting at REV, the
walk moves to a parent whose adapter has the same value for the module — the
first parent only by default (``first_parent=True``, the branch's own
history), or any parent, the first that matches, with ``first_parent=False``
(git's rule for following a same-content parent through merges). Where no
parent has the same value, that commit is the one that changed the module.

Scalings come from `mfgit.formats.peft.module_scaling`, which matches
``rank_pattern`` / ``alpha_pattern`` keys in time linear in the module name
(`mfgit.formats.patterns`): the walk reads every ancestor's config, so one
hostile key anywhere in the history must not be able to stall it. Every
adapter read has passed the object schema, so each of its modules has
factors and a scaling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mfgit.errors import IsAMixture
from mfgit.formats.peft import module_scaling

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


def blame(repo: "BaseRepository", rev: str = "HEAD", *, first_parent: bool = True) -> dict[str, Any]:
    tip = repo.resolve(rev)
    if repo.read_commit(tip).is_mixture:  # --- mixture ---
        raise IsAMixture(rev, "blame follows modules of one adapter; blame one of its members")
    commits: dict[str, Any] = {}
    values: dict[str, dict[str, tuple[str, str, float]]] = {}

    def commit(cid: str):
        if cid not in commits:
            commits[cid] = repo.read_commit(cid)
        return commits[cid]

    def module_values(cid: str) -> dict[str, tuple[str, str, float]]:
        if cid not in values:
            adapter = repo.read_adapter(commit(cid).adapter)
            out = {}
            for name, m in adapter.modules.items():
                scaling = module_scaling(adapter.config, name, int(m["r"]))[2]
                out[name] = (adapter.tensors[m["lora_A"]]["id"], adapter.tensors[m["lora_B"]]["id"], scaling)
            values[cid] = out
        return values[cid]

    head_values = module_values(tip)
    rows = []
    for name in sorted(head_values):
        target = head_values[name]
        cur = tip
        while True:
            parents = commit(cur).parents
            parents = parents[:1] if first_parent else parents
            nxt = None
            for p in parents:
                if module_values(p).get(name) == target:
                    nxt = p
                    break
            if nxt is None:
                break
            cur = nxt
        c = commit(cur)
        rows.append({
            "module": name,
            "commit": cur,
            "kind": "merge" if c.is_merge else (c.provenance or {}).get("kind", "commit"),
            "site": c.site,
            "author": c.author,
            "timestamp": c.timestamp,
            "subject": c.message.splitlines()[0] if c.message else "",
            "lora_A": target[0],
            "lora_B": target[1],
            "scaling": target[2],
        })
    return {"rev": rev, "commit": tip, "first_parent": first_parent, "modules": rows}
