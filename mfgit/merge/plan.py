"""Planning a merge: a `MergeRequest` (what the user asked) becomes a `MergePlan` (what will run).

Semantics (docs/merging.md, "Using it"):

* On a branch with no commit yet, or whose tip is not a merge composite,
  ``merge R1 R2 …`` merges exactly the named revisions; the new commit's
  parents are the tip (if any) then R1, R2, ….
* On a branch whose tip is a merge composite, the named revisions are
  integrated into it. Every merge commit records its *leaves*: the site
  commits that went in, keyed by site, with their weights. A new version of
  a site replaces that site's leaf. For the linear family the composite is
  recomputed from all current leaves, which is exact and independent of
  arrival order; element-wise strategies combine the old composite with the
  new leaves (cheap), unless a leaf was replaced or ``rebuild`` is asked,
  in which case all leaves are merged again from scratch.

The plan resolves every revision, every weight and the recipe (its
parameters validated once, against the strategy table) before any tensor
is read; the engine then only computes.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence

from mfgit.errors import IsAMixture, MergeError
from mfgit.merge.baseweights import open_base_weights
from mfgit.merge.engine import LINEAR_FAMILY, MergeInput, MergeOutput, Recipe
from mfgit.merge.lowrank import RankPolicy
from mfgit.merge.recipes import load_recipe, mergekit_differences
from mfgit.merge.strategies import exact_by_default
from mfgit.repo.provenance import library_versions

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository

@dataclass(frozen=True)
class MergeRequest:
    """What the user asked for: revisions and recipe options, none of them resolved yet."""

    revs: tuple[str, ...] = ()
    strategy: str | None = None
    weights: tuple[float, ...] | None = None
    weights_from: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    rank: Any = None
    energy: float | None = None
    seed: int | None = None
    device: str | None = None
    dtype: str | None = None
    message: str | None = None
    rebuild: bool = False
    force: bool = False  # re-merge a leaf already in the composite
    recipe_source: Mapping[str, Any] | None = None  # the mergekit configuration the request came from
    base_weights: str | os.PathLike | None = None  # the base model's weights, for DoRA inputs (mfgit.merge.baseweights)

    def with_recipe_file(self, path: str | os.PathLike) -> "MergeRequest":
        """This request completed from a YAML recipe file (mfgit's or mergekit's); what the request already says wins."""
        r, source = load_recipe(path)
        return dataclasses.replace(
            self,
            recipe_source=source,
            revs=self.revs or tuple(r.get("inputs") or ()),
            strategy=self.strategy or r.get("strategy"),
            weights=self.weights if self.weights is not None else _tuple(r.get("weights")),
            weights_from=self.weights_from or r.get("weights_from"),
            params={**(r.get("params") or {}), **self.params},
            rank=self.rank if self.rank is not None else r.get("rank"),
            energy=self.energy if self.energy is not None else r.get("energy"),
            seed=self.seed if self.seed is not None else r.get("seed"),
            device=self.device or r.get("device"),
            dtype=self.dtype or r.get("dtype"),
            message=self.message or r.get("message"),
            rebuild=self.rebuild or bool(r.get("rebuild")),
            base_weights=self.base_weights or _beside(path, r.get("base_weights")),
        )


def _beside(recipe: str | os.PathLike, value: Any) -> str | None:
    """A path a recipe names, relative to the recipe's own folder (as a YAML file is read wherever it lies)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise MergeError(f"recipe {recipe}: base_weights must be a path, got {value!r}")
    return os.path.join(os.path.dirname(os.fspath(recipe)), os.path.expanduser(value))


def _tuple(v: Any) -> tuple | None:
    return None if v is None else tuple(v)


