"""Fusion steps of the dense strategies: how the sparsified ΔWᵢ of one module become one ΔW.

A fusion step takes the inputs' dense, already sparsified updates τᵢ (fp32,
same shape, same device) and their weights wᵢ, and returns the fused update.
It consumes the τᵢ: they are modified in place and the result is one of them,
so a module never needs more dense matrices than it has inputs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from mfgit.merge.slices import slices

__all__ = ["Fuse", "elect_and_fuse_", "weighted_sum_"]

Fuse = Callable[[Sequence[torch.Tensor], Sequence[float]], torch.Tensor]


def elect_and_fuse_(taus: Sequence[torch.Tensor], ws: Sequence[float]) -> torch.Tensor:
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
    for sl in slices(flat[0].numel(), flat[0].device):
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


def weighted_sum_(taus: Sequence[torch.Tensor], ws: Sequence[float]) -> torch.Tensor:
    """Σᵢ wᵢτᵢ; consumes ``taus`` (modified in place)."""
    flat = [t.view(-1) for t in taus]
    for sl in slices(flat[0].numel(), flat[0].device):
        total = flat[0][sl].mul_(ws[0])
        for w, f in zip(ws[1:], flat[1:]):
            total.add_(f[sl].mul_(w))
    return taus[0]
