"""Element-wise merges in a subspace shared by the inputs: Core Space and KnOTS.

The element-wise strategies (TIES, DARE, breadcrumbs, DELLA) are run on small
matrices of coordinates of the updates in bases shared by all inputs instead
of on the dense out×in ΔWᵢ, and the result is mapped back. The coordinates
are exact (every ΔWᵢ lies in the span of the bases), so no dense out×in
matrix is ever formed and a linear merge gives exactly the full-space result.

The bases
    Each input's update is first taken in its canonical form, its thin SVD
    ΔWᵢ = Uᵢ Σᵢ Vᵢᵀ from the factors (:func:`mfgit.merge.lowrank.lowrank_svd`,
    float64, numerically zero directions dropped). The bases are then
    functions of the updates alone, not of how an adapter happens to be
    factorised (BᵢG, G⁻¹Aᵢ is the same adapter), and an input whose update is
    zero adds nothing to them. Each basis is the left singular vectors of a
    stack, with numerically zero directions dropped and canonical signs:

    * Core Space (Panariello et al. 2025): U_B of [U₁Σ₁^½ | … | U_TΣ_T^½] (the
      stacked B factors of the balanced forms), V_A of [V₁Σ₁^½ | … | V_TΣ_T^½]
      (the stacked A factors, transposed). The coordinates of input i are its
      core Mᵢ = U_Bᵀ ΔWᵢ V_A, k_B × k_A with k_B, k_A ≤ Σ rᵢ; the merged core M
      gives ΔW = U_B M V_Aᵀ.
    * KnOTS (Stoica et al. 2025): U of [U₁Σ₁ | … | U_TΣ_T], i.e. the left
      singular vectors of [ΔW₁ … ΔW_T] = U Σ [V₁ᵀ … V_Tᵀ]. The coordinates of
      input i are Σ Vᵢᵀ = Uᵀ ΔWᵢ, k × in with k ≤ Σ rᵢ; the merged
      coordinates P give ΔW = U P.

    Coordinates are rounded to fp32 before the element-wise step, as the dense
    strategies see fp32 ΔWᵢ, and the step is exactly the dense strategy's
    (:mod:`mfgit.merge.sparsify` then :mod:`mfgit.merge.fuse`), with its
    counting and stable magnitude orderings over the coordinate matrix.

Randomness (``core_dare_*``, ``core_della``, ``knots_dare_*``): the draw order
    As for the dense strategies, ``rng(i)`` is input i's own CPU generator,
    seeded by the engine from (seed, strategy, module, input id). For every
    input i whose factors are present (in increasing i, whatever its weight),
    exactly one draw is made, of the shape of the coordinate matrix::

        u_i = torch.rand((k_B, k_A), generator=rng(i), dtype=torch.float32)   # Core Space, on the CPU
        u_i = torch.rand((k, in), generator=rng(i), dtype=torch.float32)      # KnOTS, on the CPU

    then moved to the data's device. Element (r, c) of input i's coordinates
    is dropped where ``u_i[r, c]`` is below its drop probability (p for DARE,
    pₖ for DELLA, ranked along row r of the coordinates). When no input has a
    non-zero update there is nothing to drop and no draw is made.

The result
    M (or P) is small, so its exact SVD M = u σ vᵀ gives the SVD of ΔW,
    (U_B u) σ (V_A v)ᵀ, and the rank policy truncates it optimally with the
    exact kept energy; factors are split balanced with canonical signs.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping

import torch

from mfgit.merge.fuse import Fuse
from mfgit.merge.lowrank import RankPolicy, balanced_split, canonical_signs, lowrank_svd, numerical_rank, select_rank
from mfgit.merge.sparsify import Sparsify, uniform
from mfgit.merge.updates import ModuleInputs, ModuleResult, result, zero_result

__all__ = ["core", "knots"]

_F64 = torch.float64


def _canonical(m: ModuleInputs) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(Uᵢ, σᵢ, Vᵢᵀ) of each present input's update, float64, numerically zero directions dropped."""
    parts = []
    for _, _, b, a in m.inputs:
        U, s, Vh = lowrank_svd(b.to(_F64), a.to(_F64))
        k = numerical_rank(s, m.shape)
        parts.append((U[:, :k], s[:k], Vh[:k]))
    return parts


