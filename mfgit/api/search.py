"""Coefficient search and candidate composites for linear merges.

Two ways to choose the weights of a linear merge instead of fixing them
(docs/search-and-eval.md):

* **search** (``merge --search weights|layer-weights --score MOD:FUNC``): a
  gradient-free optimiser (nevergrad's NGOpt, seeded explicitly) proposes
  weight vectors within bounds; each proposal is merged *in ΔW space by the
  merge engine* (an exact linear merge of the factors — never A and B scaled
  separately, as MedForge and PEFT's ``add_weighted_adapter`` do), loaded as
  a ``PeftModel`` onto the user's base model and scored by the user's score
  function (lower is better, plus an optional L1 penalty on the weights).
  The best proposal is committed; the merge commit records the optimiser, its
  version, budget, bounds, seed, penalty, and every evaluated vector with
  its score (provenance ``search``).
* **candidates** (``merge --candidates N``): N composites from a seeded
  design around the merge's default weights, each committed on
  ``candidates/<round>/<k>``. Sites evaluate them on their own data
  (``mfgit eval``) and push only the numbers (notes); ``merge
  --from-candidates ROUND --select-by NAME,...`` then commits the candidate
  with the best worst-site (or mean) score, recording the table it chose from.

The score function is the user's: ``score(model)`` or, when a data loader is
given, ``score(model, data)``; it returns a number to minimise or a mapping
with a ``"score"`` entry (the number to minimise) and other metrics. See
:func:`resolve_scorer` for how the base model and the data are found.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import math
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from mfgit.errors import MergeError, ScoreError

if TYPE_CHECKING:
    from mfgit.api.merging import MergeReport
    from mfgit.api.repository import Repository
    from mfgit.merge.engine import MergeInput, MergeOutput, Recipe

MODES = ("weights", "layer-weights")
SELECT_RULES = ("worst", "mean")
DEFAULT_BOUNDS = (-1.5, 1.5)  # LoraHub's and MedForge's
DEFAULT_BUDGET = 40
OPTIMISER = "nevergrad.NGOpt"
CANDIDATE_SIGMA = 0.5  # the spread of the candidate design (log-normal jitter of the default weights)
CANDIDATES_PREFIX = "candidates/"
_FAILED = 1e30  # what the optimiser is told for a score that is not a finite number


# -- the user's score function, base model and data ------------------------------------------------


def load_callable(spec: str, what: str) -> Callable[..., Any]:
    """``package.module:function`` (or ``path/to/file.py:function``) → the function."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ScoreError(str(spec), f"{what} is given as MODULE:FUNCTION (e.g. mypkg.evaluate:score)")
    mod_name, func_name = spec.split(":")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name).absolute()
            if not path.is_file():
                raise ScoreError(spec, f"{what}: {path} does not exist")
            name = "mfgit_score_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
            module = sys.modules.get(name)
            if module is None:
                loader_spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(loader_spec)
                sys.modules[name] = module
                loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ScoreError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's module failed to import: say so in one line
        raise ScoreError(spec, f"{what}: cannot import {mod_name} ({type(e).__name__}: {e})") from None
    fn = getattr(module, func_name, None)
    if fn is None or not callable(fn):
        raise ScoreError(spec, f"{what}: {mod_name} has no function {func_name}")
    return fn


def _describe(obj: Any) -> str | None:
    """What the provenance records for a score/base/data given as a Python object."""
    if obj is None:
        return None
    if isinstance(obj, str):
        return obj
    if callable(obj) and hasattr(obj, "__qualname__") and not isinstance(obj, type):
        return f"{getattr(obj, '__module__', '?')}:{obj.__qualname__}"
    return f"<{type(obj).__module__}.{type(obj).__qualname__} object>"


