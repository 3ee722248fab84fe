"""Core Space and KnOTS merges agree with plain dense references of their papers' formulas.

The references build the shared bases from the dense updates with numpy
(float64), project every ΔWᵢ, run the element-wise steps of
tests/test_merge_strategies.py on the coordinates and map back; they call
nothing from ``mfgit.merge``. The contract shared with the implementation is
documented in ``mfgit/merge/subspace.py``: each update is taken in its
canonical form (its thin SVD), the coordinates are rounded to fp32 before
the element-wise step, and each present input i gets one
``torch.rand(coordinates' shape, generator=rng(i), dtype=torch.float32)`` draw.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mfgit.merge.lowrank import RankPolicy
from mfgit.merge.strategies import Factor, merge_module
from tests.test_merge_strategies import (
    IN,
    OUT,
    close,
    dense64,
    make_factors,
    make_rng,
    no_rng,
    product,
    ref_dare,
    ref_elect_mean,
    ref_magprune,
    ref_top,
)

FULL = RankPolicy.parse(min(OUT, IN), None)
WS = [0.5, 0.3, 0.2]


# --- plain dense references -------------------------------------------------------------


def rank_of(S: np.ndarray) -> int:
    return int((S > S[0] * 1e-6).sum()) if S.size and S[0] > 0 else 0


def left_basis(X: np.ndarray) -> np.ndarray:
    U, S, _ = np.linalg.svd(X, full_matrices=False)
    return U[:, : rank_of(S)]


def f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32).astype(np.float64)


def ref_core_bases(deltas: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Core Space reference bases: left singular vectors of the stacked B's, right ones of the stacked A's.

    Each update in its balanced canonical form B = UΣ^½, A = Σ^½Vᵀ, so the
    bases are those of [U₁Σ₁^½ | …] and [V₁Σ₁^½ | …].
    """
    bs, as_ = [], []
    for d in deltas:
        U, S, Vt = np.linalg.svd(d, full_matrices=False)
        k = rank_of(S)
        bs.append(U[:, :k] * np.sqrt(S[:k]))
        as_.append(Vt[:k].T * np.sqrt(S[:k]))
    return left_basis(np.hstack(bs)), left_basis(np.hstack(as_))


def ref_core(deltas, step, lam=1.0):
    """ΔW = U_B · λ·f(M₁ … M_T) · V_Aᵀ with Mᵢ = U_Bᵀ ΔWᵢ V_A (Panariello et al. 2025)."""
    UB, VA = ref_core_bases(deltas)
    cores = [f32(UB.T @ d @ VA) for d in deltas]
    return UB @ (lam * step(cores)) @ VA.T


def ref_knots(deltas, step, lam=1.0):
    """[ΔW₁ … ΔW_T] = U Σ [V₁ᵀ … V_Tᵀ]; ΔW = U · λ·f(ΣV₁ᵀ … ΣV_Tᵀ) (Stoica et al. 2025, as their code merges)."""
    U, S, Vt = np.linalg.svd(np.hstack(deltas), full_matrices=False)
    k = rank_of(S)
    n = deltas[0].shape[1]
    coords = [f32(np.diag(S[:k]) @ Vt[:k, i * n : (i + 1) * n]) for i in range(len(deltas))]
    return U[:, :k] @ (lam * step(coords))


def draws(rng, shape, n):
    return [torch.rand(shape, generator=rng(i), dtype=torch.float32).double().numpy() for i in range(n)]