@dataclass
class MergePlan:
    """Everything a merge will do, resolved: engine inputs with their weights, leaves, parents, recipe."""

    request: MergeRequest
    recipe: Recipe  # resolved: parameters validated against the strategy table
    mode: str  # how the weights were chosen: uniform, meta:KEY or explicit
    linear: bool
    integrating: bool  # into the composite at the branch tip
    branch_ref: str | None
    tip: str | None
    old_provenance: dict[str, Any] | None  # the tip composite's, when integrating
    resolved: list[tuple[str, str]]  # (revision as named, commit id)
    inputs: list[MergeInput]
    leaves: list[dict[str, Any]]
    parents: list[str]
    integration: dict[str, Any]

    def with_weights(self, repo: "BaseRepository", weights: Sequence[float], mode: str = "explicit") -> "MergePlan":
        """The same plan with other input weights (a search's or a candidate's); the leaves follow."""
        inputs = [dataclasses.replace(inp, weight=float(w)) for inp, w in zip(self.inputs, weights)]
        if self.integrating:
            leaves = [dict(lf, weight=float(w)) for lf, w in zip(self.leaves, weights)]
        else:
            leaves = [lf for (rev, cid), w in zip(self.resolved, weights)
                      for lf in expand_leaves(repo, cid, rev, float(w), linear=True)]
        return dataclasses.replace(self, inputs=inputs, leaves=leaves, mode=mode)

    def provenance(self, out: MergeOutput, seconds: float) -> dict[str, Any]:
        """The merge commit's provenance: everything needed to re-run it and get the same bytes."""
        lam = float(self.recipe.params.get("lambda", 1.0)) if self.linear else None
        energies = [m["kept_energy"] for m in out.modules.values()]
        return {
            "kind": "merge",
            "recipe": {**self.recipe.to_dict(), "weights_mode": self.mode},
            "inputs": [{"commit": i.id, "label": i.label, "weight": i.weight} for i in self.inputs],
            "leaves": [{"commit": lf["commit"], "site": lf.get("site"), "key": lf["key"], "label": lf.get("label"),
                        "weight": lf["weight"], "effective_weight": (lam * lf["weight"]) if self.linear else None}
                       for lf in self.leaves],
            "linear": self.linear,
            "integration": self.integration,
            "modules": out.modules,
            # DoRA inputs were merged as their effective updates, which depend on these base weights.
            **({"dora": out.dora} if out.dora is not None else {}),
            "kept_energy": {"min": min(energies) if energies else 1.0,
                            "mean": sum(energies) / len(energies) if energies else 1.0},
            "device": {"type": out.device, "name": out.device_name},
            "dtype": {"compute": "F32", "output": out.dtype},
            "versions": library_versions(),
            "wall_time_s": round(seconds, 3),
            **({"recipe_source": {"format": "mergekit", "config": dict(self.request.recipe_source),
                                  "differences": mergekit_differences(self.request.recipe_source)}}
               if self.request.recipe_source is not None else {}),
        }


def leaf_key(commit_id: str, commit) -> str:
    return f"site:{commit.site}" if commit.site else f"commit:{commit_id}"


def expand_leaves(repo: "BaseRepository", cid: str, label: str, weight: float, linear: bool) -> list[dict[str, Any]]:
    """Leaves of one input: itself, or the leaves of a linear composite scaled by `weight`."""
    commit = repo.read_commit(cid)
    prov = commit.provenance or {}
    if linear and prov.get("kind") == "merge" and prov.get("linear"):
        lam = float((prov.get("recipe") or {}).get("params", {}).get("lambda", 1.0))
        return [{**lf, "weight": weight * lam * float(lf["weight"]), "label": lf.get("label", label)}
                for lf in prov.get("leaves", [])]
    return [{"commit": cid, "site": commit.site, "key": leaf_key(cid, commit), "weight": weight, "label": label}]


def _meta_weight(repo: "BaseRepository", cid: str, key: str, label: str) -> float:
    commit = repo.read_commit(cid)
    meta = (commit.provenance or {}).get("meta") or {}
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise MergeError(f"--weights-from {key}: {label} ({cid[:10]}) has no numeric metadata {key!r} "
                         f"(commit it with --meta {key}=N)")
    return float(value)


def mode_weights(repo: "BaseRepository", mode: str, leaves: list[dict[str, Any]]) -> list[float]:
    """Weights of `leaves` under a weights mode (uniform / meta:KEY / explicit)."""
    if mode == "uniform":
        return [1.0 / len(leaves)] * len(leaves)
    if mode.startswith("meta:"):
        key = mode[5:]
        raw = [_meta_weight(repo, lf["commit"], key, lf.get("label", lf["commit"][:10])) for lf in leaves]
        total = sum(raw)
        if total <= 0:
            raise MergeError(f"--weights-from {key}: the values sum to 0")
        return [r / total for r in raw]
    return [float(lf["weight"]) for lf in leaves]