@dataclass
class Scorer:
    """The user's score function with its base model and data, resolved once."""

    fn: Callable[..., Any]
    base_source: Any  # an nn.Module, or a zero-argument factory returning one
    data_source: Any = None  # a zero-argument loader (a data object given as such is preloaded)
    has_data: bool = False
    record: dict[str, Any] = field(default_factory=dict)
    _base: Any = None
    _data: Any = None
    _data_loaded: bool = False

    def base_model(self):
        if self._base is None:
            import torch

            src = self.base_source
            if isinstance(src, torch.nn.Module):
                self._base = src
            else:
                try:
                    model = src()
                except Exception as e:  # noqa: BLE001
                    raise ScoreError(self.record.get("base") or "base", f"the base model factory raised "
                                     f"{type(e).__name__}: {e}") from None
                if not isinstance(model, torch.nn.Module):
                    raise ScoreError(self.record.get("base") or "base",
                                     f"the base model factory returned a {type(model).__name__}, not a torch model")
                self._base = model
        return self._base

    def data(self):
        if not self._data_loaded:
            try:
                self._data = self.data_source()
            except Exception as e:  # noqa: BLE001
                raise ScoreError(self.record.get("data") or "data", f"the data loader raised "
                                 f"{type(e).__name__}: {e}") from None
            self._data_loaded = True
        return self._data

    def __call__(self, model) -> dict[str, float]:
        """Score `model`; return its values (always with a finite or NaN ``score``)."""
        args = (model, self.data()) if self.has_data else (model,)
        try:
            result = self.fn(*args)
        except ScoreError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's code failed: report it as such
            raise ScoreError(self.record.get("score") or "score", f"the score function raised {type(e).__name__}: {e}") from e
        return score_values(result, self.record.get("score") or "score")


def score_values(result: Any, where: str = "score") -> dict[str, float]:
    """A score function's return value as {"score": x, other metrics...}."""
    def number(v: Any, key: str) -> float:
        if isinstance(v, bool):
            raise ScoreError(where, f"the score function returned a boolean for {key!r}, not a number")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ScoreError(where, f"the score function returned {type(v).__name__} for {key!r}, not a number") from None
        return x

    if isinstance(result, Mapping):
        if "score" not in result:
            raise ScoreError(where, "the score function returned a mapping without a 'score' entry "
                                    "(the number to minimise)")
        return {str(k): number(v, str(k)) for k, v in sorted(result.items(), key=lambda kv: str(kv[0]))}
    return {"score": number(result, "score")}


def resolve_scorer(score: Any, base: Any = None, data: Any = None, *, need_base: bool = True) -> Scorer:
    """Find the score function, the base model and the data.

    ``score``: ``"module:function"`` (imported; ``path/file.py:function`` also
    works) or a callable. ``base``: ``"module:function"`` (a factory called
    once), a zero-argument callable, or a torch model; when omitted, the score
    function's module must define ``base_model()``. ``data``:
    ``"module:function"`` (a loader called once), or any object passed as it
    is; when omitted, the score module's ``load_data()`` is used if it defines
    one. With data the score function is called as ``score(model, data)``,
    without as ``score(model)``. Nothing else is ever passed to it.
    """
    if score is None:
        raise ScoreError("-", "a score function is needed: --score MODULE:FUNCTION")
    fn = load_callable(score, "--score") if isinstance(score, str) else score
    if not callable(fn):
        raise ScoreError(_describe(score) or "-", "the score is not callable")
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    record: dict[str, Any] = {"score": _describe(score) if not isinstance(score, str) else score}
    base_source: Any = None
    if base is not None:
        base_source = load_callable(base, "--base") if isinstance(base, str) else base
        record["base"] = _describe(base)
    elif module is not None and callable(getattr(module, "base_model", None)):
        base_source = getattr(module, "base_model")
        record["base"] = f"{record['score'].split(':')[0]}:base_model" if isinstance(score, str) else _describe(base_source)
    elif need_base:
        raise ScoreError(record["score"], "needs a base model to load the candidate onto: define base_model() "
                                          "in the score function's module, or pass --base MODULE:FUNCTION")
    has_data, data_source, data_obj = False, None, None
    if data is not None:
        has_data = True
        if isinstance(data, str):
            data_source = load_callable(data, "--data")  # a loader, called once
        else:
            data_obj = data  # the object itself, passed as it is
        record["data"] = _describe(data)
    elif module is not None and callable(getattr(module, "load_data", None)):
        has_data = True
        data_source = getattr(module, "load_data")
        record["data"] = (f"{record['score'].split(':')[0]}:load_data" if isinstance(score, str)
                          else _describe(data_source))
    code = None
    try:
        from mfgit.api.provenance import code_revision

        # the file of the function's module (a decorator's wrapper lives in another package)
        src = getattr(module, "__file__", None) or inspect.getsourcefile(inspect.unwrap(fn))
        code = code_revision(Path(src).parent) if src else None
    except Exception:  # noqa: BLE001 - provenance of the scorer is best effort, never a failure
        code = None
    record["code"] = code
    scorer = Scorer(fn, base_source, data_source, has_data, record)
    if has_data and data_source is None:
        scorer._data, scorer._data_loaded = data_obj, True
    return scorer


