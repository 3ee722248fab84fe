"""Searched merge weights: a gradient-free optimiser proposes weights, each is merged and scored.

``merge --search weights|layer-weights|weights+density --score MOD:FUNC`` (docs/search-and-eval.md):
a gradient-free optimiser (nevergrad's NGOpt, seeded explicitly) proposes
weight vectors within bounds; each proposal is merged *in ΔW space by the
merge engine* (an exact linear merge of the factors — never A and B scaled
separately, as MedForge and PEFT's ``add_weighted_adapter`` do), loaded as a
``PeftModel`` onto the user's base model and scored by the user's score
function (lower is better, plus an optional L1 penalty on the weights). The
best proposal is committed; the merge commit records the optimiser, its
version, budget, bounds, seed, penalty, and every evaluated vector with its
score (provenance ``search``).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from mfgit.api.sitedata import attachment_name, load_site_data
from mfgit.api.usercode import CandidateLoader, Scorer, resolve_scorer
from mfgit.errors import MergeError, ScoreError
from mfgit.merge.engine import merge_adapters
from mfgit.merge.layers import layer_groups, merge_layer_weights

if TYPE_CHECKING:
    from mfgit.merge.engine import MergeInput, MergeOutput, Recipe
    from mfgit.merge.plan import MergePlan
    from mfgit.repo.base import BaseRepository

MODES = ("weights", "layer-weights", "weights+density")
DEFAULT_BOUNDS = (-1.5, 1.5)  # LoraHub's and MedForge's
DEFAULT_BUDGET = 40
OPTIMISER = "nevergrad.NGOpt"
_FAILED = 1e30  # what the optimiser is told for a score that is not a finite number


@dataclass(frozen=True)
class SearchRequest:
    """``merge --search MODE --score … [--base …] [--data …] [--budget N] [--bounds LO,HI] [--l1 X]``."""

    mode: str
    score: Any = None
    base: Any = None
    data: Any = None
    budget: int | None = None
    bounds: Any = None
    l1: float | None = None
    start: float | None = None  # one starting value for every weight (MedForge: 0.5); default: the merge's weights


@dataclass
class SearchResult:
    weights: list[float]  # per input (the layer mean in layer-weights mode)
    matrix: list[list[float]] | None  # per input and layer (layer-weights mode)
    output: "MergeOutput"
    record: dict[str, Any]
    recipe: "Recipe"  # the merge's recipe with the chosen density, when one was searched


def check_bounds(bounds: Any) -> tuple[float, float]:
    if bounds is None:
        return DEFAULT_BOUNDS
    if isinstance(bounds, str):
        try:
            parts = [float(x) for x in bounds.split(",")]
        except ValueError:
            raise MergeError(f"--bounds {bounds!r}: give LOW,HIGH (e.g. -1.5,1.5)") from None
    else:
        parts = [float(x) for x in bounds]
    if len(parts) != 2 or not all(math.isfinite(x) for x in parts) or not parts[0] < parts[1]:
        raise MergeError(f"--bounds {bounds!r}: give two finite numbers LOW,HIGH with LOW < HIGH")
    return parts[0], parts[1]


def check_search_args(mode: str | None, budget: Any, bounds: Any, l1: Any) -> tuple[int, tuple[float, float], float]:
    if mode is not None and mode not in MODES:
        raise MergeError(f"--search must be one of {', '.join(MODES)}, got {mode!r}")
    b = DEFAULT_BUDGET if budget is None else budget
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise MergeError(f"--budget must be a positive whole number of evaluations, got {budget!r}")
    lam = 0.0 if l1 is None else float(l1)
    if not math.isfinite(lam) or lam < 0:
        raise MergeError(f"--l1 must be a finite number >= 0, got {l1!r}")
    return b, check_bounds(bounds), lam


def check_start(start: Any) -> float | None:
    if start is None:
        return None
    try:
        x = float(start)
    except (TypeError, ValueError):
        raise MergeError(f"--start must be a number (every weight's starting value), got {start!r}") from None
    if isinstance(start, bool) or not math.isfinite(x):
        raise MergeError(f"--start must be a finite number, got {start!r}")
    return x


def optimiser_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("nevergrad")
    except metadata.PackageNotFoundError:  # pragma: no cover - a dependency
        return "unknown"


def _nevergrad():
    try:
        import nevergrad as ng
    except ImportError:  # pragma: no cover - a dependency
        raise MergeError("--search needs the nevergrad package: pip install nevergrad") from None
    return ng


def _rounded(xs: Sequence[float]) -> list[float]:
    return [float(x) for x in xs]


def sparsity_param(recipe: "Recipe") -> tuple[str, tuple[float, float]] | None:
    """The parameter that sets how much a sparsifying strategy keeps (density or drop rate), with search bounds."""
    from mfgit.merge.strategies import STRATEGIES

    for p in STRATEGIES[recipe.strategy].parameters:
        if p.name in ("density", "drop_rate"):
            r = p.range
            # Open ends are kept off by a margin: density 0 keeps nothing, drop rate 1 drops everything.
            lo = (r.lo or 0.0) + (0.01 if r.lo_open else 0.0)
            hi = (r.hi if r.hi is not None else 1.0) - (0.01 if r.hi_open else 0.0)
            return p.name, (lo, hi)
    return None


class SearchLog:
    """Every evaluation of a search, in order: the score, the objective (score + penalty) and the best so far.

    A proposal equal to one already scored is recorded again but not scored
    again. `best` is (objective, evaluation index, what `score` built, x).
    """

    def __init__(self, budget: int, penalty: Callable[[Sequence[float]], float],
                 say: Callable[[str], Any] | None = None):
        self.budget = budget
        self.penalty = penalty
        self.say = say
        self.evaluations: list[dict[str, Any]] = []
        self.cache: dict[tuple[float, ...], dict[str, Any]] = {}
        self.best: tuple[float, int, Any, list[float]] | None = None

    def evaluate(self, x: list[float], source: str,
                 score: Callable[[list[float]], tuple[dict[str, float], Any]]) -> float:
        """Score `x` (`score(x)` → (values with "score", what was built)); the objective for the optimiser."""
        key = tuple(x)
        hit = self.cache.get(key)
        if hit is None:
            values, built = score(x)
            s = values["score"]
            obj = s + self.penalty(x) if math.isfinite(s) else math.inf
            hit = {"score": s if math.isfinite(s) else None, "objective": obj if math.isfinite(obj) else None}
            if len(values) > 1:
                hit["values"] = {k: (v if math.isfinite(v) else None) for k, v in values.items()}
            self.cache[key] = hit
            if math.isfinite(obj) and (self.best is None or obj < self.best[0]):
                self.best = (obj, len(self.evaluations), built, list(x))
        entry = {"index": len(self.evaluations), "source": source, "weights": list(x), **hit}
        self.evaluations.append(entry)
        if self.say:
            shown = "failed" if hit["score"] is None else f"{hit['score']:.6g}"
            self.say(f"search {entry['index']:>3}/{self.budget}: score {shown}")
        return hit["objective"] if hit["objective"] is not None else _FAILED


def minimise(x0: Sequence[float], lower: Any, upper: Any, *, budget: int, seed: int,
             evaluate: Callable[[list[float], str], float]) -> str | None:
    """Run nevergrad's NGOpt from `x0` within [lower, upper] (numbers, or one per coordinate).

    `evaluate(x, source)` returns the value to minimise; `x0` is evaluated
    first (source "start"), then `budget` proposals ("optimiser"). The
    parametrization gets its own ``numpy.random.RandomState(seed)``: the
    global RNGs are not used. Returns the name of the optimiser NGOpt selected.
    """
    import numpy as np

    ng = _nevergrad()

    def bound(b: Any) -> Any:
        return np.asarray(b, dtype=np.float64) if isinstance(b, (list, tuple)) else b

    param = ng.p.Array(init=np.asarray(x0, dtype=np.float64), lower=bound(lower), upper=bound(upper))
    param.random_state = np.random.RandomState(int(seed) % (2 ** 32))
    optimiser = ng.optimizers.NGOpt(parametrization=param, budget=budget, num_workers=1)
    selected = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy / nevergrad chatter about their own defaults
        evaluate(list(x0), "start")
        for _ in range(budget):
            cand = optimiser.ask()
            x = [float(v) for v in np.asarray(cand.value, dtype=np.float64).reshape(-1)]
            optimiser.tell(cand, evaluate(x, "optimiser"))
            if selected is None:
                sub = getattr(optimiser, "optim", None)
                selected = getattr(sub, "name", None) or (type(sub).__name__ if sub is not None else None)
    return selected


def run_search(inputs: Sequence["MergeInput"], recipe: "Recipe", load, scorer: Scorer, *, mode: str,
               budget: int, bounds: tuple[float, float], l1: float, seed: int, start: float | None = None,
               say: Callable[[str], Any] | None = None) -> SearchResult:
    """Search the weights of `inputs` (and, with ``weights+density``, the strategy's density) that minimise
    score + l1·mean|w|, each candidate merged by the engine with the merge's strategy.

    The penalty is LoraHub's and MedForge's (``0.05 * sum(|w|) / len(w)`` in
    their code): the mean over the searched weights, so that one λ means the
    same for two sites or twenty, and the same as in ``mix --search``.

    The starting point is the inputs' own weights (the merge's default:
    uniform, from metadata, or explicit), or `start` for every weight, clipped to the bounds; it is
    always scored first, so the result is never worse than the default on
    the score. Then the optimiser proposes `budget` vectors (a proposal equal
    to one already scored is not scored again). Everything runs on this
    process's own RNGs: nevergrad's parametrization gets a
    ``numpy.random.RandomState(seed)``; the global RNGs are not used.
    """
    lo, hi = bounds
    n = len(inputs)
    groups = layer_groups(inputs) if mode == "layer-weights" else None
    per = len(groups) if groups else 1
    start = [min(max(float(inp.weight) if start is None else float(start), lo), hi) for inp in inputs]
    x0 = [w for w in start for _ in range(per)]
    sparsity = sparsity_param(recipe) if mode == "weights+density" else None
    if mode == "weights+density":
        if sparsity is None:
            raise MergeError(f"--search weights+density needs a sparsifying strategy (one with a density or drop "
                             f"rate); {recipe.strategy} has neither")
        s_name, (s_lo, s_hi) = sparsity
        x0.append(min(max(float(recipe.params[s_name]), s_lo), s_hi))

    def recipe_for(x: Sequence[float]) -> "Recipe":
        if sparsity is None:
            return recipe
        return dataclasses.replace(recipe, params={**recipe.params, sparsity[0]: float(x[-1])}).resolved()

    def build(x: Sequence[float]) -> "MergeOutput":
        if groups:
            matrix = [list(x[i * per:(i + 1) * per]) for i in range(n)]
            return merge_layer_weights(inputs, recipe, matrix, groups, load)
        return merge_adapters([dataclasses.replace(inp, weight=float(w)) for inp, w in zip(inputs, x[:n])],
                              recipe_for(x), load)

    def penalty(x: Sequence[float]) -> float:
        weights = x[:n * per]  # the weights only, not the density
        return l1 * sum(abs(v) for v in weights) / len(weights)

    log = SearchLog(budget, penalty, say)
    # As LoraHub and MedForge parametrise it: bounded, mutation scale (HIGH - LOW) / 6; a searched
    # density has its own bounds, the strategy's range.
    if sparsity is None:
        lower, upper = lo, hi
    else:
        lower, upper = [lo] * n + [sparsity[1][0]], [hi] * n + [sparsity[1][1]]
    t0 = time.perf_counter()
    with CandidateLoader(scorer) as loader:
        def candidate(x: list[float]) -> tuple[dict[str, float], "MergeOutput"]:
            out = build(x)
            return loader.score(out), out

        selected = minimise(x0, lower, upper, budget=budget, seed=seed,
                            evaluate=lambda x, source: log.evaluate(x, source, candidate))
    evaluations, cache, best = log.evaluations, log.cache, log.best
    if best is None:
        raise ScoreError(scorer.record.get("score") or "score", "no candidate got a finite score")
    obj, idx, out, x = best
    chosen = evaluations[idx]
    matrix = [list(x[i * per:(i + 1) * per]) for i in range(n)] if groups else None
    weights = [sum(row) / len(row) for row in matrix] if matrix else list(x[:n])
    record: dict[str, Any] = {
        "mode": mode,
        "optimiser": {"name": OPTIMISER, "version": optimiser_version(), "selected": selected},
        "budget": budget,
        "bounds": [lo, hi],
        "seed": int(seed),
        "l1": l1,
        "objective": "score + l1 * mean(|w|), minimised",
        "scorer": scorer.record,
        "layout": {"inputs": [inp.label for inp in inputs], "commits": [inp.id for inp in inputs],
                   **({"groups": list(groups), "order": "input-major: w[i * groups + g]"} if groups else {})},
        "start": {"weights": list(x0), "score": evaluations[0]["score"], "objective": evaluations[0]["objective"]},
        "evaluations": evaluations,
        "chosen": {"index": idx, "weights": list(x[:n * per]), "score": chosen["score"],
                   "objective": chosen["objective"], **({"matrix": matrix} if matrix else {}),
                   **({sparsity[0]: float(x[-1])} if sparsity else {})},
        **({"sparsity": {"param": sparsity[0], "bounds": list(sparsity[1]), "start": x0[-1],
                         "order": "the last coordinate of every evaluation's weights"}} if sparsity else {}),
        "scored": len(cache),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return SearchResult(weights, matrix, out, record, recipe_for(x))


def run_for_plan(repo: "BaseRepository", plan: "MergePlan", request: SearchRequest) -> tuple["MergePlan", "MergeOutput", dict[str, Any]]:
    """Run the search for a planned merge; return (the plan with the chosen weights, its output, the record).

    The plan's inputs carry the merge's default weights, the search's start;
    the returned plan carries the chosen ones, and its leaves follow (for a
    composite named as an input, its leaves are scaled, as the linear merge does).
    """
    if plan.integration.get("mode") == "incremental":
        raise MergeError(f"--search over an incremental {plan.recipe.strategy} integration would weigh the old "
                         "composite as one input; add --rebuild to search the weights of every leaf")
    budget, bounds, l1 = check_search_args(request.mode, request.budget, request.bounds, request.l1)
    data, reads = request.data, None
    name = attachment_name(data)
    if name is not None:  # the sites' committed data (mfgit.api.sitedata), read before any model is built
        data, reads = load_site_data(repo, plan.leaves, name)
    scorer = resolve_scorer(request.score, request.base, data)
    if reads is not None:
        scorer.record["data"] = request.data
    res = run_search(plan.inputs, plan.recipe, lambda oid, dev: repo.load_tensor(oid, device=dev), scorer,
                     mode=request.mode, budget=budget, bounds=bounds, l1=l1, seed=int(plan.recipe.seed),
                     start=check_start(request.start))
    if reads is not None:
        res.record["attachments"] = reads  # what was read, by digest: verify --reproduce reads them again
    chosen = dataclasses.replace(plan.with_weights(repo, res.weights), recipe=res.recipe)
    return chosen, res.output, res.record


def check_integration(old_provenance: dict | None, search: str | None) -> None:
    """Refuse to integrate plainly into a composite whose weights were searched per layer."""
    old = (old_provenance or {}).get("search") or {}
    if old.get("mode") == "layer-weights" and search != "layer-weights":
        raise MergeError("the current composite has per-layer weights from --search layer-weights; a plain "
                         "linear integration would drop them. Run the search again (--search layer-weights), "
                         "or merge on another branch")
