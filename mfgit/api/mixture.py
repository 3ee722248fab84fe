"""MedForge-Mixture: an output-space composite. No weights are merged.

A mixture commit names member commits and a weight for each; its prediction
is Σⱼ wⱼ·softmax(logits of the base model with member j's adapter), one
forward pass per member (docs/merging.md, "MedForge-Mixture"; the encoding
is in docs/design.md, "Mixture").

``mix(repo, revs, weights=...)`` commits one. Each revision contributes its
*members*: a plain commit is its own single member (weight 1), a mixture its
members with their weights. A revision's weight multiplies its members'
weights, so mixing an existing mixture with a late site, ``mix([mixture,
site], weights=[a, b])``, gives the flat mixture ``[a·w₁, …, a·wₙ, b]`` —
MedForge's stagewise rescale (w ← [a·w, b]). Without weights each revision
weighs its share of the members (nᵢ / N): a uniform mixture stays uniform
when a site joins.

With ``search="weights"`` the revisions' weights are chosen by the user's
score (mfgit.api.usercode; the same optimiser as ``merge --search``,
mfgit.api.search.minimise), or by the built-in pair ``score="prompts",
data="attachments:NAME"``: every member site's committed data, read and
recorded by digest (mfgit.api.sitedata), scored by the generalized KL of
the mixture (mfgit.api.mixscore). Jointly, or ``stagewise`` as MedForge does it:
stage j searches [a, b] from [0.5, 0.5] within the bounds (default ±1.5) to
minimise score + l1·mean(|[a, b]|) (default l1 0.05) and sets w ← [a·w, b·wⱼ].
Each candidate is scored on one `MixtureModule` whose members are loaded
once; only its weights change between candidates.

``load_mixture(repo, base_model, rev)`` gives that module: every member
loaded onto `base_model` with PEFT's multi-adapter API (``load_adapter``,
``set_adapter``); its forward returns the mixed probabilities.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from mfgit.errors import IsAMixture, MixtureBaseMismatch, MixtureError
from mfgit.objects.model import Adapter
from mfgit.refs import HEADS
from mfgit.repo.mixture import flatten_members, revision_members

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository, Signer

COMBINE = "softmax"
SEARCH_MODES = ("weights",)
STAGE_START = 0.5  # MedForge's start for [a, b] at every stage
DEFAULT_L1 = 0.05  # MedForge's penalty: l1 · mean(|w|)


@dataclass
class MixReport:
    commit: str
    adapter: str
    members: list[dict[str, Any]]
    provenance: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"commit": self.commit, "adapter": self.adapter, "members": self.members,
                "provenance": self.provenance}


# -- members ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rev:
    rev: str
    commit: str
    members: list[tuple[str, float]]  # flattened: (member commit, weight inside this revision)


def _resolve(repo: "BaseRepository", revs: Sequence[str]) -> list[_Rev]:
    out = []
    for rev in revs:
        cid = repo.resolve(rev)
        c = repo.read_commit(cid)
        out.append(_Rev(rev, cid, revision_members(c, cid)))
    return out


def _base_model(repo: "BaseRepository", members: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The one base model of `members` ((label, commit)); MixtureBaseMismatch if they differ."""
    first: tuple[str, dict[str, Any]] | None = None
    for label, cid in members:
        c = repo.read_commit(cid)
        if c.is_mixture:
            raise IsAMixture(label, "a member of a mixture must be an adapter (mix flattens mixtures into "
                                    "their members; this one was written otherwise)")
        base = repo.read_adapter(c.adapter).base_model
        if first is None:
            first = (label, base)
        elif base != first[1]:
            raise MixtureBaseMismatch(first[0], first[1], label, base)
    assert first is not None
    return first[1]


def _flatten(revs: Sequence[_Rev], weights: Sequence[float]) -> list[tuple[str, float]]:
    """The members of all revisions, each weighted by its revision's weight (verify --reproduce
    flattens the recorded inputs the same way)."""
    return flatten_members([(r.members, a) for r, a in zip(revs, weights)])


def _check_weights(weights: Any, n: int) -> list[float]:
    try:
        ws = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise MixtureError(f"--weights: give numbers, got {weights!r}") from None
    if len(ws) != n:
        raise MixtureError(f"--weights gives {len(ws)} weight(s) for {n} revision(s): give one per revision")
    if not all(math.isfinite(w) for w in ws):
        raise MixtureError("--weights must be finite numbers")
    return ws


def empty_adapter(base_model: dict[str, Any]) -> Adapter:
    """The adapter a mixture commit names: no tensors, only the members' base model.

    A mixture has no merged adapter; naming an empty one (rather than a
    member's) means no reader that looks only at ``adapter`` can take one
    member for the whole mixture. It is the same object for every mixture
    of one base model, stored once.
    """
    config = {"base_model_name_or_path": base_model.get("name"), "peft_type": "LORA",
              "revision": base_model.get("revision"), "target_modules": []}
    return Adapter(config=config, base_model=dict(base_model), tensors={}, modules={},
                   metadata={"format": "pt"}, files={})