class CandidateLoader:
    """Loads merge outputs as PeftModels onto one base model, one at a time.

    Each candidate is written (safetensors + adapter_config.json) to a
    private temporary directory, loaded with ``PeftModel.from_pretrained``,
    handed to the score function, then unloaded (``unload()``: the LoRA
    layers are removed, nothing is merged into the base), so the base model
    is restored for the next candidate.
    """

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self._tmp = tempfile.TemporaryDirectory(prefix="mfgit-candidate-")

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> "CandidateLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def score(self, out: "MergeOutput") -> dict[str, float]:
        from peft import PeftModel
        from safetensors.torch import save_file

        from mfgit.formats import peft as peftfmt

        d = Path(self._tmp.name) / "adapter"
        d.mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in out.tensors.items()}, str(d / peftfmt.WEIGHTS_NAME),
                  metadata={"format": "pt"})
        (d / peftfmt.CONFIG_NAME).write_bytes(peftfmt.config_bytes(out.config))
        base = self.scorer.base_model()
        model = PeftModel.from_pretrained(base, str(d))
        try:
            model.eval()
            return self.scorer(model)
        finally:
            model.unload()  # the base model without the LoRA layers, as it was


# -- layers --------------------------------------------------------------------------------------


def layer_of(module: str) -> str:
    """The layer a module belongs to: its path up to the first numeric component.

    ``base_model.model.blocks.1.attn.q_proj`` → ``blocks.1``;
    ``model.layers.11.mlp.up_proj`` → ``model.layers.11``; a module with no
    numeric component (``head``) is a layer of its own.
    """
    from mfgit.formats.peft import PEFT_PREFIX

    name = module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[:i + 1])
    return name


