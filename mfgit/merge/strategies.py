"""Merge strategies for one adapted module: pure tensor math, no I/O.

The engine hands :func:`merge_module` the factors of one module m from each
input adapter i, with the LoRA scaling already folded into B, so that
ΔWᵢ = Bᵢ @ Aᵢ exactly (fp32, on the compute device). It gets back the merged
factors (B, A), their rank and the fraction of energy the final
re-factorisation kept. Every formula is documented, with its paper, in
docs/merging.md; the short form is in :data:`STRATEGIES`.

Absent modules
    ``factors[i] is None`` means input i does not adapt module m. It counts as
    a zero update, ΔWᵢ = 0. Every formula here gives a zero update no
    contribution at all (it is trimmed/dropped to zero, its sign is 0 so it
    never joins a TIES majority, it adds nothing to a sum), so an absent module
    and an explicit zero update give the same ΔW. The rank policies count only
    the inputs that adapt the module (``"max"``/``"sum"`` over their ranks).

Weights
    ``weights[i]`` multiplies ΔWᵢ. They are used as given (not normalised to
    sum to 1): pass 0.5, 0.5 for an average. Negative weights subtract
    (task negation).

Randomness (DARE, DARE-TIES, DELLA): the draw order
    ``rng(i)`` returns a fresh CPU ``torch.Generator`` for input i, seeded by
    the engine from (seed, strategy, module, input id). Each input has its own
    generator, so inputs never shift each other's streams. For every input i
    whose factors are present (in increasing i, whatever its weight), exactly
    one draw is made::

        u_i = torch.rand((out, in), generator=rng(i), dtype=torch.float32)   # on the CPU

    then ``u_i`` is moved to the data's device. Nothing else draws; global RNG
    state is never touched. With it:

    * ``dare_linear``, ``dare_ties``: element (r, c) of ΔWᵢ is dropped where
      ``u_i[r, c] < drop_rate``; survivors are multiplied by 1/(1 − drop_rate).
    * ``della``: element (r, c) is dropped where ``u_i[r, c] < p_i[r, c]``, its own
      drop probability (see below); survivors are multiplied by 1/(1 − p_i[r, c]).

    Masks are therefore identical on CPU and GPU (up to elements whose
    magnitude rank differs between devices through fp32 rounding of BᵢAᵢ).

Orderings (TIES trim, magnitude pruning, breadcrumbs, DELLA ranks)
    Elements are ordered by |value| with a *stable* sort, so ties keep index
    order (row-major flattening): ``torch.argsort(|x|.flatten(), descending=True,
    stable=True)`` for the top-k selections, ``torch.argsort(|x|, dim=1,
    stable=True)`` (ascending, per row) for DELLA ranks. A fraction f of n
    elements is ``floor(f·n + 0.5)`` elements.

    That is the specification; the top-k selections are computed without
    sorting: the exact k-th largest |x| (:func:`_top_threshold`) splits the
    elements, and those tied with it are taken in index order, which selects
    exactly the first k of the stable sort (tested against it, ties included).

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
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from mfgit.errors import MergeError
from mfgit.merge.lowrank import (
    RankPolicy,
    balanced_split,
    factorize_dense,
    lowrank_svd,
    select_rank,
    truncate_factors,
)

__all__ = [
    "Factor",
    "ModuleResult",
    "StrategySpec",
    "STRATEGIES",
    "resolve_params",
    "merge_module",
]


@dataclass(frozen=True)
class Factor:
    """One input's update of one module: ΔW = B @ A, scaling already folded in."""

    B: torch.Tensor  # out × r
    A: torch.Tensor  # r × in


@dataclass(frozen=True)
class ModuleResult:
    """The merged update of one module: ΔW = B @ A."""

    B: torch.Tensor  # out × rank
    A: torch.Tensor  # rank × in
    rank: int
    kept_energy: float  # fraction of ‖ΔW_strategy‖_F² kept by the final factorisation


@dataclass(frozen=True)
class StrategySpec:
    """What a strategy is: its name, how it computes, its parameters and source."""

    name: str
    kind: str  # "factor" (exact in factor space) | "lowrank" (QR/SVD of factors) | "dense" (one dense ΔW per module)
    params: dict[str, Any]  # parameter name -> default
    citation: str
    summary: str


# --- parameters ---------------------------------------------------------------