def steps(strategy: str, params: dict, ws: list[float], rng):
    """The element-wise step of the dense strategy, f(coordinates) -> merged coordinates."""
    base = strategy.split("_", 1)[1]
    if base == "ties":
        return lambda cs: ref_elect_mean([ref_top(c, params["density"]) for c in cs], ws)
    if base == "dare_linear":
        return lambda cs: sum(w * ref_dare(c, u, params["drop_rate"])
                              for w, c, u in zip(ws, cs, draws(rng, cs[0].shape, len(cs))))
    if base == "dare_ties":
        return lambda cs: ref_elect_mean([ref_dare(c, u, params["drop_rate"])
                                          for c, u in zip(cs, draws(rng, cs[0].shape, len(cs)))], ws)
    if base == "breadcrumbs":
        def crumbs(cs):
            out = np.zeros_like(cs[0])
            for w, c in zip(ws, cs):
                flat = c.ravel()
                order = np.argsort(-np.abs(flat), kind="stable")
                n = flat.size
                keep = np.zeros(n, dtype=bool)
                top, bot = int(np.floor(params["gamma"] * n + 0.5)), int(np.floor(params["beta"] * n + 0.5))
                keep[order[top : n - bot]] = True
                out += w * np.where(keep, flat, 0.0).reshape(c.shape)
            return out
        return crumbs
    if base == "della":
        return lambda cs: ref_elect_mean([ref_magprune(c, u, params["drop_rate"], params["epsilon"])
                                          for c, u in zip(cs, draws(rng, cs[0].shape, len(cs)))], ws)
    raise AssertionError(strategy)


CASES = [
    ("core_ties", {"density": 0.3, "lambda": 1.2}),
    ("core_ties", {"density": 1.0, "lambda": 1.0}),
    ("core_dare_linear", {"drop_rate": 0.5, "lambda": 0.8}),
    ("core_dare_ties", {"drop_rate": 0.4, "lambda": 1.0}),
    ("core_breadcrumbs", {"beta": 0.6, "gamma": 0.05, "lambda": 1.5}),
    ("core_della", {"drop_rate": 0.3, "epsilon": 0.1, "lambda": 1.1}),
    ("knots_ties", {"density": 0.2, "lambda": 1.0}),
    ("knots_ties", {"density": 0.7, "lambda": 0.6}),
    ("knots_dare_linear", {"drop_rate": 0.3, "lambda": 1.0}),
    ("knots_dare_ties", {"drop_rate": 0.1, "lambda": 0.7}),
]


@pytest.mark.parametrize("strategy,params", CASES, ids=[f"{s}-{i}" for i, (s, _) in enumerate(CASES)])
def test_subspace_merge_equals_dense_reference(strategy, params):
    fs, rng = make_factors(ranks=(3, 5, 4)), make_rng(17)
    r = merge_module(strategy, fs, WS, params, rng, FULL)
    deltas = [dense64(f) for f in fs]
    ref = ref_core if strategy.startswith("core_") else ref_knots
    close(product(r), ref(deltas, steps(strategy, params, WS, rng), params["lambda"]), rel=1e-5)


# --- properties ------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["core_dare_linear", "knots_dare_linear"])
def test_projection_is_lossless_so_a_linear_merge_is_the_full_space_one(strategy):
    fs = make_factors(ranks=(2, 6, 3, 5))  # mixed ranks
    ws = [0.4, -0.3, 0.2, 0.7]
    r = merge_module(strategy, fs, ws, {"drop_rate": 0.0, "lambda": 1.5}, make_rng(1), FULL)
    close(product(r), 1.5 * sum(w * dense64(f) for w, f in zip(ws, fs)), rel=1e-5)
    assert r.kept_energy == pytest.approx(1.0)


@pytest.mark.parametrize("strategy,params", [
    ("core_ties", {"density": 1.0}), ("core_dare_linear", {"drop_rate": 0.0}), ("core_dare_ties", {"drop_rate": 0.0}),
    ("core_breadcrumbs", {"beta": 0.0, "gamma": 0.0}), ("core_della", {"drop_rate": 0.0, "epsilon": 0.0}),
    ("knots_ties", {"density": 1.0}), ("knots_dare_linear", {"drop_rate": 0.0}),
    ("knots_dare_ties", {"drop_rate": 0.0}),
])
def test_one_input_with_weight_one_gives_back_its_update(strategy, params):
    (f,) = make_factors(ranks=(5,))
    r = merge_module(strategy, [f], [1.0], params, make_rng(2), RankPolicy.parse(None, None))
    assert r.rank == 5
    close(product(r), dense64(f), rel=1e-5)