# -- the verb -----------------------------------------------------------------------------------


def mix(repo: "BaseRepository", revs: Sequence[str], *, weights: Sequence[float] | None = None,
        search: str | None = None, score: Any = None, base: Any = None, data: Any = None,
        budget: int | None = None, bounds: Any = None, l1: float | None = None, seed: int | None = None,
        stagewise: bool = False, logits: Callable[..., Any] | str | None = None, message: str | None = None,
        branch: str | None = None, sign: "Signer | None" = None,
        say: Callable[[str], Any] | None = None) -> MixReport:
    """Commit the mixture of `revs` on `branch` (default: the current branch); see the module docstring."""
    t0 = time.perf_counter()
    revs = list(revs)
    if not revs:
        raise MixtureError("name at least one revision to mix")
    if search is None and (any(v is not None for v in (score, base, data, budget, bounds, l1, seed, logits))
                           or stagewise):
        raise MixtureError("--score, --base, --data, --budget, --bounds, --l1, --seed, --logits and --stagewise "
                           "go with --search")
    logits_record = logits if isinstance(logits, str) else (
        None if logits is None else f"{getattr(logits, '__module__', '?')}:{getattr(logits, '__qualname__', '?')}")
    if search is not None and search not in SEARCH_MODES:
        raise MixtureError(f"--search must be one of {', '.join(SEARCH_MODES)}, got {search!r}")
    if isinstance(logits, str):
        from mfgit.api.usercode import load_callable

        logits = load_callable(logits, "--logits")
    resolved = _resolve(repo, revs)
    if len({r.commit for r in resolved}) != len(resolved):
        raise MixtureError("a revision is named twice")
    every = [(f"{r.rev} (member {m[:10]})" if len(r.members) > 1 or m != r.commit else r.rev, m)
             for r in resolved for m, _ in r.members]
    base_model = _base_model(repo, every)
    n_all = sum(len(r.members) for r in resolved)
    start = [len(r.members) / n_all for r in resolved]
    if weights is not None:
        rev_weights = _check_weights(weights, len(resolved))
    else:
        rev_weights = start
    search_record = None
    if search is not None:
        rev_weights, search_record = _search(repo, resolved, rev_weights, score=score, base=base, data=data,
                                             budget=budget, bounds=bounds, l1=l1, seed=seed, stagewise=stagewise,
                                             logits=logits, logits_record=logits_record, say=say)
    members = _flatten(resolved, rev_weights)
    if branch is not None:
        from mfgit.refs import check_branch_name

        check_branch_name(branch)
        branch_ref = HEADS + branch
        tip = repo.ref_commit(branch_ref, repo.refs.resolve(branch_ref))
    else:
        branch_ref, tip = repo.commit_target()
    member_ids = [cid for cid, _ in members]
    parents = ([tip] if tip is not None and tip not in member_ids else []) + member_ids
    adapter_id = repo.put_adapter(empty_adapter(base_model))
    mixture = {"combine": COMBINE, "members": [{"commit": cid, "weight": float(w)} for cid, w in members]}
    from mfgit.repo.provenance import library_versions

    provenance: dict[str, Any] = {
        "kind": "mixture",
        "combine": COMBINE,
        "formula": "sum_j w_j * softmax(logits of the base model with member j's adapter)",
        "inputs": [{"rev": r.rev, "commit": r.commit, "weight": float(a), "members": len(r.members)}
                   for r, a in zip(resolved, rev_weights)],
        "weights": "given" if weights is not None and search is None else ("searched" if search else "by members"),
        "base": tip,
        "base_model": base_model,
        "versions": library_versions(),
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    if search_record is not None:
        provenance["search"] = search_record
    if message is None:
        message = f"Mixture of {', '.join(revs)} ({len(members)} member(s), Σ w·softmax)"
    info = repo.write_commit(adapter_id, parents, message, provenance, branch_ref, tip, sign=sign, mixture=mixture)
    sites = {}
    for cid in member_ids:
        sites[cid] = repo.read_commit(cid).site
    return MixReport(info.id, adapter_id,
                     [{"commit": cid, "weight": float(w), "site": sites[cid]} for cid, w in members], provenance)


# -- the searched weights -----------------------------------------------------------------------


def _search(repo: "BaseRepository", resolved: list[_Rev], start: list[float], *, score: Any, base: Any,
            data: Any, budget: Any, bounds: Any, l1: Any, seed: Any, stagewise: bool,
            logits: Callable[..., Any] | None, logits_record: str | None,
            say: Callable[[str], Any] | None) -> tuple[list[float], dict[str, Any]]:
    """The revisions' weights chosen by the user's score, and the record of the search."""
    from mfgit.api.search import OPTIMISER, SearchLog, check_search_args, minimise, optimiser_version
    from mfgit.api.sitedata import PREFIX, attachment_name, load_site_data, member_leaves
    from mfgit.api.usercode import resolve_scorer
    from mfgit.errors import ScoreError

    budget_n, (lo, hi), lam = check_search_args("weights", budget, bounds, DEFAULT_L1 if l1 is None else l1)
    seed_n = 0 if seed is None else int(seed)
    if len(resolved) < 2:
        raise MixtureError("--search needs at least two revisions to weigh")
    # The members once each, in the order _flatten gives the weights (two revisions may share a member).
    members = [cid for cid, _ in _flatten(resolved, [1.0] * len(resolved))]
    reads, name = None, attachment_name(data)
    if name is not None:  # the member sites' committed data (mfgit.api.sitedata), read before any model is built
        labels = {m: (r.rev if m == r.commit else f"{r.rev} member {m[:10]}") for r in reversed(resolved)
                  for m, _ in r.members}
        data, reads = load_site_data(repo, member_leaves(repo, [(labels[m], m) for m in members]), name)
    scorer = resolve_scorer(score, base, data, output_space=True)
    if reads is not None:
        scorer.record["data"] = PREFIX + name
    t0 = time.perf_counter()
    module = load_members(repo, scorer.base_model(), members, logits=logits)

    def score_weights(rev_weights: Sequence[float]) -> tuple[dict[str, float], None]:
        module.set_weights([w for _, w in _flatten(resolved, rev_weights)])
        return scorer(module), None

    def penalty(x: Sequence[float]) -> float:
        return lam * sum(abs(v) for v in x) / len(x)

    stages: list[dict[str, Any]] = []
    selected = None
    if stagewise:
        # Stage j: members 0..j-1 keep their relative weights w (scaled by a), revision j weighs b.
        current = [1.0] + [0.0] * (len(resolved) - 1)
        for j in range(1, len(resolved)):
            def stage_weights(ab: Sequence[float], j: int = j, before: tuple = tuple(current)) -> list[float]:
                return [ab[0] * w for w in before[:j]] + [ab[1]] + [0.0] * (len(resolved) - j - 1)

            log = SearchLog(budget_n, penalty, say)
            selected = minimise([STAGE_START, STAGE_START], lo, hi, budget=budget_n, seed=seed_n + j,
                                evaluate=lambda x, src, sw=stage_weights, lg=log:
                                lg.evaluate(x, src, lambda ab: score_weights(sw(ab))))
            if log.best is None:
                raise ScoreError(scorer.record.get("score") or "score", f"no candidate of stage {j} got a finite score")
            _, idx, _, ab = log.best
            current = stage_weights(ab)
            stages.append({"stage": j, "adds": resolved[j].rev, "chosen": {"index": idx, "a": ab[0], "b": ab[1],
                           **{k: log.evaluations[idx][k] for k in ("score", "objective")}},
                           "weights_after": list(current), "evaluations": log.evaluations, "scored": len(log.cache)})
        chosen = current
    else:
        x0 = [min(max(w, lo), hi) for w in start]
        log = SearchLog(budget_n, penalty, say)
        selected = minimise(x0, lo, hi, budget=budget_n, seed=seed_n,
                            evaluate=lambda x, src: log.evaluate(x, src, score_weights))
        if log.best is None:
            raise ScoreError(scorer.record.get("score") or "score", "no candidate got a finite score")
        _, idx, _, chosen = log.best
        stages.append({"stage": 0, "adds": None, "start": x0, "chosen": {"index": idx, "weights": list(chosen),
                       **{k: log.evaluations[idx][k] for k in ("score", "objective")}},
                       "evaluations": log.evaluations, "scored": len(log.cache)})
    # The uniform/default mixture scored too, so the record shows what the search gained.
    start_score = _finite_or_none(score_weights(start)[0]["score"])
    final_score = _finite_or_none(score_weights(chosen)[0]["score"])
    record = {
        "mode": "weights",
        "stagewise": bool(stagewise),
        "optimiser": {"name": OPTIMISER, "version": optimiser_version(), "selected": selected},
        "budget": budget_n,
        "bounds": [lo, hi],
        "seed": seed_n,
        **({"stage_seeds": "stage j runs with seed + j"} if stagewise else {}),
        "l1": lam,
        "objective": "score + l1 * mean(|w|) of the searched weights, minimised",
        "scorer": scorer.record,
        "logits": logits_record,
        "layout": {"inputs": [r.rev for r in resolved], "commits": [r.commit for r in resolved]},
        "start": {"weights": list(start), "score": start_score},
        "chosen": {"weights": [float(w) for w in chosen], "score": final_score},
        "stages": stages,
        **({"attachments": reads} if reads is not None else {}),  # by digest: verify --reproduce reads them again
        "seconds": round(time.perf_counter() - t0, 3),
    }
    module.unload()
    return [float(w) for w in chosen], record


# -- loading ------------------------------------------------------------------------------------


def default_logits(model, *args: Any, **kwargs: Any):
    """The logits of a transformers model's output (``.logits``), or the output itself when it is a tensor.

    Anything else (an encoder's hidden states) is refused rather than
    guessed at: a softmax over the wrong dimension would look like a result.
    """
    import torch

    out = model(*args, **kwargs)
    if isinstance(out, torch.Tensor):
        return out
    value = getattr(out, "logits", None)
    if not isinstance(value, torch.Tensor):
        raise MixtureError(f"the model's output ({type(out).__name__}) has no logits; give the mixture a logits "
                           "function: load_mixture(..., logits=fn) or mix --logits MODULE:FUNC, "
                           "fn(model, *args, **kwargs) returning the logits")
    return value


def _module_class():
    import torch

    class MixtureModule(torch.nn.Module):
        """Σⱼ wⱼ·softmax(logitsⱼ): member j's adapter active (PEFT ``set_adapter``), one forward pass each.

        ``forward(*args, **kwargs)`` passes its arguments to ``logits(model,
        *args, **kwargs)`` (default: the model's ``.logits``) once per member
        and returns the mixed probabilities over the last dimension, in
        float32. A member of weight 0 is skipped. ``peft_model`` is the base
        model with every member loaded; ``weights`` and ``adapter_names``
        are in member order.
        """

        def __init__(self, peft_model, adapter_names: list[str], weights: list[float], logits=None,
                     commits: list[str] | None = None):
            super().__init__()
            self.peft_model = peft_model
            self.adapter_names = list(adapter_names)
            self.commits = list(commits or [])
            self.logits = logits or default_logits
            self.set_weights(weights)

        def set_weights(self, weights: Sequence[float]) -> None:
            if len(weights) != len(self.adapter_names):
                raise MixtureError(f"{len(weights)} weight(s) for {len(self.adapter_names)} member(s)")
            self.weights = [float(w) for w in weights]

        def forward(self, *args: Any, **kwargs: Any):
            total = None
            for name, w in zip(self.adapter_names, self.weights):
                if w == 0.0:
                    continue
                self.peft_model.set_adapter(name)
                p = torch.softmax(self.logits(self.peft_model, *args, **kwargs).float(), dim=-1) * w
                total = p if total is None else total + p
            if total is None:
                raise MixtureError("every member of the mixture has weight 0")
            return total

        def unload(self):
            """The base model without the members' LoRA layers, as it was before loading."""
            return self.peft_model.unload()

    return MixtureModule


def load_members(repo: "BaseRepository", base_model, commits: Sequence[str], weights: Sequence[float] | None = None,
                 *, logits: Callable[..., Any] | None = None):
    """A MixtureModule of `commits` (adapters) on `base_model`, which PEFT changes in place."""
    from peft import PeftModel

    from mfgit.repo.checkout import checkout

    names = [f"member{i}" for i in range(len(commits))]
    model = None
    with tempfile.TemporaryDirectory(prefix="mfgit-mixture-") as tmp:
        for i, (cid, name) in enumerate(zip(commits, names)):
            path = checkout(repo, cid, Path(tmp) / name)
            if model is None:
                model = PeftModel.from_pretrained(base_model, str(path), adapter_name=name)
            else:
                model.load_adapter(str(path), adapter_name=name)
    model.eval()
    ws = list(weights) if weights is not None else [1.0 / len(commits)] * len(commits)
    return _module_class()(model, names, ws, logits, list(commits))


def load_mixture(repo: "BaseRepository", base_model, rev: str = "HEAD", *,
                 logits: Callable[..., Any] | None = None):
    """The mixture `rev` as a torch module on `base_model`: Σⱼ wⱼ·softmax(member j's logits).

    `logits(model, *args, **kwargs)` computes one member's logits (default:
    ``model(*args, **kwargs).logits``); `base_model` is changed in place by
    PEFT (``module.unload()`` gives it back without the LoRA layers).
    """
    cid = repo.resolve(rev)
    c = repo.read_commit(cid)
    if not c.is_mixture:
        raise MixtureError(f"{rev} is not a mixture; load its adapter with Repository.load_adapter")
    members = c.mixture_members()
    _base_model(repo, [(f"{rev} member {m[:10]}", m) for m, _ in members])
    return load_members(repo, base_model, [m for m, _ in members], [w for _, w in members], logits=logits)


def _finite_or_none(value: Any) -> float | None:
    """A score as the record keeps it: canonical JSON has no NaN or infinity (as SearchLog records them)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
