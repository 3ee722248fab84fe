"""The merge verb: resolve inputs, plan leaves, run the engine, commit.

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
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from mfgit.errors import MergeError
from mfgit.api.provenance import library_versions

if TYPE_CHECKING:
    from mfgit.api.repository import Repository

RECIPE_KEYS = {"strategy", "inputs", "weights", "weights_from", "params", "rank", "energy", "seed", "device",
               "dtype", "message", "rebuild"}


@dataclass
class MergeReport:
    commit: str | None
    adapter: str
    output_dir: str | None
    provenance: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"commit": self.commit, "adapter": self.adapter, "output_dir": self.output_dir,
                "provenance": self.provenance}


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MergeError(f"recipe {p} does not exist") from None
    except yaml.YAMLError as e:
        raise MergeError(f"recipe {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise MergeError(f"recipe {p} must be a mapping of keys ({', '.join(sorted(RECIPE_KEYS))})")
    unknown = set(data) - RECIPE_KEYS
    if unknown:
        raise MergeError(f"recipe {p}: unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(RECIPE_KEYS))}")
    return data


def _leaf_key(commit_id: str, commit) -> str:
    return f"site:{commit.site}" if commit.site else f"commit:{commit_id}"


def _meta_weight(repo: "Repository", cid: str, key: str, label: str) -> float:
    commit = repo.read_commit(cid)
    meta = (commit.provenance or {}).get("meta") or {}
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise MergeError(f"--weights-from {key}: {label} ({cid[:10]}) has no numeric metadata {key!r} "
                         f"(commit it with --meta {key}=N)")
    return float(value)


def _mode_weights(repo, mode: str, leaves: list[dict[str, Any]]) -> list[float]:
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


def _expand(repo, cid: str, label: str, weight: float, linear: bool) -> list[dict[str, Any]]:
    """Leaves of one input: itself, or the leaves of a linear composite scaled by `weight`."""
    commit = repo.read_commit(cid)
    prov = commit.provenance or {}
    if linear and prov.get("kind") == "merge" and prov.get("linear"):
        lam = float((prov.get("recipe") or {}).get("params", {}).get("lambda", 1.0))
        out = []
        for lf in prov.get("leaves", []):
            out.append({**lf, "weight": weight * lam * float(lf["weight"]), "label": lf.get("label", label)})
        return out
    return [{"commit": cid, "site": commit.site, "key": _leaf_key(cid, commit), "weight": weight, "label": label}]


def merge(repo: "Repository", revs: Sequence[str], *, strategy: str | None = None, weights: Sequence[float] | None = None,
          weights_from: str | None = None, params: dict[str, Any] | None = None, rank: Any = None,
          energy: float | None = None, seed: int | None = None, device: str | None = None, dtype: str | None = None,
          message: str | None = None, no_commit: bool = False, to: str | os.PathLike | None = None,
          rebuild: bool = False, force: bool = False, recipe: str | os.PathLike | None = None,
          progress: Callable[[int, int, str], None] | None = None, sign=None,
          search: str | None = None, score: Any = None, base: Any = None, data: Any = None,
          budget: int | None = None, bounds: Any = None, l1: float | None = None, candidates: int | None = None,
          from_candidates: str | None = None, select_by: Any = None, select_rule: str | None = None) -> MergeReport:
    """Merge `revs` (see the module docstring). Coefficient search (`search`, `score`, `base`, `data`,
    `budget`, `bounds`, `l1`) and candidate rounds (`candidates`; `from_candidates`, `select_by`,
    `select_rule`) are in mfgit.api.search and docs/search-and-eval.md."""
    t0 = time.perf_counter()
    if from_candidates is not None:
        from mfgit.api.search import select_candidate

        if revs or search or candidates:
            raise MergeError("--from-candidates takes no revisions, --search or --candidates: the round names them")
        return select_candidate(repo, from_candidates, select_by=select_by, rule=select_rule, message=message,
                                sign=sign, to=to, force=force)
    if candidates is not None and (search is not None or no_commit or to is not None):
        raise MergeError("--candidates publishes commits for the sites to evaluate; it cannot be combined with "
                         "--search, --no-commit or --to")
    if search is None and (any(v is not None for v in (score, base, data, budget, l1))
                           or (bounds is not None and candidates is None)):
        raise MergeError("--score, --base, --data, --budget, --l1 and --bounds go with --search "
                         "(--bounds also with --candidates)")
    if select_by is not None or select_rule is not None:
        raise MergeError("--select-by and --select-rule go with --from-candidates ROUND")
    if recipe is not None:
        r = load_recipe(recipe)
        revs = list(revs) or list(r.get("inputs") or [])
        strategy = strategy or r.get("strategy")
        weights = weights if weights is not None else r.get("weights")
        weights_from = weights_from or r.get("weights_from")
        params = {**(r.get("params") or {}), **(params or {})}
        rank = rank if rank is not None else r.get("rank")
        energy = energy if energy is not None else r.get("energy")
        seed = seed if seed is not None else r.get("seed")
        device = device or r.get("device")
        dtype = dtype or r.get("dtype")
        message = message or r.get("message")
        rebuild = rebuild or bool(r.get("rebuild"))
    if not revs and not rebuild:
        raise MergeError("nothing to merge: name the revisions to merge (or --recipe FILE, or --rebuild)")
    if weights is not None and weights_from:
        raise MergeError("give either --weights or --weights-from, not both")
    if no_commit and to is None:
        raise MergeError("--no-commit needs --to DIR for the result")

    branch_ref, tip = repo._commit_target()
    tip_commit = repo.read_commit(tip) if tip else None
    resolved = [(rev, repo.resolve(rev)) for rev in revs]
    # torch is imported only now, so that bad revisions fail fast.
    from mfgit.merge.engine import LINEAR_FAMILY, MergeInput, Recipe, merge_adapters
    from mfgit.merge.lowrank import RankPolicy

    if weights is not None and len(weights) != len(resolved):
        raise MergeError(f"--weights gives {len(weights)} weight(s) for {len(resolved)} revision(s)")
    integrating = tip_commit is not None and (tip_commit.provenance or {}).get("kind") == "merge"

    if integrating:
        old = tip_commit.provenance
        old_recipe = old["recipe"]
        overridden = any(v is not None for v in (strategy, rank, energy, seed, dtype)) or bool(params)
        strategy = strategy or old_recipe["strategy"]
        params = {**old_recipe.get("params", {}), **(params or {})} if strategy == old_recipe["strategy"] else (params or {})
        seed = old_recipe.get("seed", 0) if seed is None else seed
        policy = (RankPolicy.parse(rank, energy) if (rank is not None or energy is not None)
                  else RankPolicy.from_dict(old_recipe.get("rank", {})))
        dtype = dtype or old_recipe.get("dtype")
        mode = old_recipe.get("weights_mode", "uniform")
        if weights_from:
            mode = f"meta:{weights_from}"
        elif weights is not None:
            mode = "explicit"
        if mode == "explicit" and weights is None and resolved and search is None:  # a search starts new leaves at 0
            raise MergeError("the composite uses explicit weights; give --weights for the revisions you add")
        linear = strategy in LINEAR_FAMILY
        leaves = [dict(lf) for lf in old.get("leaves", [])]
        replaced, added = [], []
        for i, (rev, cid) in enumerate(resolved):
            w = float(weights[i]) if weights is not None else 0.0
            for new in _expand(repo, cid, rev, w, linear=True):
                keys = [lf["key"] for lf in leaves]
                if new["key"] in keys:
                    j = keys.index(new["key"])
                    if leaves[j]["commit"] == new["commit"] and not force:
                        continue
                    replaced.append({"key": new["key"], "old": leaves[j]["commit"], "new": new["commit"]})
                    leaves[j] = new
                else:
                    added.append(new["commit"])
                    leaves.append(new)
        if not replaced and not added and not rebuild and not overridden:
            raise MergeError("already up to date: every named revision is in the composite (use --rebuild to re-merge)")
        # A canonical leaf order (by site / commit key): a merge recomputed from
        # all leaves must not depend on the order in which the sites arrived
        # (float sums are not associative; the ids must agree bit for bit).
        leaves.sort(key=lambda lf: lf["key"])
        ws = _mode_weights(repo, mode, leaves)
        for lf, w in zip(leaves, ws):
            lf["weight"] = w
        if linear:
            # Exact: the composite is recomputed from all current leaves.
            integration = "rebuild" if rebuild else "exact"
        elif rebuild or replaced or overridden:
            integration = "rebuild"
        else:
            integration = "incremental"
        if integration == "incremental":
            # Combine the old composite with the new leaves only.
            new_leaves = [lf for lf in leaves if lf["commit"] in added]
            old_share = sum(lf["weight"] for lf in leaves if lf["commit"] not in added)
            engine_inputs = [(tip, "HEAD (composite)", old_share)] + [(lf["commit"], lf["label"], lf["weight"]) for lf in new_leaves]
        else:
            engine_inputs = [(lf["commit"], lf.get("label", lf["commit"][:10]), lf["weight"]) for lf in leaves]
        parents = [tip] + [cid for _, cid in resolved if cid != tip]
        integration_info = {"mode": integration, "base": tip, "replaced": replaced, "added": added}
    else:
        strategy = strategy or "linear"
        params = params or {}
        seed = 0 if seed is None else seed
        if rank is None and energy is None and strategy in LINEAR_FAMILY:
            # The linear family is exact in factor space: keep every direction
            # unless the user asks for a truncation.
            policy = RankPolicy("sum")
        else:
            policy = RankPolicy.parse(rank, energy)
        linear = strategy in LINEAR_FAMILY
        if weights_from:
            mode = f"meta:{weights_from}"
        elif weights is not None:
            mode = "explicit"
        else:
            mode = "uniform"
        pseudo = [{"commit": cid, "label": rev} for rev, cid in resolved]
        ws = _mode_weights(repo, mode, [{**p, "weight": (weights[i] if weights is not None else 0)} for i, p in enumerate(pseudo)])
        engine_inputs = [(cid, rev, w) for (rev, cid), w in zip(resolved, ws)]
        leaves = []
        seen_keys: dict[str, str] = {}
        for (rev, cid), w in zip(resolved, ws):
            for lf in _expand(repo, cid, rev, w, linear=linear):
                if lf["key"] in seen_keys:
                    raise MergeError(f"{rev} and {seen_keys[lf['key']]} both bring a leaf of "
                                     f"{lf['key'].replace('site:', 'site ')}; merge one version per site")
                seen_keys[lf["key"]] = rev
                leaves.append(lf)
        parents = ([tip] if tip else []) + [cid for _, cid in resolved if cid != tip]
        integration_info = {"mode": "one-shot", "base": None, "replaced": [], "added": [c for _, c in resolved]}

    rec = Recipe(strategy, params or {}, int(seed), policy, device or "auto", dtype).resolved()
    inputs = [MergeInput(label, cid, repo.read_adapter(repo.read_commit(cid).adapter), float(w))
              for cid, label, w in engine_inputs]
    out, search_record = None, None
    if integrating and (tip_commit.provenance or {}).get("search"):
        from mfgit.api.search import check_integration

        check_integration(tip_commit.provenance, search)
    if search is not None:  # weights chosen by the user's score (mfgit.api.search)
        from mfgit.api.search import search_hook

        inputs, leaves, out, search_record = search_hook(
            repo, inputs=inputs, rec=rec, resolved=resolved, leaves=leaves, integrating=integrating, linear=linear,
            old_provenance=tip_commit.provenance if tip_commit else None, search=search, score=score, base=base,
            data=data, budget=budget, bounds=bounds, l1=l1, seed=rec.seed)
        mode = "explicit"
    if out is None:
        out = merge_adapters(inputs, rec, lambda oid, dev: repo.load_tensor(oid, device=dev), progress=progress)
    adapter_id = repo.store_adapter_tensors(out.config, out.tensors, metadata={"format": "pt"},
                                            base_model=inputs[0].adapter.base_model)
    lam = float(rec.params.get("lambda", 1.0)) if linear else None
    energies = [m["kept_energy"] for m in out.modules.values()]
    provenance = {
        "kind": "merge",
        "recipe": {**rec.to_dict(), "weights_mode": mode},
        "inputs": [{"commit": i.id, "label": i.label, "weight": i.weight} for i in inputs],
        "leaves": [{"commit": lf["commit"], "site": lf.get("site"), "key": lf["key"], "label": lf.get("label"),
                    "weight": lf["weight"], "effective_weight": (lam * lf["weight"]) if linear else None}
                   for lf in leaves],
        "linear": linear,
        "integration": integration_info,
        "modules": out.modules,
        "kept_energy": {"min": min(energies) if energies else 1.0,
                        "mean": sum(energies) / len(energies) if energies else 1.0},
        "device": {"type": out.device, "name": out.device_name},
        "dtype": {"compute": "F32", "output": out.dtype},
        "versions": library_versions(),
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    if search_record is not None:
        provenance["search"] = search_record
        if search_record["mode"] == "layer-weights":  # one weight per layer: no single weight per leaf
            provenance["linear"] = False
            for lf in provenance["leaves"]:
                lf["effective_weight"] = None
    if candidates is not None:
        from mfgit.api.search import publish_candidates

        return publish_candidates(repo, count=candidates, inputs=inputs, rec=rec, resolved=resolved, leaves=leaves,
                                  integrating=integrating, linear=linear, parents=parents, tip=tip,
                                  provenance=provenance, first_output=out, bounds=bounds, seed=rec.seed,
                                  message=message, sign=sign)
    if no_commit:
        adapter = repo.read_adapter(adapter_id)
        path = repo.write_adapter_dir(adapter, to, force=force)
        return MergeReport(None, adapter_id, str(path), provenance)
    if message is None:
        message = f"Merge {', '.join(r for r, _ in resolved) or 'leaves'} ({strategy})"
    info = repo._write_commit(adapter_id, parents, message, provenance, branch_ref, tip, sign=sign)
    out_dir = None
    if to is not None:
        out_dir = str(repo.write_adapter_dir(repo.read_adapter(adapter_id), to, force=force))
    return MergeReport(info.id, adapter_id, out_dir, provenance)


def reproduce(repo: "Repository", cid: str, *, device: str | None = None) -> dict[str, Any]:
    """Re-run a merge commit from its recorded recipe and inputs.

    Returns {"commit", "recorded", "reproduced", "identical", "max_abs_diff"}.
    """
    import torch

    from mfgit.merge.engine import MergeInput, Recipe, merge_adapters
    from mfgit.merge.lowrank import RankPolicy

    commit = repo.read_commit(cid)
    prov = commit.provenance
    if prov.get("kind") != "merge":
        raise MergeError(f"{cid[:10]} is not a merge commit")
    r = prov["recipe"]
    if device is None:
        # Re-run on the recorded device type when this machine has it; a merge
        # recorded on CUDA is re-run on the CPU elsewhere (and then compared
        # within a tolerance, see mfgit verify --reproduce).
        recorded = prov.get("device", {}).get("type", "cpu")
        device = recorded if recorded != "cuda" or torch.cuda.is_available() else "cpu"
    rec = Recipe(r["strategy"], r.get("params", {}), int(r.get("seed", 0)), RankPolicy.from_dict(r.get("rank", {})),
                 device, r.get("dtype")).resolved()
    inputs = [MergeInput(i["label"], i["commit"], repo.read_adapter(repo.read_commit(i["commit"]).adapter), float(i["weight"]))
              for i in prov["inputs"]]
    search = prov.get("search") or {}
    if search.get("mode") == "layer-weights":  # one weight per input and layer (mfgit.api.search)
        from mfgit.api.search import merge_layer_weights

        out = merge_layer_weights(inputs, rec, search["chosen"]["matrix"], search["layout"]["groups"],
                                  lambda oid, dev: repo.load_tensor(oid, device=dev))
    else:
        out = merge_adapters(inputs, rec, lambda oid, dev: repo.load_tensor(oid, device=dev))
    from mfgit.api.repository import _torch_to_bytes
    from mfgit.objects.model import tensor_id

    recorded = repo.read_adapter(commit.adapter)
    identical = True
    max_diff = 0.0
    for name, t in out.tensors.items():
        th, raw = _torch_to_bytes(t)
        rec_t = recorded.tensors.get(name)
        if rec_t is None or rec_t["id"] != tensor_id(th, raw):
            identical = False
    # Compare the updates themselves (factorisations may differ in basis across devices).
    for module, m in recorded.modules.items():
        B0 = repo.load_tensor(recorded.tensors[m["lora_B"]]["id"]).double()
        A0 = repo.load_tensor(recorded.tensors[m["lora_A"]]["id"]).double()
        B1 = out.tensors[m["lora_B"]].double() if m["lora_B"] in out.tensors else torch.zeros_like(B0)
        A1 = out.tensors[m["lora_A"]].double() if m["lora_A"] in out.tensors else torch.zeros_like(A0)
        d = (B0 @ A0 - B1 @ A1).abs().max().item() if B0.numel() and A0.numel() else 0.0
        max_diff = max(max_diff, d)
    return {"commit": cid, "device": out.device, "recorded_device": prov.get("device", {}).get("type"),
            "identical": identical and set(out.tensors) == set(recorded.tensors), "max_abs_diff": max_diff}
