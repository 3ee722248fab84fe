"""The merge engine: checks inputs, streams modules, folds scaling, seeds RNGs.

It works on adapter manifests and a tensor loader passed in, so it knows
nothing of repositories. One module at a time: load each input's factors
onto the compute device in fp32, fold the LoRA scaling into B, call the
strategy, move the result back to the CPU in the output dtype, free the
rest. Peak memory is the inputs' factors of one module plus, for
element-wise strategies, a few dense out×in matrices of that module.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from mfgit.errors import DoraNeedsBaseWeights, IncompatibleAdapters, MergeError, UnsupportedAdapterVariant
from mfgit.formats import peft as peftfmt
from mfgit.formats.dtypes import MERGE_OUTPUT_DTYPES, torch_dtype
from mfgit.merge.dora import dense_factor, effective_update
from mfgit.merge.lowrank import RankPolicy
from mfgit.merge.strategies import STRATEGIES, Factor, check_weights, merge_module, resolve_params
from mfgit.objects.model import Adapter

LINEAR_FAMILY = ("linear", "task_arithmetic")


@dataclass(frozen=True)
class MergeInput:
    label: str  # what the user named (for messages)
    id: str  # commit id (seeds the RNG, recorded in provenance)
    adapter: Adapter
    weight: float
    # The base model's weights (mfgit.merge.baseweights.BaseWeights), which a
    # DoRA input's update depends on; None when the merge was given none.
    base: Any = None


@dataclass(frozen=True)
class Recipe:
    strategy: str
    params: dict[str, Any]
    seed: int = 0
    policy: RankPolicy = field(default_factory=RankPolicy)
    device: str = "auto"
    dtype: str | None = None  # output dtype ("BF16", "F32", ...); None: the inputs'

    def resolved(self) -> "Recipe":
        if self.strategy not in STRATEGIES:
            raise MergeError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(sorted(STRATEGIES))}")
        return Recipe(self.strategy, resolve_params(self.strategy, dict(self.params)), int(self.seed),
                      self.policy, self.device, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "params": self.params,
            "seed": self.seed,
            "rank": self.policy.to_dict(),
            "dtype": self.dtype,
        }


@dataclass
class MergeOutput:
    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]
    modules: dict[str, dict[str, Any]]
    device: str
    device_name: str
    dtype: str
    seconds: float
    # DoRA inputs turned into their effective updates: {"base_weights", "modules"}; None when there were none.
    dora: dict[str, Any] | None = None


def pick_device(spec: str) -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU."""
    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MergeError(f"--device {spec}: no CUDA device is available here; use --device cpu or auto")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MergeError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
        return dev
    if spec == "cpu":
        return torch.device("cpu")
    raise MergeError(f"--device must be auto, cpu or cuda[:N], got {spec!r}")


