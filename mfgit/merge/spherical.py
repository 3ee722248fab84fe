"""Merges from the angles between the inputs' updates: Model Stock, SLERP, NuSLERP and the Karcher mean.

Each result is a combination of the inputs' updates, ΔW = Σᵢ cᵢ ΔWᵢ, with one
coefficient per input (or per row or column of ΔW) computed from inner
products of the updates. Those come from the factors, never from a dense
out×in matrix (float64, from the fp32 factors)::

    ⟨ΔWᵢ, ΔWⱼ⟩           = tr(AᵢᵀBᵢᵀBⱼAⱼ) = Σ (BᵢᵀBⱼ) ⊙ (AᵢAⱼᵀ)     (rᵢ×rⱼ matrices)
    row r:    ⟨ΔWᵢ[r], ΔWⱼ[r]⟩   = Σ_columns (Bᵢ (AᵢAⱼᵀ)) ⊙ Bⱼ
    column c: ⟨ΔWᵢ[:,c], ΔWⱼ[:,c]⟩ = Σ_rows ((BᵢᵀBⱼ) Aⱼ) ⊙ Aᵢ

The combination is exact in factor space, B = [c₁B₁ | … | cₙBₙ],
A = [A₁; …; Aₙ] (a per-row coefficient scales the rows of Bᵢ, a per-column
one the columns of Aᵢ): rank Σ rᵢ, returned as it is under the rank policy
``sum`` (the default of these strategies), else truncated optimally
(:func:`mfgit.merge.factorspace.combined`).

Angles: cos θ(x, y) = ⟨x, y⟩ / (‖x‖ ‖y‖), clamped to [−1, 1]; a zero update
(also an input that does not adapt the module) is orthogonal to every other,
cos θ = 0. The definitions follow mergekit's, applied to the updates; every
formula and where it differs from mergekit is in docs/merging.md.

* ``model_stock`` (Jang et al. 2024): N = the number of inputs of the merge,
  c = the mean of cos θ(ΔWᵢ, ΔWⱼ) over its N(N−1)/2 pairs (c = 1 for N = 1),
  t = N·c / (1 + (N−1)·c) (t = 0 where |1 + (N−1)c| < 1e-6), ΔW = t Σ wᵢ ΔWᵢ;
  ``filter_wise``: one t per row.
* ``slerp`` / ``nuslerp``: two inputs, s = w₀ + w₁, t = w₁/s;
  ΔW = s·(sin((1−t)θ)/sin θ · ΔW₀ + sin(tθ)/sin θ · ΔW₁), or s·((1−t)ΔW₀ + tΔW₁)
  where the updates are (anti)parallel: |cos θ| > 0.9995 for ``slerp``,
  1 − cos²θ ≤ 1e-16 for ``nuslerp``, whose angle is one per update
  (``flatten``), per row, or per column (``row_wise``, mergekit's name).
* ``karcher``: the weighted Karcher mean of the directions ΔWᵢ/‖ΔWᵢ‖ on the
  unit sphere by mergekit's fixed-point iteration, run on the coefficients of
  the iterate in the span of the updates (inner products from the Gram
  matrix), times Σ wᵢ‖ΔWᵢ‖.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from mfgit.merge.factorspace import combined
from mfgit.merge.lowrank import RankPolicy
from mfgit.merge.updates import ModuleInputs, ModuleResult

__all__ = ["model_stock", "slerp", "nuslerp", "karcher"]

_F64 = torch.float64


def _inner(m: ModuleInputs, per: str) -> torch.Tensor:
    """⟨ΔWᵢ, ΔWⱼ⟩ of the present inputs, float64, shape (n, n, L).

    ``per``: ``"whole"`` (L = 1), ``"rows"`` (L = out) or ``"columns"`` (L = in).
    Symmetric to the bit: each pair is computed once.
    """
    f = [(b.to(_F64), a.to(_F64)) for _, _, b, a in m.inputs]
    n = len(f)
    length = {"whole": 1, "rows": m.shape[0], "columns": m.shape[1]}[per]
    d = torch.zeros((n, n, length), dtype=_F64, device=m.device)
    for i, (bi, ai) in enumerate(f):
        for j in range(i, n):
            bj, aj = f[j]
            if per == "whole":
                x = ((bi.T @ bj) * (ai @ aj.T)).sum().reshape(1)
            elif per == "rows":
                x = ((bi @ (ai @ aj.T)) * bj).sum(dim=1)
            else:
                x = (((bi.T @ bj) @ aj) * ai).sum(dim=0)
            d[i, j] = x
            d[j, i] = x
    return d


def _cos(dxy: torch.Tensor, dxx: torch.Tensor, dyy: torch.Tensor) -> torch.Tensor:
    """cos θ from inner products; 0 where either vector is zero."""
    den = dxx.clamp_min(0.0).sqrt() * dyy.clamp_min(0.0).sqrt()
    return torch.where(den > 0.0, dxy / torch.where(den > 0.0, den, 1.0), 0.0).clamp(-1.0, 1.0)


def _combine(m: ModuleInputs, coefs: list[torch.Tensor], per: str, policy: RankPolicy) -> ModuleResult:
    """Σᵢ cᵢ ΔWᵢ over the present inputs as concatenated factors; cᵢ has length 1, out or in (``per``)."""
    Bs, As = [], []
    for (_, _, b, a), c in zip(m.inputs, coefs):
        c = c.to(torch.float32)
        if per == "columns":
            Bs.append(b)
            As.append(a * c.unsqueeze(0))
        else:
            Bs.append(b * c.unsqueeze(1) if per == "rows" else b * float(c))
            As.append(a)
    return combined(torch.cat(Bs, dim=1), torch.cat(As, dim=0), m, policy)


# --- Model Stock ----------------------------------------------------------------------


def model_stock(m: ModuleInputs, p: Mapping[str, float], policy: RankPolicy) -> ModuleResult:
    per = "rows" if p["filter_wise"] else "whole"
    d = _inner(m, per)
    n_all = len(m.weights)
    n = d.shape[0]
    if n_all == 1:
        c = torch.ones(d.shape[2], dtype=_F64, device=d.device)  # one fine-tune is its own average
    else:
        total = torch.zeros(d.shape[2], dtype=_F64, device=d.device)
        for i in range(n):  # pairs with an absent input add cos θ = 0
            for j in range(i + 1, n):
                total = total + _cos(d[i, j], d[i, i], d[j, j])
        c = total / (n_all * (n_all - 1) / 2)
    den = 1.0 + (n_all - 1) * c
    singular = den.abs() < 1e-6
    t = torch.where(singular, 0.0, n_all * c / torch.where(singular, 1.0, den))
    return _combine(m, [w * t for _, w, _, _ in m.inputs], per, policy)


# --- SLERP and NuSLERP -----------------------------------------------------------------


def _interpolate(m: ModuleInputs, per: str, parallel, policy: RankPolicy) -> ModuleResult:
    """s·slerp(t, ΔW₀, ΔW₁) with s = w₀ + w₁, t = w₁/s; lerp where ``parallel(cos θ)``."""
    w0, w1 = m.weights
    s = w0 + w1
    t = w1 / s if s > 0.0 else 0.5
    d = _inner(m, per)
    slot = {i: k for k, (i, _, _, _) in enumerate(m.inputs)}  # input index -> row of d

    def dot(x: int, y: int) -> torch.Tensor:
        if x not in slot or y not in slot:
            return torch.zeros(d.shape[2], dtype=_F64, device=d.device)
        return d[slot[x], slot[y]]

    cos = _cos(dot(0, 1), dot(0, 0), dot(1, 1))
    lerp = parallel(cos)
    theta = torch.acos(torch.where(lerp, 0.0, cos))
    sin = torch.where(lerp, 1.0, torch.sin(theta))
    c0 = torch.where(lerp, 1.0 - t, torch.sin((1.0 - t) * theta) / sin)
    c1 = torch.where(lerp, t, torch.sin(t * theta) / sin)
    by_input = {0: s * c0, 1: s * c1}
    return _combine(m, [by_input[i] for i, _, _, _ in m.inputs], per, policy)


def slerp(m: ModuleInputs, p: Mapping[str, float], policy: RankPolicy) -> ModuleResult:
    return _interpolate(m, "whole", lambda cos: cos.abs() > 0.9995, policy)


def nuslerp(m: ModuleInputs, p: Mapping[str, float], policy: RankPolicy) -> ModuleResult:
    per = "whole" if p["flatten"] else ("columns" if p["row_wise"] else "rows")
    return _interpolate(m, per, lambda cos: (1.0 - cos * cos) <= 1e-16, policy)


# --- the Karcher mean --------------------------------------------------------------------


def karcher(m: ModuleInputs, p: Mapping[str, float], policy: RankPolicy) -> ModuleResult:
    """mergekit's ``karcher_merge_tensors``, with the iterate u = Σⱼ βⱼ ΔWⱼ kept as its coefficients β.

    Every step (the initial weighted mean of the unit directions, the log
    map's tangent Σ αᵢ θᵢ/sin θᵢ (uᵢ − cos θᵢ u), the exp map, the
    renormalisations) is a combination of the updates, so ⟨x, y⟩ = βₓᵀ G β_y
    with G the Gram matrix of the updates gives every dot product and norm.
    """
    tol, max_iter = p["tol"], int(p["max_iter"])
    G = _inner(m, "whole")[:, :, 0].cpu()
    n = G.shape[0]
    norms = [math.sqrt(max(float(G[k, k]), 0.0)) for k in range(n)]
    ws = [w for _, w, _, _ in m.inputs]
    valid = [k for k in range(n) if norms[k] > tol and ws[k] > 0.0]
    beta = torch.zeros(n, dtype=_F64)
    if valid:
        wsum = sum(ws[k] for k in valid)
        alpha = {k: ws[k] / wsum for k in valid}

        def unit(k: int) -> torch.Tensor:
            e = torch.zeros(n, dtype=_F64)
            e[k] = 1.0 / norms[k]
            return e

        def norm(x: torch.Tensor) -> float:
            return math.sqrt(max(float(x @ G @ x), 0.0))

        for k in valid:
            beta += alpha[k] * unit(k)
        mean_norm = norm(beta)
        beta = unit(valid[0]) if mean_norm < tol else beta / mean_norm
        for _ in range(max_iter):
            g_beta = G @ beta
            tangent = torch.zeros(n, dtype=_F64)
            for k in valid:
                c = min(1.0, max(-1.0, float(g_beta[k]) / norms[k]))
                theta = math.acos(c)
                if theta < tol:
                    continue
                tangent += alpha[k] * (theta / math.sin(theta)) * (unit(k) - c * beta)
            tn = norm(tangent)
            if tn < tol:
                break
            beta = math.cos(tn) * beta + math.sin(tn) * (tangent / tn)
            un = norm(beta)
            if un > tol:
                beta = beta / un
    scale = sum(w * nk for w, nk in zip(ws, norms))
    coefs = (scale * beta).to(m.device)
    return _combine(m, [coefs[k] for k in range(n)], "whole", policy)