def _natural(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def layer_groups(inputs: Sequence["MergeInput"]) -> list[str]:
    mods = {m for inp in inputs for m in inp.adapter.modules}
    return sorted({layer_of(m) for m in mods}, key=_natural)


def _restrict(adapter, modules: set[str]):
    from mfgit.objects.model import Adapter

    mods = {m: v for m, v in adapter.modules.items() if m in modules}
    names = {v["lora_A"] for v in mods.values()} | {v["lora_B"] for v in mods.values()}
    return Adapter(config=adapter.config, base_model=adapter.base_model,
                   tensors={k: v for k, v in adapter.tensors.items() if k in names}, modules=mods,
                   metadata=adapter.metadata, files={}, format=adapter.format)


def merge_layer_weights(inputs: Sequence["MergeInput"], recipe: "Recipe", matrix: Sequence[Sequence[float]],
                        groups: Sequence[str], load, progress=None) -> "MergeOutput":
    """A linear merge with one weight per (input, layer): ``matrix[i][g]``.

    Each layer is merged by the engine on its own (module by module, exact in
    factor space); with the same weight in every layer the result is
    bit-identical to the plain merge.
    """
    from mfgit.merge.engine import MergeInput, MergeOutput, _output_dtype, merge_adapters, output_config

    t0 = time.perf_counter()
    rec = dataclasses.replace(recipe, dtype=_output_dtype(inputs, recipe.dtype))
    all_modules = sorted({m for inp in inputs for m in inp.adapter.modules})
    tensors: dict[str, Any] = {}
    stats: dict[str, dict[str, Any]] = {}
    device, device_name = "cpu", "cpu"
    done = 0
    for g, group in enumerate(groups):
        mods = {m for m in all_modules if layer_of(m) == group}
        if not mods:
            continue
        sub = [MergeInput(inp.label, inp.id, _restrict(inp.adapter, mods), float(matrix[i][g]))
               for i, inp in enumerate(inputs)]
        out = merge_adapters(sub, rec, load)
        tensors.update(out.tensors)
        stats.update(out.modules)
        device, device_name = out.device, out.device_name
        done += len(mods)
        if progress:
            progress(done, len(all_modules), group)
    stats = dict(sorted(stats.items()))
    return MergeOutput(tensors=tensors, config=output_config(inputs, stats), modules=stats, device=device,
                       device_name=device_name, dtype=rec.dtype, seconds=time.perf_counter() - t0)


# -- the search ------------------------------------------------------------------------------------


@dataclass
class SearchResult:
    weights: list[float]  # per input (the layer mean in layer-weights mode)
    matrix: list[list[float]] | None  # per input and layer (layer-weights mode)
    output: "MergeOutput"
    record: dict[str, Any]


def _check_bounds(bounds: Any) -> tuple[float, float]:
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
    return b, _check_bounds(bounds), lam


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


def run_search(inputs: Sequence["MergeInput"], recipe: "Recipe", load, scorer: Scorer, *, mode: str,
               budget: int, bounds: tuple[float, float], l1: float, seed: int,
               say: Callable[[str], Any] | None = None) -> SearchResult:
    """Search the weights of `inputs` (a linear merge) that minimise score + l1·Σ|w|.

    The starting point is the inputs' own weights (the merge's default:
    uniform, from metadata, or explicit), clipped to the bounds; it is
    always scored first, so the result is never worse than the default on
    the score. Then the optimiser proposes `budget` vectors (a proposal equal
    to one already scored is not scored again). Everything runs on this
    process's own RNGs: nevergrad's parametrization gets a
    ``numpy.random.RandomState(seed)``; the global RNGs are not used.
    """
    import numpy as np

    from mfgit.merge.engine import merge_adapters

    ng = _nevergrad()
    lo, hi = bounds
    n = len(inputs)
    groups = layer_groups(inputs) if mode == "layer-weights" else None
    per = len(groups) if groups else 1
    start = [min(max(float(inp.weight), lo), hi) for inp in inputs]
    x0 = [w for w in start for _ in range(per)]

    def build(x: Sequence[float]) -> "MergeOutput":
        if groups:
            matrix = [list(x[i * per:(i + 1) * per]) for i in range(n)]
            return merge_layer_weights(inputs, recipe, matrix, groups, load)
        return merge_adapters([dataclasses.replace(inp, weight=float(w)) for inp, w in zip(inputs, x)], recipe, load)

    evaluations: list[dict[str, Any]] = []
    cache: dict[tuple[float, ...], dict[str, Any]] = {}
    best: tuple[float, int, "MergeOutput", list[float]] | None = None

    def evaluate(x: list[float], loader: CandidateLoader, source: str) -> float:
        nonlocal best
        key = tuple(x)
        hit = cache.get(key)
        if hit is None:
            out = build(x)
            values = loader.score(out)
            s = values["score"]
            penalty = l1 * sum(abs(v) for v in x)
            obj = s + penalty if math.isfinite(s) else math.inf
            hit = {"score": s if math.isfinite(s) else None, "objective": obj if math.isfinite(obj) else None}
            if len(values) > 1:
                hit["values"] = {k: (v if math.isfinite(v) else None) for k, v in values.items()}
            cache[key] = hit
            if math.isfinite(obj) and (best is None or obj < best[0]):
                best = (obj, len(evaluations), out, list(x))
        entry = {"index": len(evaluations), "source": source, "weights": list(x), **hit}
        evaluations.append(entry)
        if say:
            shown = "failed" if hit["score"] is None else f"{hit['score']:.6g}"
            say(f"search {entry['index']:>3}/{budget}: score {shown}")
        return hit["objective"] if hit["objective"] is not None else _FAILED

    # As LoraHub and MedForge parametrise it: bounded, mutation scale (HIGH - LOW) / 6.
    param = ng.p.Array(init=np.asarray(x0, dtype=np.float64), lower=lo, upper=hi)
    param.random_state = np.random.RandomState(int(seed) % (2 ** 32))
    optimiser = ng.optimizers.NGOpt(parametrization=param, budget=budget, num_workers=1)
    selected = None
    t0 = time.perf_counter()
    with CandidateLoader(scorer) as loader, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy / nevergrad chatter about their own defaults
        evaluate(list(x0), loader, "start")
        for _ in range(budget):
            cand = optimiser.ask()
            x = [float(v) for v in np.asarray(cand.value, dtype=np.float64).reshape(-1)]
            value = evaluate(x, loader, "optimiser")
            optimiser.tell(cand, value)
            if selected is None:
                sub = getattr(optimiser, "optim", None)
                selected = getattr(sub, "name", None) or (type(sub).__name__ if sub is not None else None)
    if best is None:
        raise ScoreError(scorer.record.get("score") or "score", "no candidate got a finite score")
    obj, idx, out, x = best
    chosen = evaluations[idx]
    matrix = [list(x[i * per:(i + 1) * per]) for i in range(n)] if groups else None
    weights = [sum(row) / len(row) for row in matrix] if matrix else list(x)
    record: dict[str, Any] = {
        "mode": mode,
        "optimiser": {"name": OPTIMISER, "version": optimiser_version(), "selected": selected},
        "budget": budget,
        "bounds": [lo, hi],
        "seed": int(seed),
        "l1": l1,
        "objective": "score + l1 * sum(|w|), minimised",
        "scorer": scorer.record,
        "layout": {"inputs": [inp.label for inp in inputs], "commits": [inp.id for inp in inputs],
                   **({"groups": list(groups), "order": "input-major: w[i * groups + g]"} if groups else {})},
        "start": {"weights": list(x0), "score": evaluations[0]["score"], "objective": evaluations[0]["objective"]},
        "evaluations": evaluations,
        "chosen": {"index": idx, "weights": list(x), "score": chosen["score"], "objective": chosen["objective"],
                   **({"matrix": matrix} if matrix else {})},
        "scored": len(cache),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return SearchResult(weights, matrix, out, record)


# -- the hooks the merge verb calls (mfgit.api.merging.merge) ------------------------------------------


def search_hook(repo: "Repository", *, inputs, rec, resolved, leaves, integrating: bool, linear: bool,
                old_provenance: dict | None, search: str, score, base, data, budget, bounds, l1, seed,
                progress=None) -> tuple[list, list, "MergeOutput", dict[str, Any]]:
    """Run the search for the merge being planned; return (inputs, leaves, output, record).

    `inputs` are the engine inputs (MergeInput) with the merge's default
    weights; the returned ones carry the chosen weights, and the leaves are
    re-weighted to match (for a composite named as an input, its leaves are
    scaled, as the linear merge does).
    """
    from mfgit.api.merging import _expand

    if not linear:
        raise MergeError("--search needs a linear-family strategy (linear, task_arithmetic): only there is a "
                         "candidate an exact weighted sum of the inputs' updates")
    budget, bounds, l1 = check_search_args(search, budget, bounds, l1)
    scorer = resolve_scorer(score, base, data)
    res = run_search(inputs, rec, lambda oid, dev: repo.load_tensor(oid, device=dev), scorer, mode=search,
                     budget=budget, bounds=bounds, l1=l1, seed=int(seed))
    new_inputs = [dataclasses.replace(inp, weight=float(w)) for inp, w in zip(inputs, res.weights)]
    if integrating:
        new_leaves = [dict(lf, weight=float(w)) for lf, w in zip(leaves, res.weights)]
    else:
        new_leaves = []
        for (rev, cid), w in zip(resolved, res.weights):
            new_leaves.extend(_expand(repo, cid, rev, float(w), linear=True))
    return new_inputs, new_leaves, res.output, res.record


def check_integration(old_provenance: dict | None, search: str | None) -> None:
    """Refuse to integrate plainly into a composite whose weights were searched per layer."""
    old = (old_provenance or {}).get("search") or {}
    if old.get("mode") == "layer-weights" and search != "layer-weights":
        raise MergeError("the current composite has per-layer weights from --search layer-weights; a plain "
                         "linear integration would drop them. Run the search again (--search layer-weights), "
                         "or merge on another branch")


# -- candidates: publish, evaluate at the sites, select ----------------------------------------------------


def candidate_design(start: Sequence[float], count: int, seed: int, bounds: tuple[float, float]) -> list[list[float]]:
    """`count` weight vectors: the merge's default weights, then seeded jitters of them.

    Candidate k ≥ 1 multiplies each default weight by exp(σ·z), z ~ N(0, 1)
    from numpy's PCG64 generator seeded with `seed` (σ = 0.5), rescales the
    vector to the default's sum and clips it to `bounds`. The same seed gives
    the same design.
    """
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(int(seed) % (2 ** 63)))
    base = np.asarray([float(w) for w in start], dtype=np.float64)
    out = [[min(max(float(w), bounds[0]), bounds[1]) for w in base]]
    total = float(base.sum())
    for _ in range(count - 1):
        z = rng.standard_normal(len(base))
        w = base * np.exp(CANDIDATE_SIGMA * z)
        s = float(w.sum())
        if s != 0.0 and total != 0.0:
            w = w * (total / s)
        out.append([min(max(float(v), bounds[0]), bounds[1]) for v in w])
    return out


def round_id(tip: str | None, inputs: Sequence["MergeInput"], rec: "Recipe", count: int, seed: int,
             bounds: tuple[float, float]) -> str:
    """The name of a candidate round: a digest of everything that defines it."""
    from mfgit.objects.canonical import canonical_json

    body = {"tip": tip, "inputs": [[i.id, float(i.weight)] for i in inputs], "recipe": rec.to_dict(),
            "count": count, "seed": int(seed), "bounds": list(bounds), "sigma": CANDIDATE_SIGMA}
    return hashlib.sha256(b"mfgit-candidates\0" + canonical_json(body)).hexdigest()[:12]


@dataclass
class CandidatesReport:
    """What ``merge --candidates N`` made: one commit per candidate, on its own branch."""

    round: str
    candidates: list[dict[str, Any]]
    provenance: dict[str, Any]
    commit: str | None = None
    adapter: str | None = None
    output_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "candidates": self.candidates, "provenance": self.provenance}


