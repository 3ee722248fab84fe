"""lineage: the DAG from a commit down to its leaves, with effective weights.

Every merge commit records the inputs it combined (``provenance.inputs``:
commit, label, weight) and its recipe. Following inputs from a commit down to
commits that are not merges (the *leaves*: site commits) gives the DAG of what
went into it.

Effective weight. A linear-family merge (``linear``, ``task_arithmetic``)
computes ΔW = λ Σᵢ wᵢ ΔWᵢ, so the composite is Σ_leaves e_leaf ΔW_leaf with

    e(leaf → leaf) = 1,     e(merge → leaf) = λ_merge Σᵢ wᵢ e(inputᵢ → leaf)

— the product of weights and λ along each path, summed over paths, exact
through any depth of merges of merges. Where a path crosses an element-wise
strategy (ties, dare_*, breadcrumbs, della, magnitude_prune, tsv, iso_c,
svd…) no single number describes the leaf's share: its effective weight is
``null`` and it is marked *not linear*, naming the merges responsible. A
linear merge whose output rank was truncated (kept energy < 1) keeps its
weights; the leaf is then marked not ``exact`` and the kept energy is shown.

Mixtures (MedForge-Mixture, docs/merging.md) are nodes of kind ``mixture``
whose inputs are their members with their weights. A mixture combines its
members' *outputs* (Σ wⱼ·softmaxⱼ), so a leaf that is a member has the
member's weight, in output space (``space: "output"``); a leaf under a merge
that is a member is inside a softmax: no single number, *not linear*, via
the mixture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mfgit.audit.diff import num
from mfgit.errors import MfgitError
from mfgit.render.audit import KEPT_ENERGY_EXACT

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository



COMPOSITE_KINDS = ("merge", "mixture")


def _mixture_coefficients(cid: str, node: dict[str, Any], nodes: dict[str, dict[str, Any]],
                          coefficients) -> dict[str, dict[str, Any]]:
    """A mixture's leaves: a member that is a leaf has its weight in output space; the leaves of a member
    that is itself a composite are inside that member's softmax, so they have no single weight."""
    out: dict[str, dict[str, Any]] = {}
    for inp in node["inputs"]:
        member = nodes.get(inp["commit"])
        for leaf, c in coefficients(inp["commit"]).items():
            cur = out.setdefault(leaf, {"weight": 0.0, "paths": 0, "exact": True, "nonlinear_via": [],
                                        "space": "output"})
            cur["paths"] += c["paths"]
            if member is not None and member["kind"] not in COMPOSITE_KINDS and cur["weight"] is not None:
                cur["weight"] += float(inp["weight"])
            else:
                cur["weight"], cur["exact"] = None, False
                for v in list(c["nonlinear_via"]) + [cid]:
                    if v not in cur["nonlinear_via"]:
                        cur["nonlinear_via"].append(v)
    return out


def _subject(msg: str) -> str:
    return msg.splitlines()[0] if msg else ""


def _node(cid: str, commit) -> dict[str, Any]:
    prov = commit.provenance or {}
    node: dict[str, Any] = {
        "id": cid,
        "kind": "merge" if prov.get("kind") == "merge" else "mixture" if commit.is_mixture else "leaf",
        "site": commit.site,
        "author": commit.author,
        "timestamp": commit.timestamp,
        "subject": _subject(commit.message),
        "message": commit.message,
        "adapter": commit.adapter,
        "parents": list(commit.parents),
        "signed": commit.signature is not None,
    }
    if node["kind"] == "merge":
        recipe = prov.get("recipe") or {}
        node["recipe"] = recipe
        node["linear"] = bool(prov.get("linear"))
        node["lambda"] = float((recipe.get("params") or {}).get("lambda", 1.0)) if prov.get("linear") else None
        node["integration"] = (prov.get("integration") or {}).get("mode")
        node["kept_energy"] = prov.get("kept_energy")
        node["device"] = prov.get("device")
        node["inputs"] = [{"commit": i.get("commit"), "label": i.get("label"), "weight": i.get("weight")}
                          for i in prov.get("inputs", [])]
    elif node["kind"] == "mixture":  # --- mixture: members with their output-space weights ---
        node["combine"] = commit.mixture["combine"]
        node["linear"] = False
        node["inputs"] = [{"commit": m, "label": None, "weight": w} for m, w in commit.mixture_members()]
    else:
        node["provenance_kind"] = prov.get("kind")
        node["meta"] = prov.get("meta") or {}
        node["code"] = prov.get("code")
    return node


