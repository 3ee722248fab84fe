"""The merge verb: plan (mfgit.merge.plan), merge (the engine), store, commit.

``merge(repo, MergeRequest(...))`` merges and commits on the current branch;
a `SearchRequest` chooses the weights first (mfgit.api.search), a
`CandidatesRequest` publishes candidates instead of committing, and a
`SelectionRequest` commits the candidate the sites' notes chose
(mfgit.api.candidates). Semantics of integration: mfgit.merge.plan.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from mfgit.errors import MergeError
from mfgit.repo.crash import crashpoint

if TYPE_CHECKING:
    from mfgit.api.candidates import CandidatesReport, CandidatesRequest, SelectionRequest
    from mfgit.api.search import SearchRequest
    from mfgit.merge.plan import MergeRequest
    from mfgit.repo.base import BaseRepository, Signer


@dataclass
class MergeReport:
    commit: str | None
    adapter: str
    output_dir: str | None
    provenance: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"commit": self.commit, "adapter": self.adapter, "output_dir": self.output_dir,
                "provenance": self.provenance}


@dataclass(frozen=True)
class Output:
    """Where a merge's result goes besides the commit: ``--to DIR [--force]``, ``--no-commit``."""

    to: str | os.PathLike | None = None
    force: bool = False
    no_commit: bool = False


def merge(repo: "BaseRepository", request: "MergeRequest", *, search: "SearchRequest | None" = None,
          candidates: "CandidatesRequest | None" = None, selection: "SelectionRequest | None" = None,
          output: Output = Output(), sign: "Signer | None" = None,
          progress: Callable[[int, int, str], None] | None = None) -> "MergeReport | CandidatesReport":
    """Merge what `request` names into the current branch (see the module docstring)."""
    from mfgit.repo.checkout import write_adapter_dir

    t0 = time.perf_counter()
    if selection is not None:
        from mfgit.api.candidates import select_candidate

        if request.revs or search or candidates:
            raise MergeError("--from-candidates takes no revisions, --search or --candidates: the round names them")
        cid, adapter_id, prov = select_candidate(repo, selection, message=request.message, sign=sign)
        return MergeReport(cid, adapter_id, _write_out(repo, adapter_id, output), prov)
    if candidates is not None and (search is not None or output.no_commit or output.to is not None):
        raise MergeError("--candidates publishes commits for the sites to evaluate; it cannot be combined with "
                         "--search, --no-commit or --to")
    if output.no_commit and output.to is None:
        raise MergeError("--no-commit needs --to DIR for the result")
    # torch is imported only now, so that bad options fail fast.
    from mfgit.merge.engine import merge_adapters
    from mfgit.merge.plan import plan_merge
    from mfgit.repo.importer import store_adapter

    plan = plan_merge(repo, request, searching=search is not None)
    out, search_record = None, None
    if plan.integrating and (plan.old_provenance or {}).get("search"):
        from mfgit.api.search import check_integration

        check_integration(plan.old_provenance, search.mode if search else None)
    if search is not None:  # weights chosen by the user's score (mfgit.api.search)
        from mfgit.api.search import run_for_plan

        plan, out, search_record = run_for_plan(repo, plan, search)
    if out is None:
        out = merge_adapters(plan.inputs, plan.recipe, lambda oid, dev: repo.load_tensor(oid, device=dev),
                             progress=progress)
    crashpoint("merge-before-adapter")
    adapter_id = store_adapter(repo, out.config, out.tensors, metadata={"format": "pt"},
                               base_model=plan.inputs[0].adapter.base_model)
    crashpoint("merge-after-adapter")
    provenance = plan.provenance(out, time.perf_counter() - t0)
    if search_record is not None:
        provenance["search"] = search_record
        if search_record["mode"] == "layer-weights":  # one weight per layer: no single weight per leaf
            provenance["linear"] = False
            for lf in provenance["leaves"]:
                lf["effective_weight"] = None
    if candidates is not None:
        from mfgit.api.candidates import publish_candidates

        return publish_candidates(repo, plan, candidates, provenance=provenance, first_output=out,
                                  message=request.message, sign=sign)
    if output.no_commit:
        path = write_adapter_dir(repo, repo.read_adapter(adapter_id), output.to, force=output.force)
        return MergeReport(None, adapter_id, str(path), provenance)
    message = request.message
    if message is None:
        message = f"Merge {', '.join(r for r, _ in plan.resolved) or 'leaves'} ({plan.recipe.strategy})"
    info = repo.write_commit(adapter_id, plan.parents, message, provenance, plan.branch_ref, plan.tip, sign=sign)
    return MergeReport(info.id, adapter_id, _write_out(repo, adapter_id, output), provenance)


