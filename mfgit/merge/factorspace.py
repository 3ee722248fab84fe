"""Merges computed from the inputs' factors alone, never a dense out×in matrix.

Each function merges one module as its strategy's entry in
:data:`mfgit.merge.strategies.STRATEGIES` says. ``linear`` (also
``task_arithmetic``) and ``svd`` concatenate the weighted factors, which is
exact, and truncate optimally through a QR of the factors (``linear`` only
under a rank policy other than ``sum``). ``tsv`` and ``iso_c`` work on SVDs
of factor products taken through the same QR
(:func:`mfgit.merge.lowrank.lowrank_svd`).
"""

from __future__ import annotations

from typing import Mapping

import torch

from mfgit.merge.lowrank import (
    RankPolicy,
    balanced_split,
    factorize_dense,
    lowrank_svd,
    numerical_rank,
    select_rank,
    truncate_factors,
)
from mfgit.merge.updates import ModuleInputs, ModuleResult, result, zero_result

__all__ = ["combined", "linear", "svd", "tsv", "iso_c"]


def _concat(present: list[tuple[int, float, torch.Tensor, torch.Tensor]], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    B = torch.cat([(scale * w) * b for _, w, b, _ in present], dim=1)
    A = torch.cat([a for _, _, _, a in present], dim=0)
    return B, A


def combined(B: torch.Tensor, A: torch.Tensor, m: ModuleInputs, policy: RankPolicy) -> ModuleResult:
    """The update B @ A, factors that combine the inputs' own: as they are under ``--rank sum``
    (exact, rank Σ rᵢ), else truncated optimally as ``svd`` does.

    A dense input (a DoRA effective update) is wider than the rank it counts
    as; ``sum`` then truncates to Σ rᵢ like any cap, with the kept energy
    recorded, rather than store a full-rank matrix as factors."""
    if policy.kind == "sum" and m.widths <= sum(m.ranks):
        return result(B, A, 1.0)
    return _truncated(B, A, m, policy)


def _truncated(B: torch.Tensor, A: torch.Tensor, m: ModuleInputs, policy: RankPolicy) -> ModuleResult:
    """The best factorisation of B @ A under the policy: through QR of the factors, or, when
    dense inputs (DoRA's) make them wider than the module, of the product itself, then the
    smaller problem (QR of factors k wide costs O((out+in)·k²), the product O(out·in·k)).
    Merges of plain LoRA inputs always take the first path, as they always did (same bits)."""
    rank = policy.rank_for(m.ranks, m.limit)
    if m.widths > sum(m.ranks) and B.shape[1] > m.limit:
        Bo, Ao, kept = factorize_dense(B @ A, rank, policy.energy)
    else:
        Bo, Ao, kept = truncate_factors(B, A, rank, policy.energy)
    return result(Bo, Ao, kept)


def linear(m: ModuleInputs, p: Mapping[str, float], policy: RankPolicy) -> ModuleResult:
    """λ Σ wᵢ BᵢAᵢ as concatenated factors: exact (rank Σ rᵢ) with --rank sum, else truncated as ``svd``."""
    B, A = _concat(m.inputs, p["lambda"])
    return combined(B, A, m, policy)


def svd(m: ModuleInputs, p: Mapping[str, float], policy: RankPolicy) -> ModuleResult:
    B, A = _concat(m.inputs, p["lambda"])
    return _truncated(B, A, m, policy)


def tsv(m: ModuleInputs, p: Mapping[str, float], policy: RankPolicy) -> ModuleResult:
    K = policy.rank_for(m.ranks, m.limit)
    budget = K if K is not None else min(int(sum(m.ranks)), m.limit)
    comps = []
    for _i, w, b, a in m.inputs:
        if w == 0.0:
            continue
        U, s, Vh = lowrank_svd(b, a)
        nz = numerical_rank(s, m.shape)
        if nz > 0:
            comps.append((w, U, s, Vh, nz))
    if not comps or budget == 0:
        return zero_result(m.shape[0], m.shape[1], K, m.device)
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
    return result(Bo, Ao, kept)


def iso_c(m: ModuleInputs, p: Mapping[str, float], policy: RankPolicy) -> ModuleResult:
    K = policy.rank_for(m.ranks, m.limit)
    B, A = _concat(m.inputs, 1.0)
    U, s, Vh = lowrank_svd(B, A)
    r0 = numerical_rank(s, m.shape)
    if r0 == 0 or p["alpha"] == 0.0:
        return zero_result(m.shape[0], m.shape[1], K, m.device)
    sbar = s[:r0].mean()
    flat = (p["alpha"] * sbar).expand(r0).clone()
    # Directions keep the order of the task-arithmetic spectrum, so a
    # truncation keeps the dominant directions of Σ wᵢΔWᵢ.
    r, kept = select_rank(flat.abs(), K, policy.energy)
    Bo, Ao = balanced_split(U[:, :r], flat[:r], Vh[:r])
    return result(Bo, Ao, kept)