def _basis(stack: list[torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
    """Orthonormal basis of the column space of the stacked matrices: left singular vectors, by σ descending."""
    X = torch.cat(stack, dim=1)
    U, s, Vh = torch.linalg.svd(X, full_matrices=False)
    U, _ = canonical_signs(U, Vh)
    return U[:, : numerical_rank(s, shape)]


def _merge(coords: list[torch.Tensor], sparsify_: Sparsify, fuse_: Fuse, m: ModuleInputs,
           p: Mapping[str, float], rng: Callable[[int], torch.Generator]) -> torch.Tensor:
    """λ · fuse(sparsify(coordinates of each present input)), input by input in increasing index."""
    taus = []
    for (i, _, _, _), c in zip(m.inputs, coords):
        t = c.to(torch.float32)
        sparsify_(t, p, functools.partial(uniform, rng, i, tuple(t.shape), m.device))
        taus.append(t)
    return fuse_(taus, [w for _, w, _, _ in m.inputs]).mul_(p["lambda"])


def _from_coordinates(left: torch.Tensor, M: torch.Tensor, right: torch.Tensor | None,
                      rank: int | None, energy: float | None) -> ModuleResult:
    """left · M · rightᵀ (right None: the identity) as balanced factors of rank ≤ ``rank``, by the exact SVD of M."""
    u, s, vh = torch.linalg.svd(M.to(_F64), full_matrices=False)
    U, Vh = canonical_signs(left @ u, vh if right is None else vh @ right.T)
    r, kept = select_rank(s, rank, energy)
    B, A = balanced_split(U[:, :r], s[:r], Vh[:r])
    return result(B.to(torch.float32), A.to(torch.float32), kept)


Coordinates = tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]  # (left basis, per input, right basis)


def _core_coordinates(parts: list, shape: tuple[int, int]) -> Coordinates:
    UB = _basis([U * s.sqrt() for U, s, _ in parts], shape)
    VA = _basis([Vh.T * s.sqrt() for _, s, Vh in parts], shape)
    return UB, [((UB.T @ U) * s) @ (Vh @ VA) for U, s, Vh in parts], VA


def _knots_coordinates(parts: list, shape: tuple[int, int]) -> Coordinates:
    U = _basis([Ui * s for Ui, s, _ in parts], shape)
    return U, [((U.T @ Ui) * s) @ Vh for Ui, s, Vh in parts], None


def _in_subspace(coordinates: Callable[[list, tuple[int, int]], Coordinates], sparsify_: Sparsify, fuse_: Fuse,
                 m: ModuleInputs, p: Mapping[str, float], rng: Callable[[int], torch.Generator],
                 policy: RankPolicy) -> ModuleResult:
    parts = _canonical(m)
    K = policy.rank_for(m.ranks, m.limit)
    if not any(s.numel() for _, s, _ in parts):
        return zero_result(m.shape[0], m.shape[1], K, m.device)
    left, coords, right = coordinates(parts, m.shape)
    return _from_coordinates(left, _merge(coords, sparsify_, fuse_, m, p, rng), right, K, policy.energy)


def core(sparsify_: Sparsify, fuse_: Fuse, m: ModuleInputs, p: Mapping[str, float],
         rng: Callable[[int], torch.Generator], policy: RankPolicy) -> ModuleResult:
    """An element-wise strategy on the Core Space cores Mᵢ = U_Bᵀ ΔWᵢ V_A; ΔW = U_B M V_Aᵀ."""
    return _in_subspace(_core_coordinates, sparsify_, fuse_, m, p, rng, policy)


def knots(sparsify_: Sparsify, fuse_: Fuse, m: ModuleInputs, p: Mapping[str, float],
          rng: Callable[[int], torch.Generator], policy: RankPolicy) -> ModuleResult:
    """An element-wise strategy on the KnOTS coordinates Σ Vᵢᵀ = Uᵀ ΔWᵢ; ΔW = U P."""
    return _in_subspace(_knots_coordinates, sparsify_, fuse_, m, p, rng, policy)