@dataclass(frozen=True)
class _Range:
    lo: float | None  # None: unbounded
    hi: float | None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, x: float) -> bool:
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        if self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi):
            return False
        return True

    def text(self) -> str:
        if self.lo is None and self.hi is None:
            return "any finite number"
        left = "(" if self.lo_open or self.lo is None else "["
        right = ")" if self.hi_open or self.hi is None else "]"
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{left}{lo}, {hi}{right}"


_ANY = _Range(None, None)
_DENSITY = _Range(0.0, 1.0, lo_open=True)  # (0, 1]
_DROP = _Range(0.0, 1.0, hi_open=True)  # [0, 1)
_FRACTION = _Range(0.0, 1.0, hi_open=True)  # [0, 1)

# name -> (default, range) per strategy; "lambda" is λ of the papers.
_PARAMS: dict[str, dict[str, tuple[float, _Range]]] = {
    "linear": {"lambda": (1.0, _ANY)},
    "task_arithmetic": {"lambda": (1.0, _ANY)},
    "svd": {"lambda": (1.0, _ANY)},
    "ties": {"density": (0.2, _DENSITY), "lambda": (1.0, _ANY)},
    "dare_linear": {"drop_rate": (0.9, _DROP), "lambda": (1.0, _ANY)},
    "dare_ties": {"drop_rate": (0.9, _DROP), "lambda": (1.0, _ANY)},
    "breadcrumbs": {"beta": (0.85, _FRACTION), "gamma": (0.01, _FRACTION), "lambda": (1.0, _ANY)},
    "della": {"drop_rate": (0.3, _DROP), "epsilon": (0.14, _Range(0.0, 0.5, hi_open=True)), "lambda": (1.0, _ANY)},
    "magnitude_prune": {"density": (0.2, _DENSITY), "lambda": (1.0, _ANY)},
    "tsv": {"alpha": (1.0, _ANY)},
    "iso_c": {"alpha": (1.0, _ANY)},
}

_ALIASES = {"lambda_": "lambda"}

_TA = 'Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, arXiv:2212.04089'
_TIES = 'Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023, arXiv:2306.01708'
_DARE = (
    'Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models '
    'as a Free Lunch", ICML 2024, arXiv:2311.03099'
)

STRATEGIES: dict[str, StrategySpec] = {
    s.name: s
    for s in [
        StrategySpec(
            "linear",
            "factor",
            {"lambda": 1.0},
            _TA,
            "ΔW = λ Σ wᵢ ΔWᵢ, exact by concatenating factors (rank Σ rᵢ with --rank sum, else truncated).",
        ),
        StrategySpec(
            "task_arithmetic",
            "factor",
            {"lambda": 1.0},
            _TA,
            "Task arithmetic, θ = θ₀ + λ Σ wᵢ τᵢ; the same computation as 'linear'.",
        ),
        StrategySpec(
            "svd",
            "lowrank",
            {"lambda": 1.0},
            'Eckart & Young, "The approximation of one matrix by another of lower rank", Psychometrika 1936',
            "Optimal rank-r approximation of λ Σ wᵢ ΔWᵢ via QR of the concatenated factors; no dense matrix.",
        ),
        StrategySpec(
            "ties",
            "dense",
            {"density": 0.2, "lambda": 1.0},
            _TIES,
            "Trim each ΔWᵢ to its top-density magnitudes, elect a sign per element, weighted mean of agreeing inputs.",
        ),
        StrategySpec(
            "dare_linear",
            "dense",
            {"drop_rate": 0.9, "lambda": 1.0},
            _DARE,
            "Drop each element with probability drop_rate, rescale survivors by 1/(1-drop_rate), weighted sum.",
        ),
        StrategySpec(
            "dare_ties",
            "dense",
            {"drop_rate": 0.9, "lambda": 1.0},
            _DARE + "; sign election and disjoint mean from " + _TIES,
            "DARE drop and rescale, then TIES sign election and disjoint weighted mean.",
        ),
        StrategySpec(
            "breadcrumbs",
            "dense",
            {"beta": 0.85, "gamma": 0.01, "lambda": 1.0},
            'Davari & Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks", '
            "ECCV 2024, arXiv:2312.06795",
            "Mask the bottom beta and the top gamma fraction of each ΔWᵢ by magnitude, weighted sum.",
        ),
        StrategySpec(
            "della",
            "dense",
            {"drop_rate": 0.3, "epsilon": 0.14, "lambda": 1.0},
            'Deep, Bhardwaj & Poria, "DELLA-Merging: Reducing Interference in Model Merging through '
            'Magnitude-Based Sampling", arXiv:2406.11617, 2024',
            "MAGPRUNE: per-row drop probability from drop_rate+epsilon (smallest) to drop_rate-epsilon "
            "(largest), rescale 1/(1-p), then TIES sign election and disjoint weighted mean.",
        ),
        StrategySpec(
            "magnitude_prune",
            "dense",
            {"density": 0.2, "lambda": 1.0},
            _TIES + " (trim step only)",
            "Keep the top-density magnitudes of each ΔWᵢ, weighted sum.",
        ),
        StrategySpec(
            "tsv",
            "lowrank",
            {"alpha": 1.0},
            'Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging", '
            "CVPR 2025, arXiv:2412.00081",
            "TSV-Merge: top ⌊K/n⌋ singular triplets per input, orthogonalise the concatenated U and V, "
            "α U⊥ diag(wᵢσᵢ) V⊥ᵀ.",
        ),
        StrategySpec(
            "iso_c",
            "lowrank",
            {"alpha": 1.0},
            'Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific '
            'Subspaces", ICML 2025, arXiv:2502.04959',
            "Iso-C: SVD of Σ wᵢ ΔWᵢ via QR, spectrum flattened to its mean: α σ̄ U Vᵀ.",
        ),
    ]
}