def publish_candidates(repo: "Repository", *, count: Any, inputs, rec, resolved, leaves, integrating: bool,
                       linear: bool, parents: list[str], tip: str | None, provenance: dict[str, Any],
                       first_output, bounds, seed: int, message: str | None, sign=None) -> CandidatesReport:
    """Commit `count` candidate composites on ``candidates/<round>/<k>``; the current branch does not move.

    `provenance` and `first_output` are the merge with its default weights,
    which is candidate 0; the others differ only in their weights.
    """
    import copy

    from mfgit.api.merging import _expand
    from mfgit.errors import RefExists
    from mfgit.merge.engine import merge_adapters

    if not linear:
        raise MergeError("--candidates needs a linear-family strategy (linear, task_arithmetic)")
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise MergeError(f"--candidates must be a whole number >= 2, got {count!r}")
    lo_hi = _check_bounds(bounds)
    start = [float(i.weight) for i in inputs]
    design = candidate_design(start, count, seed, lo_hi)
    rid = round_id(tip, inputs, rec, count, seed, lo_hi)
    load = lambda oid, dev: repo.load_tensor(oid, device=dev)  # noqa: E731
    made = []
    for k, ws in enumerate(design):
        if k == 0 and ws == start:
            out = first_output
        else:
            out = merge_adapters([dataclasses.replace(i, weight=w) for i, w in zip(inputs, ws)], rec, load)
        adapter_id = repo.store_adapter_tensors(out.config, out.tensors, metadata={"format": "pt"},
                                                base_model=inputs[0].adapter.base_model)
        prov = copy.deepcopy(provenance)
        if integrating:
            lvs = [dict(lf, weight=float(w)) for lf, w in zip(leaves, ws)]
        else:
            lvs = []
            for (rev, cid), w in zip(resolved, ws):
                lvs.extend(_expand(repo, cid, rev, float(w), linear=True))
        lam = float(rec.params.get("lambda", 1.0))
        prov["recipe"]["weights_mode"] = "explicit"
        prov["inputs"] = [{"commit": i.id, "label": i.label, "weight": float(w)} for i, w in zip(inputs, ws)]
        prov["leaves"] = [{"commit": lf["commit"], "site": lf.get("site"), "key": lf["key"], "label": lf.get("label"),
                           "weight": lf["weight"], "effective_weight": lam * lf["weight"]} for lf in lvs]
        prov["modules"] = out.modules
        energies = [m["kept_energy"] for m in out.modules.values()]
        prov["kept_energy"] = {"min": min(energies) if energies else 1.0,
                               "mean": sum(energies) / len(energies) if energies else 1.0}
        prov["candidate"] = {"round": rid, "index": k, "of": count, "weights": list(ws), "base": tip,
                             "design": {"kind": "default weights, then log-normal jitter rescaled to their sum",
                                        "sigma": CANDIDATE_SIGMA, "rng": "numpy PCG64", "seed": int(seed),
                                        "bounds": list(lo_hi), "start": start}}
        branch = f"{CANDIDATES_PREFIX}{rid}/{k}"
        ref = f"refs/heads/{branch}"
        existing = repo.refs.read(ref)
        if existing is not None:
            if repo.read_commit(existing).adapter != adapter_id:
                raise RefExists(f"{branch} (a different candidate is there)")
            cid = existing
        else:
            subject = message or f"Candidate {k} of {count} (round {rid})"
            info = repo._write_commit(adapter_id, parents, subject, prov, ref, None, sign=sign)
            cid = info.id
        made.append({"index": k, "branch": branch, "commit": cid, "adapter": adapter_id, "weights": list(ws)})
    return CandidatesReport(rid, made, {"kind": "candidates", "round": rid, "count": count, "base": tip,
                                        "inputs": [{"commit": i.id, "label": i.label} for i in inputs]})