def module_seed(seed: int, strategy: str, module: str, input_id: str) -> int:
    """Seed of the generator for one (module, input adapter id): independent of order and device."""
    h = hashlib.sha256(f"mfgit-merge\0{seed}\0{strategy}\0{module}\0{input_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def check_inputs(inputs: Sequence[MergeInput], strategy: str) -> None:
    """Refuse inputs that cannot be merged correctly, naming the first mismatch."""
    if not inputs:
        raise MergeError("nothing to merge: name at least one revision")
    check_weights(strategy, [float(inp.weight) for inp in inputs])
    first = inputs[0]
    for inp in inputs:
        bad = [v for v in peftfmt.variants(inp.adapter.config) if v != peftfmt.DORA]
        if bad:
            raise UnsupportedAdapterVariant(inp.label, bad[0])
        if is_dora(inp.adapter):
            check_dora(inp)
    flags = {bool(inp.adapter.config.get("fan_in_fan_out")) for inp in inputs}
    if len(flags) > 1:
        other = next(inp for inp in inputs if bool(inp.adapter.config.get("fan_in_fan_out")) != bool(
            first.adapter.config.get("fan_in_fan_out")))
        raise IncompatibleAdapters("fan_in_fan_out", first.label, other.label,
                                   "one stores its layers transposed (GPT-2 Conv1D), the other does not")
    base0 = first.adapter.base_model or {}
    for inp in inputs[1:]:
        base = inp.adapter.base_model or {}
        for key in ("name", "revision"):
            if base.get(key) != base0.get(key):
                raise IncompatibleAdapters(f"base model {key}", first.label, inp.label,
                                           f"{base0.get(key)!r} vs {base.get(key)!r}")
    shapes: dict[str, tuple[str, tuple[int, int], str]] = {}
    for inp in inputs:
        a = inp.adapter
        for mod, m in a.modules.items():
            out_f = a.tensors[m["lora_B"]]["shape"][0]
            in_f = a.tensors[m["lora_A"]]["shape"][1]
            kind = m.get("kind", "linear")
            if mod in shapes:
                label0, shape0, kind0 = shapes[mod]
                if shape0 != (out_f, in_f) or kind0 != kind:
                    raise IncompatibleAdapters(f"shape of {mod}", label0, inp.label,
                                               f"{kind0} {shape0[0]}x{shape0[1]} vs {kind} {out_f}x{in_f}")
            else:
                shapes[mod] = (inp.label, (out_f, in_f), kind)


def is_dora(adapter: Adapter) -> bool:
    return bool(adapter.config.get("use_dora"))


def check_dora(inp: MergeInput) -> None:
    """A DoRA input can be merged: base weights given, linear (or Conv1D) layers, a magnitude per module."""
    if inp.base is None:
        raise DoraNeedsBaseWeights(inp.label)
    a = inp.adapter
    for mod, m in a.modules.items():
        if m.get("kind") == "embedding":  # PEFT's DoraEmbeddingLayer takes its norms another way
            raise UnsupportedAdapterVariant(inp.label, f"DoRA on an embedding ({mod})")
        mag = a.tensors.get(peftfmt.magnitude_name(mod))
        out_f = a.tensors[m["lora_B"]]["shape"][0]
        if mag is None or list(mag["shape"]) != [out_f]:
            found = "none" if mag is None else f"shape {mag['shape']}"
            raise MergeError(f"{inp.label}: DoRA module {mod} needs a magnitude vector "
                             f"{peftfmt.magnitude_name(mod)} of shape [{out_f}], found {found}")


def transposed(adapter: Adapter, module: str) -> bool:
    """Whether the base layer stores ΔW as (B·A)ᵀ: embeddings (num_embeddings × dim) and
    fan_in_fan_out layers (GPT-2's Conv1D, in × out), as PEFT's get_delta_weight does."""
    return adapter.modules[module].get("kind") == "embedding" or bool(adapter.config.get("fan_in_fan_out"))


def _factors(inp: MergeInput, module: str, load: Callable[[str, torch.device], torch.Tensor],
             device: torch.device) -> Factor | None:
    """The input's update of `module` as factors of ΔW in the base layer's own layout.

    Strategies that work row by row (DELLA ranks each row) then act on the
    same rows as for a plain linear layer and as mergekit does on the full
    weight: tokens of an embedding, input features of a Conv1D. For the
    transposed layouts ΔW = (s·B·A)ᵀ = Aᵀ·(s·B)ᵀ, exactly.
    """
    m = inp.adapter.modules.get(module)
    if m is None:
        return None
    a = inp.adapter
    A = load(a.tensors[m["lora_A"]]["id"], device).to(torch.float32)
    B = load(a.tensors[m["lora_B"]]["id"], device).to(torch.float32)
    _r, _alpha, scaling = peftfmt.module_scaling(a.config, module, m["r"])
    if is_dora(a):
        # The effective update depends on W; as a dense factor it counts as rank r. The norms
        # are of the rows of the out × in weight: a fan_in_fan_out (Conv1D) checkpoint holds
        # Wᵀ, as PEFT's DoraLinearLayer transposes it, and its ΔW goes back in that layout.
        mag = load(a.tensors[peftfmt.magnitude_name(module)]["id"], device).to(torch.float32)
        out_f, in_f = B.shape[0], A.shape[1]
        if transposed(a, module):
            W = inp.base.weight(module, (in_f, out_f), device).T
            delta = effective_update(W, B, A, mag, scaling, module).T
        else:
            delta = effective_update(inp.base.weight(module, (out_f, in_f), device), B, A, mag, scaling, module)
        return dense_factor(delta, int(m["r"]))
    if transposed(a, module):
        return Factor(B=A.T.contiguous(), A=(B * scaling).T.contiguous())
    return Factor(B=B * scaling, A=A)


def output_dtype(inputs: Sequence[MergeInput], forced: str | None) -> str:
    if forced:
        if forced.upper() not in MERGE_OUTPUT_DTYPES:
            raise MergeError(f"--dtype must be one of {', '.join(MERGE_OUTPUT_DTYPES)}, got {forced!r}")
        return forced.upper()
    dtypes = {t["dtype"] for inp in inputs for t in inp.adapter.tensors.values()}
    if len(dtypes) == 1 and next(iter(dtypes)) in MERGE_OUTPUT_DTYPES:
        return next(iter(dtypes))
    return "F32"


def merge_adapters(inputs: Sequence[MergeInput], recipe: Recipe,
                   load: Callable[[str, torch.device], torch.Tensor],
                   progress: Callable[[int, int, str], None] | None = None) -> MergeOutput:
    """Merge `inputs` module by module with `recipe` (already resolved)."""
    t0 = time.perf_counter()
    check_inputs(inputs, recipe.strategy)
    device = pick_device(recipe.device)
    out_dtype = output_dtype(inputs, recipe.dtype)
    out_torch_dtype = torch_dtype(out_dtype)
    modules = sorted({m for inp in inputs for m in inp.adapter.modules})
    weights = [float(inp.weight) for inp in inputs]
    tensors: dict[str, torch.Tensor] = {}
    stats: dict[str, dict[str, Any]] = {}
    names: dict[str, tuple[str, str]] = {}
    # Masks are seeded by content (the input's adapter id), so the same
    # adapters give the same merge whoever committed them, and when.
    seed_ids = [inp.adapter.id for inp in inputs]

    def one(module: str) -> tuple[str, torch.Tensor, torch.Tensor, int, float]:
        factors = [_factors(inp, module, load, device) for inp in inputs]

        def rng(i: int) -> torch.Generator:
            g = torch.Generator(device="cpu")
            g.manual_seed(module_seed(recipe.seed, recipe.strategy, module, seed_ids[i]))
            return g

        res = merge_module(recipe.strategy, factors, weights, recipe.params, rng, recipe.policy)
        B, A = res.B, res.A
        if transposed(next(inp.adapter for inp in inputs if module in inp.adapter.modules), module):
            B, A = A.T, B.T  # back to PEFT's factors: ΔW_layer = Bᵣ·Aᵣ = (Aᵣᵀ·Bᵣᵀ)ᵀ
        return (module, A.to("cpu", out_torch_dtype).contiguous(), B.to("cpu", out_torch_dtype).contiguous(),
                int(res.rank), float(res.kept_energy))

    with module_parallelism(device) as workers:
        for k, (module, A, B, rank, kept) in enumerate(_in_order(one, modules, workers)):
            src = next(inp for inp in inputs if module in inp.adapter.modules)
            m = src.adapter.modules[module]
            names[module] = (m["lora_A"], m["lora_B"])
            tensors[m["lora_A"]], tensors[m["lora_B"]] = A, B
            stats[module] = {"rank": rank, "kept_energy": kept}
            if progress:
                progress(k + 1, len(modules), module)
    tensors = _pad_zero_ranks(tensors, names, stats)
    config = output_config(inputs, stats)
    dora = dora_record(inputs, modules)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = "cpu"
    return MergeOutput(tensors=tensors, config=config, modules=stats, device=device.type,
                       device_name=device_name, dtype=out_dtype, seconds=time.perf_counter() - t0, dora=dora)


def dora_record(inputs: Sequence[MergeInput], modules: Sequence[str]) -> dict[str, Any] | None:
    """What the provenance records of DoRA inputs: the base weights' digest, the modules made dense."""
    doras = [inp for inp in inputs if is_dora(inp.adapter)]
    if not doras:
        return None
    dense = sorted({mod for inp in doras for mod in inp.adapter.modules if mod in set(modules)})
    return {"base_weights": doras[0].base.record(), "modules": dense}


@contextlib.contextmanager
def module_parallelism(device: torch.device) -> Iterator[int]:
    """One thread per module, several modules at once: bits that do not depend on the thread count.

    LAPACK's QR and SVD (and BLAS reductions) on the CPU give other bits
    with other intra-op thread counts (torch.linalg.qr differs on 1 and 2
    threads from 24 columns up), so a merge re-run with OMP_NUM_THREADS=1
    did not reproduce one made with two threads. Each module is therefore
    computed on a single intra-op thread, and the cores are used by merging
    up to as many modules at a time (torch releases the GIL): the result
    is the same whatever the thread count. Yields the number of modules to
    merge at once; restores the thread setting afterwards. On CUDA the
    modules go one at a time and nothing is changed.
    """
    if device.type != "cpu":
        yield 1
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield max(1, min(before, os.cpu_count() or 1, 4))
    finally:
        torch.set_num_threads(before)


def _in_order(fn: Callable[[str], Any], items: Sequence[str], workers: int) -> Iterator[Any]:
    """fn over items, up to `workers` at once, results in the items' order (memory: `workers` modules)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    # OpenMP's thread count is per thread: each worker sets its own, or it
    # would compute with the process default and give other bits.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mfgit-merge",
                            initializer=torch.set_num_threads, initargs=(1,)) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _pad_zero_ranks(tensors, names, stats):
    # A module whose merged update is exactly zero comes back with rank 0;
    # PEFT cannot hold rank-0 factors, so keep one zero direction.
    for module, st in stats.items():
        if st["rank"] == 0:
            a_name, b_name = names[module]
            A, B = tensors[a_name], tensors[b_name]
            tensors[a_name] = torch.zeros((1, A.shape[1]), dtype=A.dtype)
            tensors[b_name] = torch.zeros((B.shape[0], 1), dtype=B.dtype)
            st["rank"] = 1
    return tensors


# What decides which modules of the base model PEFT adapts when it loads an adapter.
_SELECTORS = ("target_modules", "layers_to_transform", "layers_pattern", "exclude_modules")


def _targets(inputs: Sequence[MergeInput], modules: Sequence[str]) -> dict[str, Any]:
    """The selectors of the output: PEFT must adapt exactly the merged modules, no more, no fewer.

    When every input selects modules the same way, that way is kept. Plain
    name lists without layer restrictions are unioned (each name adapts the
    same modules of the shared base in every input). Anything else — a
    regex, ``layers_to_transform``, exclusions that differ — is replaced by
    the explicit list of the merged modules' names, which PEFT matches
    exactly (a list entry equal to a module's full name selects that module).
    """
    configs = [inp.adapter.config for inp in inputs]
    if all(all(c.get(k) == configs[0].get(k) for k in _SELECTORS) for c in configs):
        return {}
    lists = [c.get("target_modules") for c in configs]
    unrestricted = all(not c.get("layers_to_transform") and not c.get("layers_pattern") and not c.get("exclude_modules")
                       for c in configs)
    if unrestricted and all(isinstance(t, list) for t in lists):
        return {"target_modules": sorted({name for t in lists for name in t})}
    inner = [m[len(peftfmt.PEFT_PREFIX):] if m.startswith(peftfmt.PEFT_PREFIX) else m for m in modules]
    return {"target_modules": sorted(inner), "layers_to_transform": None, "layers_pattern": None,
            "exclude_modules": None}


def output_config(inputs: Sequence[MergeInput], stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A plain LoRA config with scaling 1 for every module, selecting exactly the merged modules.

    The most common output rank becomes ``r`` (= ``lora_alpha``); modules of
    another rank get exact (regex-escaped) ``rank_pattern`` / ``alpha_pattern``
    keys with alpha = rank, so PEFT's scaling is 1 everywhere.
    """
    base = dict(inputs[0].adapter.config)
    ranks = [s["rank"] for s in stats.values()]
    common = max(set(ranks), key=lambda r: (ranks.count(r), -r)) if ranks else 1
    rank_pattern, alpha_pattern = {}, {}
    for module, s in stats.items():
        if s["rank"] != common:
            inner = module[len(peftfmt.PEFT_PREFIX):] if module.startswith(peftfmt.PEFT_PREFIX) else module
            key = re.escape(inner)
            rank_pattern[key] = s["rank"]
            alpha_pattern[key] = s["rank"]
    base.update({
        "r": common,
        "lora_alpha": common,
        "use_rslora": False,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "use_dora": False,
        "init_lora_weights": True,
    })
    base.update(_targets(inputs, sorted(stats)))
    return base