def resolve_params(strategy: str, params: dict) -> dict:
    """Fill in defaults and check a strategy's parameters.

    ``lambda_`` is accepted as an alias of ``lambda`` (Python keyword).

    Args:
        strategy: a key of :data:`STRATEGIES`.
        params: parameter name -> value; unknown names are errors.

    Returns:
        A new dict with every parameter of the strategy, as floats.

    Raises:
        MergeError: unknown strategy, unknown parameter, a value that is not a
            finite number, or a value outside its range (the message names the
            parameter and the allowed range).
    """
    if strategy not in _PARAMS:
        raise MergeError(f"unknown merge strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    table = _PARAMS[strategy]
    out: dict[str, float] = {}
    for raw_name, value in (params or {}).items():
        name = _ALIASES.get(raw_name, raw_name)
        if name not in table:
            allowed = ", ".join(table) or "none"
            raise MergeError(f"strategy {strategy!r} has no parameter {raw_name!r} (its parameters: {allowed})")
        if name in out:
            raise MergeError(f"parameter {name!r} given twice (as 'lambda' and 'lambda_')")
        rng = table[name][1]
        if isinstance(value, bool):
            raise MergeError(f"{strategy} parameter {name} must be a number in {rng.text()}, got {value!r}")
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise MergeError(f"{strategy} parameter {name} must be a number in {rng.text()}, got {value!r}") from None
        if not math.isfinite(x) or not rng.contains(x):
            raise MergeError(f"{strategy} parameter {name} must be in {rng.text()}, got {value!r}")
        out[name] = x
    for name, (default, _) in table.items():
        out.setdefault(name, float(default))
    if strategy == "breadcrumbs" and out["beta"] + out["gamma"] >= 1.0:
        raise MergeError(
            f"breadcrumbs parameters beta + gamma must be < 1 (they mask the bottom beta and top gamma "
            f"fractions), got beta={out['beta']:g}, gamma={out['gamma']:g}"
        )
    if strategy == "della":
        p, eps = out["drop_rate"], out["epsilon"]
        if p - eps < 0.0 or p + eps >= 1.0:
            raise MergeError(
                f"della parameters need 0 <= drop_rate - epsilon and drop_rate + epsilon < 1, "
                f"got drop_rate={p:g}, epsilon={eps:g}"
            )
    return out


# --- helpers ------------------------------------------------------------------


def _count(frac: float, n: int) -> int:
    """Number of elements in a fraction ``frac`` of ``n``: floor(frac·n + 0.5), within [0, n]."""
    return max(0, min(n, int(math.floor(frac * n + 0.5))))


# Selections by magnitude. All of them give exactly what a stable sort gives
# (equal magnitudes keep index order) without sorting whole modules: the
# threshold is the exact k-th largest |x| (a sample brackets it, the few
# elements inside the bracket are searched exactly, a full torch.kthvalue is
# the fallback), and elements tied with it are taken in index order.

_SAMPLE = 1 << 14  # sample size used to bracket a threshold
_CHUNK = 1 << 18  # elements per slice for element-wise passes on the CPU (cache-sized)


def _slices(n: int, device: torch.device) -> list[slice]:
    """Slices of a flat tensor of n elements for element-wise passes.

    On the CPU, cache-sized pieces (each piece goes through all its passes
    while it is in cache); on other devices one piece. Element-wise results do
    not depend on the slicing.
    """
    if device.type != "cpu" or n <= _CHUNK:
        return [slice(0, n)]
    return [slice(i, min(n, i + _CHUNK)) for i in range(0, n, _CHUNK)]


def _top_threshold(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k-th largest magnitude v in the 1-D tensor ``x`` (1 ≤ k ≤ n) and how its ties split.

    Returns (v, included, excluded): v = the k-th largest of |x| as a 0-d
    tensor (= ``torch.kthvalue(|x|, n - k + 1)``), and the indices, ascending,
    of the elements with |x| = v that are among the k largest in stable order
    (``included``: ties keep index order, so these are the first ones) and of
    those that are not (``excluded``). The k largest are exactly
    {|x| > v} ∪ included.

    A fixed sample of 16 384 elements gives a bracket [lo, hi] around v; one
    pass over x (cache-sized slices) counts the elements above hi and at or
    above lo and collects the indices of those inside the bracket. If the
    counts confirm the bracket (fewer than k above hi, at least k at or above
    lo), v is searched among those few, else among all of |x| (a full
    ``torch.kthvalue``). Exact either way.
    """
    n = x.numel()
    if n > 4 * _SAMPLE:
        # Sample positions i·P mod n with P ≈ 0.618·n coprime to n: spread over
        # rows and columns alike (a plain stride would hit the same few columns).
        step = int(n * 0.6180339887498949)
        while math.gcd(step, n) != 1:
            step += 1
        ns = _SAMPLE
        idx = torch.arange(ns, dtype=torch.int64, device=x.device).mul_(step).remainder_(n)
        srt = torch.sort(x[idx].abs_()).values  # ascending
        del idx
        frac = k / n
        pos = (1.0 - frac) * ns  # expected ascending position of v in the sample
        margin = 6.0 * math.sqrt(ns * frac * (1.0 - frac)) + 32.0
        lo = srt[max(0, int(pos - margin))]
        hi = srt[min(ns - 1, int(pos + margin) + 1)]
        n_gt_hi = torch.zeros((), dtype=torch.int64, device=x.device)
        bands = []
        for sl in _slices(n, x.device):
            a = x[sl].abs()
            gt_hi = a > hi
            n_gt_hi += torch.count_nonzero(gt_hi)
            band = (a >= lo).logical_xor_(gt_hi).nonzero().squeeze(1)  # lo <= |x| <= hi
            bands.append(band.add_(sl.start) if sl.start else band)
        band = torch.cat(bands)  # ascending index
        del bands
        above = int(n_gt_hi)
        if above < k <= above + band.numel():  # fewer than k above hi, at least k at or above lo
            cand = x[band].abs_()
            v = torch.kthvalue(cand, cand.numel() - (k - above) + 1).values
            tied = band[cand == v]
            n_in = k - above - int(torch.count_nonzero(cand > v))
            return v, tied[:n_in], tied[n_in:]
        del band
    a = x.abs()
    v = torch.kthvalue(a, n - k + 1).values
    tied = (a == v).nonzero().squeeze(1)
    n_in = k - int(torch.count_nonzero(a > v))
    return v, tied[:n_in], tied[n_in:]


def _top_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k largest-magnitude elements of the 1-D tensor ``x``, ties in index order.

    Exactly ``mask[argsort(|x|, descending=True, stable=True)[:k]] = True``.
    """
    n = x.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=x.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=x.device)
    v, _included, excluded = _top_threshold(x, k)
    mask = x.abs() >= v
    mask[excluded] = False
    return mask


def _keep_top_(x: torch.Tensor, density: float) -> torch.Tensor:
    """In place: zero all but the ``density`` fraction of largest-magnitude elements (stable order)."""
    n = x.numel()
    k = _count(density, n)
    if k >= n:
        return x
    if k == 0:
        return x.zero_()
    f = x.view(-1)
    v, included, _excluded = _top_threshold(f, k)
    kept_ties = f[included]
    lam = float(v)
    for sl in _slices(n, x.device):
        xs = f[sl]
        xs.copy_(F.hardshrink(xs, lam))  # keeps |x| > v exactly, zeroes the rest (ties included)
    f[included] = kept_ties  # the ties with v that are among the k largest
    return x


def _keep_middle_(x: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """In place: zero the top ``gamma`` and the bottom ``beta`` fractions by magnitude (breadcrumbs).

    Keeps positions n_top … n − n_bot − 1 of the stable descending order, i.e.
    top(n − n_bot) minus top(n_top) (both prefixes of that order).
    """
    n = x.numel()
    n_top, n_bot = _count(gamma, n), _count(beta, n)
    if n_top >= n - n_bot:
        return x.zero_()
    if n_top == 0 and n_bot == 0:
        return x
    f = x.view(-1)
    keep = _top_mask(f, n - n_bot)
    if n_top > 0:
        keep &= _top_mask(f, n_top).logical_not_()
    return x.masked_fill_(keep.logical_not_().view_as(x), 0.0)


def _uniform(rng: Callable[[int], torch.Generator], i: int, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """The one draw made for input i (see the module docstring): U[0, 1) fp32 on the CPU, moved to ``device``."""
    g = rng(i)
    u = torch.rand(shape, generator=g, dtype=torch.float32, device="cpu")
    return u.to(device)


def _keep_factor_(u: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    """In place on u: 1.0 where u ≥ p, 0.0 where u < p.

    sgn(u − p) is exact (a difference of floats is 0 only for equal floats and
    keeps the sign of the true difference), so this is the comparison u ≥ p in
    float arithmetic, which is several times faster on the CPU than a boolean
    mask and masked_fill.
    """
    return u.sub_(p).sign_().add_(1.0).clamp_max_(1.0)


def _dare_(x: torch.Tensor, u: torch.Tensor, p: float) -> torch.Tensor:
    """In place: x / (1 − p) where u ≥ p, else 0 (consumes u)."""
    if p != 0.0:
        f, uf = x.view(-1), u.view(-1)
        for sl in _slices(f.numel(), x.device):
            f[sl].div_(1.0 - p).mul_(_keep_factor_(uf[sl], p))
    return x


def _magprune_(x: torch.Tensor, u: torch.Tensor, p: float, eps: float) -> torch.Tensor:
    """In place: DELLA's MAGPRUNE, per row: drop probability p+ε for the smallest |x| down to p−ε for the largest.

    Element of ascending rank rₖ (stable) in its row gets pₖ = (p+ε) − 2ε·rₖ/(cols−1)
    (pₖ = p for one column), computed once per rank in fp32 and scattered to
    the elements; dropped where u < pₖ, else divided by 1 − pₖ. Consumes u.
    """
    rows, cols = x.shape
    # |x| is non-negative, so its fp32 bit patterns sort like its values
    # (as int32, which sorts faster): the same stable order as sorting |x|.
    order = torch.argsort(x.abs().view(torch.int32), dim=1, stable=True)  # ascending magnitude
    if cols > 1:
        norm = torch.arange(cols, dtype=torch.float32, device=x.device) / float(cols - 1)
    else:
        norm = torch.full((1,), 0.5, dtype=torch.float32, device=x.device)
    table = (p + eps) - (2.0 * eps) * norm  # drop probability by rank
    p_drop = torch.empty_like(x)
    p_drop.scatter_(1, order, table.expand(rows, cols))
    del order
    f, uf, pf = x.view(-1), u.view(-1), p_drop.view(-1)
    for sl in _slices(f.numel(), x.device):
        ps = pf[sl]
        keep = _keep_factor_(uf[sl], ps)  # u ≥ pₖ
        f[sl].div_(ps.neg_().add_(1.0)).mul_(keep)  # x / (1 − pₖ), or 0
    return x


def _elect_and_fuse_(taus: Sequence[torch.Tensor], ws: Sequence[float]) -> torch.Tensor:
    """TIES sign election and disjoint weighted mean; consumes ``taus`` (modified in place).

    γ = sgn(Σᵢ wᵢτᵢ); input i agrees at an element where sgn(wᵢτᵢ) = γ ≠ 0;
    result = Σ_agree wᵢτᵢ / Σ_agree |wᵢ| (0 where no input agrees). For
    non-negative weights this is Σ_agree wᵢτᵢ / Σ_agree wᵢ.

    Computed as γ · Σᵢ max(γ·wᵢτᵢ, 0) / Σᵢ |wᵢ|·[γ·wᵢτᵢ > 0]: multiplying by
    γ ∈ {−1, 0, 1} is exact and a sum of same-signed terms is sign-symmetric,
    so this is the formula above to the last bit, in a few in-place passes.
    """
    flat = [t.view(-1) for t in taus]
    wmin = min([abs(w) for w in ws if w != 0.0], default=1.0)
    for sl in _slices(flat[0].numel(), flat[0].device):
        ts = [f[sl] for f in flat]
        for w, t in zip(ws, ts):
            t.mul_(w)  # wᵢτᵢ
        gamma = ts[0].clone()
        for t in ts[1:]:
            gamma.add_(t)
        gamma.sign_()
        den = torch.zeros_like(gamma)
        for w, t in zip(ws, ts):
            t.mul_(gamma).clamp_min_(0.0)  # γ·wᵢτᵢ where it agrees, else 0
            den.add_(t.sign(), alpha=abs(w))  # [t > 0]: t ≥ 0 here, so its sign is 0 or 1
        num = ts[0]
        for t in ts[1:]:
            num.add_(t)
        # den is 0 exactly where num is 0; any positive divisor leaves those at 0.
        den.clamp_min_(wmin)
        num.div_(den).mul_(gamma)
    return taus[0]


def _weighted_sum_(taus: Sequence[torch.Tensor], ws: Sequence[float]) -> torch.Tensor:
    """Σᵢ wᵢτᵢ; consumes ``taus`` (modified in place)."""
    flat = [t.view(-1) for t in taus]
    for sl in _slices(flat[0].numel(), flat[0].device):
        total = flat[0][sl].mul_(ws[0])
        for w, f in zip(ws[1:], flat[1:]):
            total.add_(f[sl].mul_(w))
    return taus[0]


def _numerical_rank(s: torch.Tensor, shape: tuple[int, int]) -> int:
    """Number of singular values above σ₀·max(out, in)·eps(fp32) (numpy/torch matrix_rank rule)."""
    if s.numel() == 0:
        return 0
    top = float(s[0])
    if top <= 0.0:
        return 0
    tol = top * max(shape) * torch.finfo(torch.float32).eps
    return int((s > tol).sum())


def _zero_result(out_f: int, in_f: int, rank: int | None, device: torch.device) -> ModuleResult:
    r = 1 if rank is None else max(0, min(1, rank))
    B = torch.zeros((out_f, r), dtype=torch.float32, device=device)
    A = torch.zeros((r, in_f), dtype=torch.float32, device=device)
    return ModuleResult(B, A, r, 1.0)


def _result(B: torch.Tensor, A: torch.Tensor, kept: float) -> ModuleResult:
    return ModuleResult(B.contiguous(), A.contiguous(), int(B.shape[1]), float(kept))


# --- strategies -------------------------------------------------------------------


def _concat(present: list[tuple[int, float, torch.Tensor, torch.Tensor]], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    B = torch.cat([(scale * w) * b for _, w, b, _ in present], dim=1)
    A = torch.cat([a for _, _, _, a in present], dim=0)
    return B, A


def _merge_factor_space(name, present, p, policy, ranks, limit) -> ModuleResult:
    lam = p["lambda"]
    B, A = _concat(present, lam)
    if name != "svd" and policy.kind == "sum":
        return _result(B, A, 1.0)  # exact: rank Σ rᵢ
    Bo, Ao, kept = truncate_factors(B, A, policy.rank_for(ranks, limit), policy.energy)
    return _result(Bo, Ao, kept)


def _merge_dense(name, present, p, rng, policy, ranks, limit, shape, device) -> ModuleResult:
    ws = [w for _, w, _, _ in present]
    taus: list[torch.Tensor] = []
    for i, _w, b, a in present:
        t = b @ a  # the one dense ΔWᵢ of this module, fp32 on the device (modified in place below)
        if name in ("ties", "magnitude_prune"):
            _keep_top_(t, p["density"])
        elif name == "breadcrumbs":
            _keep_middle_(t, p["beta"], p["gamma"])
        elif name in ("dare_linear", "dare_ties"):
            _dare_(t, _uniform(rng, i, shape, device), p["drop_rate"])
        elif name == "della":
            _magprune_(t, _uniform(rng, i, shape, device), p["drop_rate"], p["epsilon"])
        taus.append(t)
    if name in ("ties", "dare_ties", "della"):
        merged = _elect_and_fuse_(taus, ws)
    else:
        merged = _weighted_sum_(taus, ws)
    del taus
    merged.mul_(p["lambda"])
    Bo, Ao, kept = factorize_dense(merged, policy.rank_for(ranks, limit), policy.energy)
    return _result(Bo, Ao, kept)


def _merge_tsv(present, p, policy, ranks, limit, shape, device) -> ModuleResult:
    K = policy.rank_for(ranks, limit)
    budget = K if K is not None else min(int(sum(ranks)), limit)
    comps = []
    for _i, w, b, a in present:
        if w == 0.0:
            continue
        U, s, Vh = lowrank_svd(b, a)
        nz = _numerical_rank(s, shape)
        if nz > 0:
            comps.append((w, U, s, Vh, nz))
    if not comps or budget == 0:
        return _zero_result(shape[0], shape[1], K, device)
    k = max(1, budget // len(comps))
    U_cat = torch.cat([U[:, : min(k, nz)] for _, U, _, _, nz in comps], dim=1)
    S_cat = torch.cat([w * s[: min(k, nz)] for w, _, s, _, nz in comps])
    Vh_cat = torch.cat([Vh[: min(k, nz)] for _, _, _, Vh, nz in comps], dim=0)
    # Orthogonal Procrustes / polar factor: the orthonormal matrix nearest to U_cat.
    P, _, Qh = torch.linalg.svd(U_cat, full_matrices=False)
    U_perp = P @ Qh
    P2, _, Qh2 = torch.linalg.svd(Vh_cat, full_matrices=False)
    Vh_perp = P2 @ Qh2
    B = U_perp * (p["alpha"] * S_cat).unsqueeze(0)
    Bo, Ao, kept = truncate_factors(B, Vh_perp, K, policy.energy)
    return _result(Bo, Ao, kept)


def _merge_iso_c(present, p, policy, ranks, limit, shape, device) -> ModuleResult:
    K = policy.rank_for(ranks, limit)
    B, A = _concat(present, 1.0)
    U, s, Vh = lowrank_svd(B, A)
    r0 = _numerical_rank(s, shape)
    if r0 == 0 or p["alpha"] == 0.0:
        return _zero_result(shape[0], shape[1], K, device)
    sbar = s[:r0].mean()
    flat = (p["alpha"] * sbar).expand(r0).clone()
    # Directions keep the order of the task-arithmetic spectrum, so a
    # truncation keeps the dominant directions of Σ wᵢΔWᵢ.
    r, kept = select_rank(flat.abs(), K, policy.energy)
    Bo, Ao = balanced_split(U[:, :r], flat[:r], Vh[:r])
    return _result(Bo, Ao, kept)


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
            only by the random strategies, once per present input (see the
            module docstring for the draw order).
        policy: how to choose the output rank.

    Returns:
        The merged factors in fp32 on the inputs' device, their rank, and the
        fraction of the strategy's ΔW energy kept by the final factorisation
        (1.0 where the result is exact).

    Raises:
        MergeError: bad parameters, mismatched lengths or shapes, or a module
            that no input adapts.
    """
    if strategy not in STRATEGIES:
        raise MergeError(f"unknown merge strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    p = resolve_params(strategy, params)
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
    if not present:
        raise MergeError("no input adapts this module")
    assert shape is not None and device is not None
    ranks = [int(b.shape[1]) for _, _, b, _ in present]
    limit = min(shape)

    kind = STRATEGIES[strategy].kind
    with torch.no_grad(), _ieee_fp32_matmul(device):
        if strategy in ("linear", "task_arithmetic", "svd"):
            return _merge_factor_space(strategy, present, p, policy, ranks, limit)
        if kind == "dense":
            return _merge_dense(strategy, present, p, rng, policy, ranks, limit, shape, device)
        if strategy == "tsv":
            return _merge_tsv(present, p, policy, ranks, limit, shape, device)
        if strategy == "iso_c":
            return _merge_iso_c(present, p, policy, ranks, limit, shape, device)
    raise MergeError(f"strategy {strategy!r} is not implemented")  # pragma: no cover


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
