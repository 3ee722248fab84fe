"""Merge strategies for one adapted module: the table of strategies and :func:`merge_module`.

The engine hands :func:`merge_module` the factors of one module m from each
input adapter i, with the LoRA scaling already folded into B, so that
ΔWᵢ = Bᵢ @ Aᵢ exactly (fp32, on the compute device). It gets back the merged
factors (B, A), their rank and the fraction of energy the final
re-factorisation kept. Pure tensor math, no I/O. Every formula is documented,
with its paper, in docs/merging.md; the short form is in :data:`STRATEGIES`.

The table
    :data:`STRATEGIES` is the one place a strategy is declared: its kind, its
    parameters (name, default, allowed range, help; :mod:`mfgit.merge.params`),
    any check of those parameters together, its citation and summary, and how
    it computes. Factor-space and low-rank strategies name a module function
    that works on the factors (:mod:`mfgit.merge.factorspace`). The dense
    element-wise strategies are built from two parts, as mergekit builds its
    task-arithmetic family: a sparsification step applied to each dense ΔWᵢ
    (:mod:`mfgit.merge.sparsify`: TIES trim, breadcrumbs mask, DARE drop,
    DELLA MAGPRUNE; it specifies the draw order of the random ones and the
    magnitude orderings) and a fusion step that makes one ΔW of them
    (:mod:`mfgit.merge.fuse`: TIES sign election and disjoint mean, or the
    weighted sum), which is scaled by λ and re-factorised. The same two parts
    run on the coordinates of the updates in a shared subspace make the
    ``core_*`` (Core Space) and ``knots_*`` (KnOTS) strategies
    (:mod:`mfgit.merge.subspace`, which specifies their draw order); they are
    derived from the dense entries, parameters and checks included. Model
    Stock, SLERP, NuSLERP and the Karcher mean are combinations of the updates
    computed from the factors' inner products (:mod:`mfgit.merge.spherical`).

Absent modules
    ``factors[i] is None`` means input i does not adapt module m. It counts as
    a zero update, ΔWᵢ = 0. The element-wise and linear formulas give a zero
    update no contribution at all (it is trimmed/dropped to zero, its sign is
    0 so it never joins a TIES majority, it adds nothing to a sum or to a
    shared basis, the Karcher mean leaves it out); Model Stock and SLERP take
    it as an update orthogonal to every other that still counts as an input
    (Model Stock's N, an end of a SLERP). Either way an absent module and an explicit zero update give the
    same ΔW. The rank policies count only
    the inputs that adapt the module (``"max"``/``"sum"`` over their ranks).
    An absent input makes no random draw.

Weights
    ``weights[i]`` multiplies ΔWᵢ. They are used as given (not normalised to
    sum to 1): pass 0.5, 0.5 for an average. Negative weights subtract
    (task negation). For ``slerp``, ``nuslerp`` and ``karcher`` they are the
    shares of an interpolation or a mean and must be >= 0
    (:func:`check_weights`, which also checks how many inputs a strategy takes).

Re-factorisation
    The dense result is re-factorised by :func:`mfgit.merge.lowrank.factorize_dense`:
    exact SVD, or, for a rank cap small against min(out, in), block Krylov
    iteration from a fixed-seed start block (kept energy within ~1e-6 of the
    exact SVD's; the exact SVD is used when it does not converge).

Device
    Everything runs on the device of the factors. On CUDA, TF32 matmuls are
    switched off for the duration of :func:`merge_module` (and restored), so
    BᵢAᵢ is a true fp32 product as on the CPU.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Iterator, Mapping

import torch

from mfgit.errors import MergeError
from mfgit.merge import factorspace, fuse, sparsify, spherical, subspace
from mfgit.merge.fuse import Fuse
# factorize_dense is called through this module's global: benchmarks.gpu wraps it to capture the dense ΔW.
from mfgit.merge.lowrank import RankPolicy, factorize_dense
from mfgit.merge.names import STRATEGY_NAMES
from mfgit.merge.params import ANY, FLAG, Check, Param, Range, ResolvedParams, validate
from mfgit.merge.sparsify import Sparsify, uniform
from mfgit.merge.updates import Factor, ModuleInputs, ModuleResult, result

# The selection tests reach these through this module, where they used to live.
from mfgit.merge.sparsify import _SAMPLE, _keep_middle_, _keep_top_, _magprune_, _top_mask  # noqa: F401

__all__ = [
    "Factor",
    "ModuleResult",
    "StrategySpec",
    "STRATEGIES",
    "check_weights",
    "exact_by_default",
    "resolve_params",
    "merge_module",
]


ModuleFn = Callable[[ModuleInputs, Mapping[str, float], RankPolicy], ModuleResult]


@dataclass(frozen=True)
class StrategySpec:
    """What a strategy is: its name, how it computes, its parameters and source.

    An element-wise strategy (kind ``dense``, ``core`` or ``knots``) has
    ``sparsify`` and ``fuse`` steps and no ``module`` function; the others
    have a ``module`` function and no steps.
    """

    name: str
    # "factor": exact in factor space; "lowrank": QR/SVD of factors; "dense": one dense ΔW per module;
    # "core" / "knots": element-wise on the coordinates in a shared subspace (mfgit.merge.subspace).
    kind: str
    parameters: tuple[Param, ...]
    citation: str
    summary: str
    module: ModuleFn | None = None
    sparsify: Sparsify | None = None  # applied in place to each present input's ΔWᵢ (or coordinates)
    fuse: Fuse | None = None  # the sparsified ΔWᵢ -> one ΔW (before λ)
    check: Check | None = None  # the resolved parameters together
    inputs: tuple[int, int | None] = (1, None)  # how many inputs a merge takes: (at least, at most)
    nonnegative: bool = False  # weights are shares of a mean or an interpolation: none may be negative

    def __post_init__(self) -> None:
        elementwise = self.kind in _ELEMENTWISE_KINDS
        if not (elementwise == (self.module is None) == (self.sparsify is not None) == (self.fuse is not None)):
            raise ValueError(f"strategy {self.name!r}: an element-wise strategy has sparsify and fuse steps, "
                             f"the others a module function")

    @property
    def params(self) -> Mapping[str, float]:
        """Parameter name -> default (read-only)."""
        return MappingProxyType({p.name: p.default for p in self.parameters})


_ELEMENTWISE_KINDS = ("dense", "core", "knots")


# --- the dense strategies -------------------------------------------------------------


def _merge_dense(sparsify_: Sparsify, fuse_: Fuse, m: ModuleInputs, p: Mapping[str, float],
                 rng: Callable[[int], torch.Generator], policy: RankPolicy) -> ModuleResult:
    """λ · fuse(sparsify(ΔWᵢ) for each present input), re-factorised.

    The steps run input by input in increasing index, which is the draw order
    :mod:`mfgit.merge.sparsify` specifies.
    """
    taus: list[torch.Tensor] = []
    for i, _w, b, a in m.inputs:
        t = b @ a  # the one dense ΔWᵢ of this module, fp32 on the device (modified in place below)
        sparsify_(t, p, functools.partial(uniform, rng, i, m.shape, m.device))
        taus.append(t)
    merged = fuse_(taus, [w for _, w, _, _ in m.inputs])
    del taus
    merged.mul_(p["lambda"])
    Bo, Ao, kept = factorize_dense(merged, policy.rank_for(m.ranks, m.limit), policy.energy)
    return result(Bo, Ao, kept)


_ELEMENTWISE = {"dense": _merge_dense, "core": subspace.core, "knots": subspace.knots}


# --- the table ------------------------------------------------------------------------

_DROP = Range(0.0, 1.0, hi_open=True)  # [0, 1)
_FRACTION = Range(0.0, 1.0, hi_open=True)  # [0, 1)

# "lambda" is λ of the papers, "alpha" α of TSV and Iso-C: the same role, each paper's name.
_LAMBDA = Param("lambda", 1.0, ANY, "λ, the scale of the merged update")
_ALPHA = Param("alpha", 1.0, ANY, "α, the scale of the merged update")
_DENSITY = Param("density", 0.2, Range(0.0, 1.0, lo_open=True), "fraction of each ΔWᵢ kept, by magnitude")
_DARE_DROP = Param("drop_rate", 0.9, _DROP, "probability of dropping an element of ΔWᵢ", complement="density")


def _check_breadcrumbs(p: Mapping[str, float]) -> None:
    if p["beta"] + p["gamma"] >= 1.0:
        raise MergeError(
            f"breadcrumbs parameters beta + gamma must be < 1 (they mask the bottom beta and top gamma "
            f"fractions), got beta={p['beta']:g}, gamma={p['gamma']:g}"
        )


def _check_della(p: Mapping[str, float]) -> None:
    # Every drop probability drop_rate ± epsilon must itself be one: in [0, 1).
    rate, eps = p["drop_rate"], p["epsilon"]
    if rate - eps < 0.0 or rate + eps >= 1.0:
        raise MergeError(
            f"della parameters need 0 <= drop_rate - epsilon and drop_rate + epsilon < 1, "
            f"got drop_rate={rate:g}, epsilon={eps:g}"
        )


_TA = 'Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, arXiv:2212.04089'
_TIES = 'Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023, arXiv:2306.01708'
_DARE = (
    'Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models '
    'as a Free Lunch", ICML 2024, arXiv:2311.03099'
)

_CORE = (
    'Panariello et al., "Accurate and Efficient Low-Rank Model Merging in Core Space", NeurIPS 2025, '
    "arXiv:2509.17786"
)
_KNOTS = 'Stoica et al., "Model merging with SVD to tie the KnOTS", ICLR 2025, arXiv:2410.19735'
_MERGEKIT = (
    'as defined by mergekit (Goddard et al., "Arcee\'s MergeKit: A Toolkit for Merging Large Language Models", '
    "EMNLP 2024, arXiv:2403.13257)"
)

STRATEGIES: dict[str, StrategySpec] = {
    s.name: s
    for s in [
        StrategySpec(
            "linear",
            "factor",
            (_LAMBDA,),
            _TA,
            "ΔW = λ Σ wᵢ ΔWᵢ, exact by concatenating factors (rank Σ rᵢ with --rank sum, else truncated).",
            module=factorspace.linear,
        ),
        StrategySpec(
            "task_arithmetic",
            "factor",
            (_LAMBDA,),
            _TA,
            "Task arithmetic, θ = θ₀ + λ Σ wᵢ τᵢ; the same computation as 'linear'.",
            module=factorspace.linear,
        ),
        StrategySpec(
            "svd",
            "lowrank",
            (_LAMBDA,),
            'Eckart & Young, "The approximation of one matrix by another of lower rank", Psychometrika 1936',
            "Optimal rank-r approximation of λ Σ wᵢ ΔWᵢ via QR of the concatenated factors; no dense matrix.",
            module=factorspace.svd,
        ),
        StrategySpec(
            "ties",
            "dense",
            (_DENSITY, _LAMBDA),
            _TIES,
            "Trim each ΔWᵢ to its top-density magnitudes, elect a sign per element, weighted mean of agreeing inputs.",
            sparsify=sparsify.trim,
            fuse=fuse.elect_and_fuse_,
        ),
        StrategySpec(
            "dare_linear",
            "dense",
            (_DARE_DROP, _LAMBDA),
            _DARE,
            "Drop each element with probability drop_rate, rescale survivors by 1/(1-drop_rate), weighted sum.",
            sparsify=sparsify.dare,
            fuse=fuse.weighted_sum_,
        ),
        StrategySpec(
            "dare_ties",
            "dense",
            (_DARE_DROP, _LAMBDA),
            _DARE + "; sign election and disjoint mean from " + _TIES,
            "DARE drop and rescale, then TIES sign election and disjoint weighted mean.",
            sparsify=sparsify.dare,
            fuse=fuse.elect_and_fuse_,
        ),
        StrategySpec(
            "breadcrumbs",
            "dense",
            (
                Param("beta", 0.85, _FRACTION, "fraction of each ΔWᵢ masked from the bottom, by magnitude"),
                Param("gamma", 0.01, _FRACTION, "fraction of each ΔWᵢ masked from the top, by magnitude"),
                _LAMBDA,
            ),
            'Davari & Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks", '
            "ECCV 2024, arXiv:2312.06795",
            "Mask the bottom beta and the top gamma fraction of each ΔWᵢ by magnitude, weighted sum.",
            sparsify=sparsify.breadcrumbs,
            fuse=fuse.weighted_sum_,
            check=_check_breadcrumbs,
        ),
        StrategySpec(
            "della",
            "dense",
            (
                Param("drop_rate", 0.3, _DROP, "mean probability of dropping an element of ΔWᵢ", complement="density"),
                Param("epsilon", 0.14, Range(0.0, 0.5, hi_open=True),
                      "spread of the drop probability over a row, from the smallest magnitude to the largest"),
                _LAMBDA,
            ),
            'Deep, Bhardwaj & Poria, "DELLA-Merging: Reducing Interference in Model Merging through '
            'Magnitude-Based Sampling", arXiv:2406.11617, 2024',
            "MAGPRUNE: per-row drop probability from drop_rate+epsilon (smallest) to drop_rate-epsilon "
            "(largest), rescale 1/(1-p), then TIES sign election and disjoint weighted mean.",
            sparsify=sparsify.magprune,
            fuse=fuse.elect_and_fuse_,
            check=_check_della,
        ),
        StrategySpec(
            "magnitude_prune",
            "dense",
            (_DENSITY, _LAMBDA),
            _TIES + " (trim step only)",
            "Keep the top-density magnitudes of each ΔWᵢ, weighted sum.",
            sparsify=sparsify.trim,
            fuse=fuse.weighted_sum_,
        ),
        StrategySpec(
            "tsv",
            "lowrank",
            (_ALPHA,),
            'Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging", '
            "CVPR 2025, arXiv:2412.00081",
            "TSV-Merge: top ⌊K/n⌋ singular triplets per input, orthogonalise the concatenated U and V, "
            "α U⊥ diag(wᵢσᵢ) V⊥ᵀ.",
            module=factorspace.tsv,
        ),
        StrategySpec(
            "iso_c",
            "lowrank",
            (_ALPHA,),
            'Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific '
            'Subspaces", ICML 2025, arXiv:2502.04959',
            "Iso-C: SVD of Σ wᵢ ΔWᵢ via QR, spectrum flattened to its mean: α σ̄ U Vᵀ.",
            module=factorspace.iso_c,
        ),
    ]
}

# Core Space and KnOTS run the dense strategies' own steps on their coordinates (mfgit.merge.subspace).
_SPACES = {
    "core": (_CORE, "on the Core Space cores Mᵢ = U_Bᵀ ΔWᵢ V_A (U_B, V_A: bases of the stacked factors); "
                    "ΔW = U_B M V_Aᵀ."),
    "knots": (_KNOTS, "on the KnOTS coordinates ΣVᵢᵀ = Uᵀ ΔWᵢ ([ΔW₁ … ΔW_T] = UΣ[V₁ᵀ … V_Tᵀ]); ΔW = U P."),
}
_IN_SPACE = {
    "core": ("ties", "dare_linear", "dare_ties", "breadcrumbs", "della"),
    "knots": ("ties", "dare_linear", "dare_ties"),
}


def _in_space(kind: str, base: StrategySpec) -> StrategySpec:
    citation, where = _SPACES[kind]
    return StrategySpec(f"{kind}_{base.name}", kind, base.parameters, f"{citation}; {base.name}: {base.citation}",
                        f"{base.name} {where}", sparsify=base.sparsify, fuse=base.fuse, check=base.check)


_ANGULAR: list[StrategySpec] = [
    StrategySpec(
        "model_stock",
        "factor",
        (Param("filter_wise", 0.0, FLAG, "one interpolation ratio per row of ΔW instead of one per module",
               flag=True),),
        'Jang, Yun & Han, "Model Stock: All we need is just a few fine-tuned models", ECCV 2024, '
        "arXiv:2403.19522; " + _MERGEKIT,
        "t = N·cos θ / (1 + (N−1)·cos θ), cos θ the mean pairwise cosine of the ΔWᵢ (from the factors); "
        "ΔW = t Σ wᵢ ΔWᵢ.",
        module=spherical.model_stock,
    ),
    StrategySpec(
        "slerp",
        "factor",
        (),
        'Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985; ' + _MERGEKIT,
        "Two inputs, t = w₁/(w₀+w₁): (w₀+w₁)·(sin((1−t)θ) ΔW₀ + sin(tθ) ΔW₁)/sin θ, θ the angle between "
        "the updates (lerp when |cos θ| > 0.9995).",
        module=spherical.slerp,
        inputs=(2, 2),
        nonnegative=True,
    ),
    StrategySpec(
        "nuslerp",
        "factor",
        (
            Param("flatten", 1.0, FLAG, "one angle for the whole update (else one per row or column)", flag=True),
            Param("row_wise", 0.0, FLAG, "without flatten: one angle per column of ΔW (mergekit's "
                  "nuslerp_row_wise), else per row", flag=True),
        ),
        "NuSLERP " + _MERGEKIT,
        "slerp with mergekit's nuslerp options: one angle per update, per row or per column, lerp only for "
        "exactly parallel updates.",
        module=spherical.nuslerp,
        inputs=(2, 2),
        nonnegative=True,
    ),
    StrategySpec(
        "karcher",
        "factor",
        (
            Param("max_iter", 10.0, Range(1.0, 10000.0), "iterations of the fixed-point update", integer=True),
            Param("tol", 1e-5, Range(0.0, 1.0, lo_open=True, hi_open=True),
                  "smallest norm, angle and step that count"),
        ),
        'Karcher, "Riemannian center of mass and mollifier smoothing", Comm. Pure Appl. Math. 1977; '
        'Buss & Fillmore, "Spherical averages and applications to spherical splines and interpolation", '
        "ACM TOG 2001; " + _MERGEKIT,
        "Weighted Karcher mean of the directions ΔWᵢ/‖ΔWᵢ‖ on the unit sphere (from the Gram matrix of "
        "the factors), times Σ wᵢ‖ΔWᵢ‖.",
        module=spherical.karcher,
        nonnegative=True,
    ),
]

STRATEGIES.update({
    s.name: s
    for s in [*(_in_space(kind, STRATEGIES[name]) for kind, names in _IN_SPACE.items() for name in names), *_ANGULAR]
})
if tuple(STRATEGIES) != STRATEGY_NAMES:  # pragma: no cover - a programming error, caught by any import
    raise AssertionError(f"mfgit.merge.names.STRATEGY_NAMES must list the table's strategies: {tuple(STRATEGIES)}")


def _spec(strategy: str) -> StrategySpec:
    spec = STRATEGIES.get(strategy)
    if spec is None:
        raise MergeError(f"unknown merge strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    return spec


def exact_by_default(strategy: str) -> bool:
    """Whether the strategy's result is exact in factor space, so a merge keeps every direction
    (rank policy ``sum``) unless a truncation is asked for."""
    spec = STRATEGIES.get(strategy)
    return spec is not None and spec.kind == "factor"


def check_weights(strategy: str, weights: list[float]) -> None:
    """Refuse a number of inputs, or weights, that the strategy's formula does not take.

    Raises:
        MergeError: too few or too many inputs (``slerp`` and ``nuslerp`` take
            exactly two), or a negative weight where the weights are shares of
            an interpolation or a mean (``slerp``, ``nuslerp``, ``karcher``).
    """
    spec = _spec(strategy)
    lo, hi = spec.inputs
    if len(weights) < lo or (hi is not None and len(weights) > hi):
        many = f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
        raise MergeError(f"{strategy} merges {many} inputs, got {len(weights)}")
    if spec.nonnegative and any(w < 0.0 for w in weights):
        raise MergeError(f"{strategy} weights are shares of the result and must be >= 0, "
                         f"got {', '.join(f'{w:g}' for w in weights)}")


def resolve_params(strategy: str, params: dict) -> dict:
    """Fill in defaults and check a strategy's parameters, as its :data:`STRATEGIES` entry declares them.

    ``lambda_`` is accepted as an alias of ``lambda`` (Python keyword).

    Args:
        strategy: a key of :data:`STRATEGIES`.
        params: parameter name -> value; unknown names are errors.

    Returns:
        A new dict with every parameter of the strategy, as floats.

    Raises:
        MergeError: unknown strategy, unknown parameter, a value that is not a
            finite number, a value outside its range (the message names the
            parameter and the allowed range), or values that the strategy's
            check refuses together.
    """
    spec = _spec(strategy)
    return ResolvedParams(strategy, validate(strategy, spec.parameters, params, spec.check))


def merge_module(
    strategy: str,
    factors: list[Factor | None],
    weights: list[float],
    params: dict,
    rng: Callable[[int], torch.Generator],
    policy: RankPolicy,
) -> ModuleResult:
    """Merge one module's updates from several inputs.

    Args:
        strategy: a key of :data:`STRATEGIES`.
        factors: per input, its factors for this module, or None when the input
            does not adapt the module (a zero update, ΔWᵢ = 0).
        weights: per input, its weight wᵢ (same length as ``factors``).
        params: strategy parameters (see :func:`resolve_params`).
        rng: ``rng(i)`` gives a fresh, seeded CPU generator for input i; called
            only by the random strategies, once per present input (see
            :mod:`mfgit.merge.sparsify` and :mod:`mfgit.merge.subspace` for the
            draw order).
        policy: how to choose the output rank.

    Returns:
        The merged factors in fp32 on the inputs' device, their rank, and the
        fraction of the strategy's ΔW energy kept by the final factorisation
        (1.0 where the result is exact).

    Raises:
        MergeError: bad parameters, mismatched lengths or shapes, a module
            that no input adapts, or inputs and weights the strategy does not
            take (:func:`check_weights`).
    """
    spec = _spec(strategy)
    # Parameters are validated once, where the recipe is resolved; only raw ones are checked here.
    resolved = isinstance(params, ResolvedParams) and params.strategy == strategy
    p = params if resolved else resolve_params(strategy, params)
    if len(weights) != len(factors):
        raise MergeError(f"{len(factors)} inputs but {len(weights)} weights")
    ws: list[float] = []
    for w in weights:
        try:
            x = float(w)
        except (TypeError, ValueError):
            raise MergeError(f"weights must be finite numbers, got {w!r}") from None
        if isinstance(w, bool) or not math.isfinite(x):
            raise MergeError(f"weights must be finite numbers, got {w!r}")
        ws.append(x)

    present: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []
    counted: list[int | None] = []
    shape: tuple[int, int] | None = None
    device: torch.device | None = None
    for i, f in enumerate(factors):
        if f is None:
            continue
        b, a = f.B, f.A
        if b.dim() != 2 or a.dim() != 2 or b.shape[1] != a.shape[0]:
            raise MergeError(f"input {i}: factor shapes do not chain: B {tuple(b.shape)}, A {tuple(a.shape)}")
        if shape is None:
            shape = (int(b.shape[0]), int(a.shape[1]))
            device = b.device
        elif (b.shape[0], a.shape[1]) != shape:
            raise MergeError(
                f"input {i}: module shape {int(b.shape[0])}x{int(a.shape[1])} differs from {shape[0]}x{shape[1]}"
            )
        if b.device != device or a.device != device:
            raise MergeError(f"input {i}: factors are on {b.device}/{a.device}, expected {device}")
        present.append((i, ws[i], b.to(torch.float32), a.to(torch.float32)))
        counted.append(f.rank)
    if not present:
        raise MergeError("no input adapts this module")
    check_weights(strategy, ws)
    assert shape is not None and device is not None
    m = ModuleInputs(present, shape, device, tuple(ws), tuple(counted))
    with torch.no_grad(), _ieee_fp32_matmul(device):
        if spec.module is not None:
            return spec.module(m, p, policy)
        return _ELEMENTWISE[spec.kind](spec.sparsify, spec.fuse, m, p, rng, policy)


@contextlib.contextmanager
def _ieee_fp32_matmul(device: torch.device) -> Iterator[None]:
    """Full-precision fp32 matmuls on CUDA for the duration of a merge (no TF32).

    TF32 rounds matmul inputs to 10 mantissa bits: BᵢAᵢ would differ from the
    CPU's by ~1e-3 relative and magnitude orderings would flip. The previous
    setting is restored afterwards, through whichever of PyTorch's two APIs
    (legacy ``allow_tf32`` or ``fp32_precision``) can read it without mixing
    them. Nothing is changed for CPU merges.
    """
    if device.type != "cuda":
        yield
        return
    m = torch.backends.cuda.matmul
    try:
        old = m.allow_tf32  # raises if the new API was used to set it
    except RuntimeError:
        old_p = m.fp32_precision
        m.fp32_precision = "ieee"
        try:
            yield
        finally:
            m.fp32_precision = old_p
        return
    m.allow_tf32 = False
    try:
        yield
    finally:
        m.allow_tf32 = old