def _mode_of(request: MergeRequest, default: str) -> str:
    if request.weights_from:
        return f"meta:{request.weights_from}"
    if request.weights is not None:
        return "explicit"
    return default


def plan_merge(repo: "BaseRepository", request: MergeRequest, *, searching: bool = False) -> MergePlan:
    """Resolve `request` against the branch it merges into (see the module docstring).

    `searching`: the weights will be chosen by a search, so new leaves of an
    explicitly weighted composite need no --weights.
    """
    req = request
    if not req.revs and not req.rebuild:
        raise MergeError("nothing to merge: name the revisions to merge (or --recipe FILE, or --rebuild)")
    if req.weights is not None and req.weights_from:
        raise MergeError("give either --weights or --weights-from, not both")
    branch_ref, tip = repo.commit_target()
    tip_commit = repo.read_commit(tip) if tip else None
    resolved = [(rev, repo.resolve(rev)) for rev in req.revs]
    for rev, cid in resolved:  # --- mixture: nothing to merge in weight space ---
        if repo.read_commit(cid).is_mixture:
            raise IsAMixture(rev, "merge combines adapters in weight space; merge its members, or add a site to "
                                  "the mixture with mfgit mix")
    if req.weights is not None and len(req.weights) != len(resolved):
        raise MergeError(f"--weights gives {len(req.weights)} weight(s) for {len(resolved)} revision(s)")
    old = (tip_commit.provenance or {}) if tip_commit is not None else {}
    integrating = old.get("kind") == "merge"
    d = (_plan_integration(repo, req, resolved, tip, old, searching) if integrating
         else _plan_one_shot(repo, req, resolved, tip))
    recipe = Recipe(d.strategy, d.params, int(d.seed), d.policy, req.device or "auto", d.dtype).resolved()
    adapters = [repo.read_adapter(repo.read_commit(cid).adapter) for cid, _label, _w in d.engine_inputs]
    # Opened (and hashed, which reads every byte of a possibly large model) only for DoRA inputs.
    needed = req.base_weights is not None and any(a.config.get("use_dora") for a in adapters)
    base = open_base_weights(req.base_weights) if needed else None
    inputs = [MergeInput(label, cid, a, float(w), base) for (cid, label, w), a in zip(d.engine_inputs, adapters)]
    return MergePlan(req, recipe, d.mode, d.strategy in LINEAR_FAMILY, integrating, branch_ref, tip,
                     old if integrating else None, resolved, inputs, d.leaves, d.parents, d.integration)


class _Decided(NamedTuple):
    """What one of the two planning paths decided, before any adapter is read."""

    strategy: str
    params: dict[str, Any]
    seed: int
    policy: RankPolicy
    dtype: str | None
    mode: str
    leaves: list[dict[str, Any]]
    engine_inputs: list[tuple[str, str, float]]  # (commit, label, weight)
    parents: list[str]
    integration: dict[str, Any]