def lineage(repo: "BaseRepository", rev: str = "HEAD") -> dict[str, Any]:
    root = repo.resolve(rev)
    nodes: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    edges: list[dict[str, Any]] = []
    missing: list[str] = []
    stack = [root]
    while stack:
        cid = stack.pop()
        if cid in nodes or cid in missing:
            continue
        try:
            commit = repo.read_commit(cid)
        except MfgitError:
            missing.append(cid)
            continue
        node = _node(cid, commit)
        nodes[cid] = node
        order.append(cid)
        if node["kind"] in COMPOSITE_KINDS:
            for inp in node["inputs"]:
                edges.append({"from": cid, "to": inp["commit"], "weight": inp["weight"], "label": inp["label"]})
            # Depth-first, in recorded input order.
            for inp in reversed(node["inputs"]):
                if inp["commit"] not in nodes:
                    stack.append(inp["commit"])

    # Effective weights, memoised bottom-up: coef[c] = {leaf: (weight | None, paths, exact, nonlinear_via)}
    coef: dict[str, dict[str, dict[str, Any]]] = {}

    def coefficients(cid: str, trail: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
        if cid in coef:
            return coef[cid]
        node = nodes.get(cid)
        if node is None:
            return {}
        if cid in trail:  # a cycle cannot happen with content ids; be safe anyway
            return {}
        if node["kind"] not in COMPOSITE_KINDS:
            coef[cid] = {cid: {"weight": 1.0, "paths": 1, "exact": True, "nonlinear_via": [], "space": "weight"}}
            return coef[cid]
        if node["kind"] == "mixture":
            coef[cid] = _mixture_coefficients(cid, node, nodes, lambda m: coefficients(m, trail + (cid,)))
            return coef[cid]
        out: dict[str, dict[str, Any]] = {}
        linear = node["linear"]
        lam = node["lambda"] if linear else None
        ke = (node.get("kept_energy") or {}).get("min", 1.0)
        truncated = ke is not None and ke < KEPT_ENERGY_EXACT
        for inp in node["inputs"]:
            for leaf, c in coefficients(inp["commit"], trail + (cid,)).items():
                cur = out.setdefault(leaf, {"weight": 0.0, "paths": 0, "exact": True, "nonlinear_via": [],
                                            "space": "weight"})
                cur["paths"] += c["paths"]
                cur["exact"] = cur["exact"] and c["exact"] and not truncated
                via = list(c["nonlinear_via"])
                if not linear:
                    via.append(cid)
                for v in via:
                    if v not in cur["nonlinear_via"]:
                        cur["nonlinear_via"].append(v)
                if cur["weight"] is None or c["weight"] is None or not linear:
                    cur["weight"] = None
                else:
                    cur["weight"] += lam * float(inp["weight"]) * c["weight"]
        for c in out.values():
            if c["nonlinear_via"]:
                c["weight"] = None
                c["exact"] = False
        coef[cid] = out
        return out

    root_coef = coefficients(root)
    labels: dict[str, str] = {}
    for e in edges:
        if e["to"] not in labels and e["label"]:
            labels[e["to"]] = e["label"]
    leaves = []
    for leaf, c in root_coef.items():
        n = nodes[leaf]
        leaves.append({
            "commit": leaf,
            "site": n["site"],
            "label": labels.get(leaf),
            "author": n["author"],
            "timestamp": n["timestamp"],
            "subject": n["subject"],
            "effective_weight": num(c["weight"], 12) if c["weight"] is not None else None,
            "linear": not c["nonlinear_via"],
            "exact": c["exact"],
            "nonlinear_via": c["nonlinear_via"],
            "paths": c["paths"],
            "space": c.get("space", "weight"),
        })
    leaves.sort(key=lambda x: (x["site"] or "", x["commit"]))
    # Per node: the effective weights of its own leaves (the panel shows them).
    for cid in order:
        if nodes[cid]["kind"] in COMPOSITE_KINDS:
            nodes[cid]["leaf_weights"] = {leaf: (num(c["weight"], 12) if c["weight"] is not None else None)
                                          for leaf, c in sorted(coefficients(cid).items())}
    return {
        "rev": rev,
        "root": root,
        "linear": all(lf["linear"] for lf in leaves),
        "nodes": [nodes[c] for c in order],
        "edges": edges,
        "leaves": leaves,
        "missing": missing,
    }
