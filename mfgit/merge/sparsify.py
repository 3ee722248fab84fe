"""Sparsification steps of the dense strategies: element-wise masks and drops of one ΔWᵢ.

Each step takes one input's dense update τᵢ = BᵢAᵢ of one module (fp32, on
the compute device), the strategy's resolved parameters and a ``draw`` that
makes that input's one random draw, and sparsifies τᵢ in place. A zero
update stays zero under every step.

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
      drop probability (see :func:`_magprune_`); survivors are multiplied by
      1/(1 − p_i[r, c]).

    The dense merge calls a strategy's step once per present input, in
    increasing i, and the random steps call ``draw`` exactly once, which gives
    that order. Masks are therefore identical on CPU and GPU (up to elements
    whose magnitude rank differs between devices through fp32 rounding of BᵢAᵢ).

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
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from mfgit.merge.slices import slices

__all__ = ["Draw", "Sparsify", "uniform", "trim", "breadcrumbs", "dare", "magprune"]

Draw = Callable[[], torch.Tensor]  # the one U[0, 1) draw of the input being sparsified
Sparsify = Callable[[torch.Tensor, Mapping[str, float], Draw], torch.Tensor]


def _count(frac: float, n: int) -> int:
    """Number of elements in a fraction ``frac`` of ``n``: floor(frac·n + 0.5), within [0, n]."""
    return max(0, min(n, int(math.floor(frac * n + 0.5))))


# Selections by magnitude. All of them give exactly what a stable sort gives
# (equal magnitudes keep index order) without sorting whole modules: the
# threshold is the exact k-th largest |x| (a sample brackets it, the few
# elements inside the bracket are searched exactly, a full torch.kthvalue is
# the fallback), and elements tied with it are taken in index order.

_SAMPLE = 1 << 14  # sample size used to bracket a threshold


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
        for sl in slices(n, x.device):
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
    for sl in slices(n, x.device):
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


def uniform(rng: Callable[[int], torch.Generator], i: int, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
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
        for sl in slices(f.numel(), x.device):
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
    for sl in slices(f.numel(), x.device):
        ps = pf[sl]
        keep = _keep_factor_(uf[sl], ps)  # u ≥ pₖ
        f[sl].div_(ps.neg_().add_(1.0)).mul_(keep)  # x / (1 − pₖ), or 0
    return x


# --- the steps ------------------------------------------------------------------


def trim(t: torch.Tensor, p: Mapping[str, float], draw: Draw) -> torch.Tensor:
    """TIES trim (and magnitude pruning): keep the top ``density`` fraction of |τᵢ|."""
    return _keep_top_(t, p["density"])


def breadcrumbs(t: torch.Tensor, p: Mapping[str, float], draw: Draw) -> torch.Tensor:
    """Breadcrumbs mask: zero the bottom ``beta`` and the top ``gamma`` fractions of |τᵢ|."""
    return _keep_middle_(t, p["beta"], p["gamma"])


def dare(t: torch.Tensor, p: Mapping[str, float], draw: Draw) -> torch.Tensor:
    """DARE: drop with probability ``drop_rate``, rescale the survivors by 1/(1 − drop_rate)."""
    return _dare_(t, draw(), p["drop_rate"])


def magprune(t: torch.Tensor, p: Mapping[str, float], draw: Draw) -> torch.Tensor:
    """DELLA MAGPRUNE: per-row drop probability ``drop_rate`` ± ``epsilon`` by magnitude rank."""
    return _magprune_(t, draw(), p["drop_rate"], p["epsilon"])