@pytest.mark.parametrize("strategy", ["core_ties", "core_della", "core_breadcrumbs", "knots_ties", "knots_dare_ties"])
def test_result_does_not_depend_on_how_an_adapter_is_factorised(strategy):
    fs = make_factors()
    g = torch.Generator().manual_seed(4)
    G = torch.randn(5, 5, generator=g) + 3 * torch.eye(5)
    refactored = [fs[0], Factor(fs[1].B @ G, torch.linalg.solve(G, fs[1].A)), fs[2]]  # the same update
    a = merge_module(strategy, fs, WS, {}, make_rng(6), FULL)
    b = merge_module(strategy, refactored, WS, {}, make_rng(6), FULL)
    close(product(a), product(b), rel=1e-4)


def test_core_result_lies_in_the_spans_of_the_stacked_factors():
    # The paper's bases come from the raw stacks [B₁ … B_T] and [A₁; …; A_T]; mfgit's span the same spaces.
    fs = make_factors(ranks=(2, 3, 2))
    r = product(merge_module("core_ties", fs, WS, {"density": 0.3}, no_rng, FULL))
    Qb = np.linalg.qr(np.hstack([f.B.double().numpy() for f in fs]))[0]
    Qa = np.linalg.qr(np.hstack([f.A.double().numpy().T for f in fs]))[0]
    close(Qb @ (Qb.T @ r @ Qa) @ Qa.T, r, rel=1e-6)
    assert np.linalg.matrix_rank(r, tol=1e-6 * np.abs(r).max()) <= 7


def test_tsv_and_iso_c_on_the_cores_are_mfgits_tsv_and_iso_c():
    """TSV-M and Iso-C depend on the updates only through SVDs, which the orthonormal bases preserve."""
    fs = make_factors()
    deltas = [dense64(f) for f in fs]
    UB, VA = ref_core_bases(deltas)
    cores = [UB.T @ d @ VA for d in deltas]
    K = 6
    k = K // 3
    us, ss, vs = [], [], []
    for w, c in zip(WS, cores):
        U, S, Vt = np.linalg.svd(c)
        us.append(U[:, :k])
        ss.append(w * S[:k])
        vs.append(Vt[:k].T)
    P, _, Qt = np.linalg.svd(np.hstack(us), full_matrices=False)
    P2, _, Q2t = np.linalg.svd(np.hstack(vs), full_matrices=False)
    tsv_core = UB @ ((P @ Qt) @ np.diag(np.concatenate(ss)) @ (P2 @ Q2t).T) @ VA.T
    close(product(merge_module("tsv", fs, WS, {}, no_rng, RankPolicy.parse(K, None))), tsv_core, rel=1e-4)
    U, S, Vt = np.linalg.svd(sum(w * c for w, c in zip(WS, cores)))
    iso_core = UB @ (S.mean() * U @ Vt) @ VA.T
    close(product(merge_module("iso_c", fs, WS, {}, no_rng, FULL)), iso_core, rel=1e-4)


@pytest.mark.parametrize("strategy", ["core_ties", "knots_ties"])
def test_refactorisation_keeps_the_optimal_rank_with_exact_energy(strategy):
    fs = make_factors()
    full = product(merge_module(strategy, fs, WS, {}, no_rng, FULL))
    r = merge_module(strategy, fs, WS, {}, no_rng, RankPolicy.parse(None, None))  # max input rank: 5
    S = np.linalg.svd(full, compute_uv=False)
    assert r.rank == 5
    assert r.kept_energy == pytest.approx(float((S[:5] ** 2).sum() / (S**2).sum()), rel=1e-5)
    assert np.linalg.norm(full - product(r)) ** 2 == pytest.approx(float((S[5:] ** 2).sum()), rel=1e-4)


@pytest.mark.parametrize("strategy", ["core_ties", "core_della", "knots_dare_ties"])
def test_subspace_merges_never_form_the_dense_update(strategy):
    # 100000 x 80000 dense would be 32 GB: the cores are 12 x 12, KnOTS' coordinates 12 x 80000.
    g = torch.Generator().manual_seed(0)
    fs = [Factor(torch.randn(100_000, 4, generator=g), torch.randn(4, 80_000, generator=g)) for _ in range(3)]
    t = time.perf_counter()
    r = merge_module(strategy, fs, WS, {}, make_rng(3), RankPolicy.parse(8, None))
    assert time.perf_counter() - t < 20.0
    assert r.B.shape == (100_000, 8) and 0.0 < r.kept_energy <= 1.0