def _plan_integration(repo: "BaseRepository", req: MergeRequest, resolved: list[tuple[str, str]], tip: str,
                      old: dict[str, Any], searching: bool) -> _Decided:
    old_recipe = old["recipe"]
    overridden = any(v is not None for v in (req.strategy, req.rank, req.energy, req.seed, req.dtype)) or bool(req.params)
    strategy = req.strategy or old_recipe["strategy"]
    params = ({**old_recipe.get("params", {}), **req.params} if strategy == old_recipe["strategy"]
              else dict(req.params))
    seed = old_recipe.get("seed", 0) if req.seed is None else req.seed
    policy = (RankPolicy.parse(req.rank, req.energy) if (req.rank is not None or req.energy is not None)
              else RankPolicy.from_dict(old_recipe.get("rank", {})))
    dtype = req.dtype or old_recipe.get("dtype")
    mode = _mode_of(req, old_recipe.get("weights_mode", "uniform"))
    if mode == "explicit" and req.weights is None and resolved and not searching:  # a search starts new leaves at 0
        raise MergeError("the composite uses explicit weights; give --weights for the revisions you add")
    leaves = [dict(lf) for lf in old.get("leaves", [])]
    replaced, added = [], []
    for i, (rev, cid) in enumerate(resolved):
        w = float(req.weights[i]) if req.weights is not None else 0.0
        for new in expand_leaves(repo, cid, rev, w, linear=True):
            keys = [lf["key"] for lf in leaves]
            if new["key"] in keys:
                j = keys.index(new["key"])
                if leaves[j]["commit"] == new["commit"] and not req.force:
                    continue
                replaced.append({"key": new["key"], "old": leaves[j]["commit"], "new": new["commit"]})
                leaves[j] = new
            else:
                added.append(new["commit"])
                leaves.append(new)
    if not replaced and not added and not req.rebuild and not overridden:
        raise MergeError("already up to date: every named revision is in the composite (use --rebuild to re-merge)")
    # A canonical leaf order (by site / commit key): a merge recomputed from
    # all leaves must not depend on the order in which the sites arrived
    # (float sums are not associative; the ids must agree bit for bit).
    leaves.sort(key=lambda lf: lf["key"])
    for lf, w in zip(leaves, mode_weights(repo, mode, leaves)):
        lf["weight"] = w
    if strategy in LINEAR_FAMILY:
        # Exact: the composite is recomputed from all current leaves.
        mode_name = "rebuild" if req.rebuild else "exact"
    elif req.rebuild or replaced or overridden:
        mode_name = "rebuild"
    else:
        mode_name = "incremental"
    if mode_name == "incremental":
        # Combine the old composite with the new leaves only.
        new_leaves = [lf for lf in leaves if lf["commit"] in added]
        old_share = sum(lf["weight"] for lf in leaves if lf["commit"] not in added)
        engine_inputs = [(tip, "HEAD (composite)", old_share)] + [(lf["commit"], lf["label"], lf["weight"])
                                                                  for lf in new_leaves]
    else:
        engine_inputs = [(lf["commit"], lf.get("label", lf["commit"][:10]), lf["weight"]) for lf in leaves]
    parents = [tip] + [cid for _, cid in resolved if cid != tip]
    integration = {"mode": mode_name, "base": tip, "replaced": replaced, "added": added}
    return _Decided(strategy, params, seed, policy, dtype, mode, leaves, engine_inputs, parents, integration)


def _plan_one_shot(repo: "BaseRepository", req: MergeRequest, resolved: list[tuple[str, str]],
                   tip: str | None) -> _Decided:
    strategy = req.strategy or "linear"
    seed = 0 if req.seed is None else req.seed
    if req.rank is None and req.energy is None and exact_by_default(strategy):
        # Exact in factor space (the linear family, and the combinations of
        # the updates): keep every direction unless a truncation is asked for.
        policy = RankPolicy("sum")
    else:
        policy = RankPolicy.parse(req.rank, req.energy)
    mode = _mode_of(req, "uniform")
    pseudo = [{"commit": cid, "label": rev, "weight": (req.weights[i] if req.weights is not None else 0)}
              for i, (rev, cid) in enumerate(resolved)]
    ws = mode_weights(repo, mode, pseudo)
    engine_inputs = [(cid, rev, w) for (rev, cid), w in zip(resolved, ws)]
    leaves = []
    seen_keys: dict[str, str] = {}
    for (rev, cid), w in zip(resolved, ws):
        for lf in expand_leaves(repo, cid, rev, w, linear=strategy in LINEAR_FAMILY):
            if lf["key"] in seen_keys:
                raise MergeError(f"{rev} and {seen_keys[lf['key']]} both bring a leaf of "
                                 f"{lf['key'].replace('site:', 'site ')}; merge one version per site")
            seen_keys[lf["key"]] = rev
            leaves.append(lf)
    parents = ([tip] if tip else []) + [cid for _, cid in resolved if cid != tip]
    integration = {"mode": "one-shot", "base": None, "replaced": [], "added": [c for _, c in resolved]}
    return _Decided(strategy, dict(req.params), seed, policy, req.dtype, mode, leaves, engine_inputs, parents,
                    integration)