def find_candidates(repo: "Repository", rid: str) -> dict[int, str]:
    """index → commit of round `rid`: local branches candidates/<rid>/<k>, else remote-tracking ones."""
    found: dict[int, str] = {}
    prefixes = [f"refs/heads/{CANDIDATES_PREFIX}{rid}/"]
    prefixes += [p for p in sorted({"/".join(n.split("/")[:3]) + "/" for n in repo.refs.names("refs/remotes/")})]
    for prefix in prefixes:
        full = prefix if prefix.startswith("refs/heads/") else f"{prefix}{CANDIDATES_PREFIX}{rid}/"
        for ref, cid in sorted(repo.refs.items(full).items()):
            try:
                cand = (repo.read_commit(cid).provenance or {}).get("candidate") or {}
            except Exception:  # noqa: BLE001 - a damaged ref is not a candidate
                continue
            if cand.get("round") == rid and isinstance(cand.get("index"), int):
                found.setdefault(cand["index"], cid)
        if found:
            break
    return found


def _pick_note(notes: list[dict[str, Any]], name: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The latest usable note called `name` (and the rejected ones)."""
    usable, rejected = [], []
    for n in notes:
        if n.get("name") != name:
            continue
        score = (n.get("values") or {}).get("score")
        if not n.get("ok") or not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
            rejected.append({"note": n["id"], "reason": n.get("problem") or "no finite score"})
            continue
        usable.append(n)
    usable.sort(key=lambda n: (n.get("timestamp") or "", n["id"]))
    return (usable[-1] if usable else None), rejected


def select_candidate(repo: "Repository", rid: str, *, select_by: Any, rule: str | None = None,
                     message: str | None = None, sign=None, to=None, force: bool = False) -> "MergeReport":
    """Commit the candidate of round `rid` whose site scores are best under `rule`.

    Scores are the ``score`` values (lower is better) of the notes named in
    `select_by` attached to each candidate commit; notes with a bad
    signature, or about another commit, are not used. ``worst``: the
    candidate with the lowest worst-site score; ``mean``: the lowest mean.
    Only candidates with a usable note for every name compete. The commit's
    adapter is the chosen candidate's own (what the sites evaluated), on the
    current branch, which must still be where the candidates were built.
    """
    from mfgit.api import notes as notes_api
    from mfgit.api.merging import MergeReport

    rule = rule or "worst"
    if rule not in SELECT_RULES:
        raise MergeError(f"--select-rule must be one of {', '.join(SELECT_RULES)}, got {rule!r}")
    names = [s.strip() for s in (select_by.split(",") if isinstance(select_by, str) else (select_by or []))]
    names = [s for s in names if s]
    if not names:
        raise MergeError("--from-candidates needs --select-by NAME[,NAME...]: the evaluation names the sites used "
                         "(mfgit eval --name NAME)")
    t0 = time.perf_counter()
    found = find_candidates(repo, rid)
    if not found:
        raise MergeError(f"no candidates of round {rid}: look for branches candidates/{rid}/* (mfgit branch -a); "
                         f"fetch them first if they were published elsewhere")
    branch_ref, tip = repo._commit_target()
    table = []
    for k in sorted(found):
        cid = found[k]
        notes = notes_api.notes_for(repo, cid)
        row: dict[str, Any] = {"index": k, "commit": cid, "scores": {}, "rejected": []}
        for name in names:
            note, rejected = _pick_note(notes, name)
            row["rejected"].extend(rejected)
            if note is not None:
                row["scores"][name] = {"score": note["values"]["score"], "note": note["id"],
                                       "site": (note.get("measured_by") or {}).get("site"),
                                       "signature": note["signature"]["status"],
                                       "key_id": note["signature"].get("key_id")}
        missing = [n for n in names if n not in row["scores"]]
        if missing:
            row["aggregate"] = None
            row["missing"] = missing
        else:
            vals = [row["scores"][n]["score"] for n in names]
            row["aggregate"] = max(vals) if rule == "worst" else sum(vals) / len(vals)
        table.append(row)
    complete = [r for r in table if r["aggregate"] is not None]
    if not complete:
        need = "; ".join(f"candidate {r['index']} lacks {', '.join(r['missing'])}" for r in table[:4])
        raise MergeError(f"no candidate of round {rid} has a usable note for every name in --select-by ({need}); "
                         f"fetch the sites' notes first: mfgit fetch REMOTE --notes")
    winner = min(complete, key=lambda r: (r["aggregate"], r["index"]))
    chosen = repo.read_commit(winner["commit"])
    prov = dict(chosen.provenance)
    cand = prov.pop("candidate")
    if cand.get("base") != tip:
        def at(c):
            return c[:10] if c else "an unborn branch"

        raise MergeError(f"the current branch moved since round {rid} was published (candidates were built on "
                         f"{at(cand.get('base'))}, the branch is at {at(tip)}); select on a branch at "
                         f"{at(cand.get('base'))}, or publish new candidates (merge --candidates) from here")
    prov["selection"] = {
        "round": rid, "rule": rule, "select_by": names, "objective": "score (lower is better)",
        "chosen": {"index": winner["index"], "commit": winner["commit"], "aggregate": winner["aggregate"],
                   "weights": cand.get("weights")},
        "candidates": table, "design": cand.get("design"), "of": cand.get("of"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if message is None:
        labels = ", ".join(i.get("label", i["commit"][:10]) for i in prov.get("inputs", []))
        message = (f"Merge {labels} ({prov['recipe']['strategy']}): candidate {winner['index']} of round {rid}, "
                   f"best {rule} score of {', '.join(names)}")
    info = repo._write_commit(chosen.adapter, list(chosen.parents), message, prov, branch_ref, tip, sign=sign)
    out_dir = None
    if to is not None:
        out_dir = str(repo.write_adapter_dir(repo.read_adapter(chosen.adapter), to, force=force))
    return MergeReport(info.id, chosen.adapter, out_dir, prov)