def _write_out(repo: "BaseRepository", adapter_id: str, output: Output) -> str | None:
    if output.to is None:
        return None
    from mfgit.repo.checkout import write_adapter_dir

    return str(write_adapter_dir(repo, repo.read_adapter(adapter_id), output.to, force=output.force))


_SEARCH_KEYS = ("score", "base", "data", "budget", "bounds", "l1", "start")
_REQUEST_KEYS = ("strategy", "weights_from", "rank", "energy", "seed", "device", "dtype", "message", "rebuild", "force",
                 "base_weights")


def merge_keywords(repo: "BaseRepository", revs: list[str], *, params: dict[str, Any] | None = None,
                   weights: Any = None, recipe: str | os.PathLike | None = None, to: Any = None,
                   no_commit: bool = False, search: str | None = None, candidates: Any = None,
                   from_candidates: str | None = None, select_by: Any = None, select_rule: str | None = None,
                   sign: "Signer | None" = None, progress: Callable[[int, int, str], None] | None = None,
                   **keywords: Any) -> "MergeReport | CandidatesReport":
    """`merge` with the options as keywords, as `Repository.merge` and the CLI take them.

    Keywords that are not options of the merge (``density=0.2``) are strategy
    parameters. The combinations that make no sense are refused here, before
    anything is resolved.
    """
    from mfgit.api.candidates import CandidatesRequest, SelectionRequest
    from mfgit.api.search import SearchRequest
    from mfgit.merge.plan import MergeRequest

    search_kw = {k: keywords.pop(k) for k in _SEARCH_KEYS if k in keywords}
    request_kw = {k: keywords.pop(k) for k in _REQUEST_KEYS if k in keywords}
    force = bool(request_kw.get("force"))
    strategy_params = {**(params or {}), **keywords}
    if from_candidates is not None and (revs or search or candidates):
        raise MergeError("--from-candidates takes no revisions, --search or --candidates: the round names them")
    if candidates is not None and (search is not None or no_commit or to is not None):
        raise MergeError("--candidates publishes commits for the sites to evaluate; it cannot be combined with "
                         "--search, --no-commit or --to")
    given = {k: v for k, v in search_kw.items() if v is not None}
    if search is None and (set(given) - {"bounds"} or ("bounds" in given and candidates is None)):
        raise MergeError("--score, --base, --data, --budget, --l1, --start and --bounds go with --search "
                         "(--bounds also with --candidates)")
    if from_candidates is None and (select_by is not None or select_rule is not None):
        raise MergeError("--select-by and --select-rule go with --from-candidates ROUND")
    request = MergeRequest(revs=tuple(revs), weights=None if weights is None else tuple(weights),
                           params=strategy_params, **request_kw)
    if recipe is not None:
        request = request.with_recipe_file(recipe)
    return merge(
        repo, request,
        search=SearchRequest(search, **search_kw) if search is not None else None,
        candidates=CandidatesRequest(candidates, search_kw.get("bounds")) if candidates is not None else None,
        selection=(SelectionRequest(from_candidates, select_by, select_rule) if from_candidates is not None
                   else None),
        output=Output(to=to, force=force, no_commit=no_commit), sign=sign, progress=progress)
