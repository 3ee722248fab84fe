"""Model Stock, SLERP, NuSLERP and the Karcher mean agree with dense references and with mergekit's own code.

The references are written from the formulas (docs/merging.md) in float64
numpy on the dense updates, element by element where that is clearer, and
call nothing from ``mfgit.merge``. mfgit computes the same from the factors
(inner products tr(AᵢᵀBᵢᵀBⱼAⱼ), never a dense out×in matrix); where mergekit
has the method, its ``merge_tensors`` on the same dense updates (a base of
zeros: the updates are the task vectors) gives the same result.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from mfgit.errors import MergeError
from mfgit.merge.lowrank import RankPolicy
from mfgit.merge.strategies import Factor, merge_module
from tests.test_merge_strategies import IN, OUT, close, dense64, make_factors, no_rng, product

EXACT = RankPolicy.parse("sum", None)  # these strategies' default: the exact combination, rank Σ rᵢ


def related_factors(n: int = 3, seed: int = 0, out: int = OUT, inp: int = IN) -> list[Factor]:
    """n updates that share a direction (pairwise angles well inside (0°, 90°)), of ranks 3, 5, 7, ..."""
    g = torch.Generator().manual_seed(seed)
    B0, A0 = torch.randn(out, 2, generator=g), torch.randn(2, inp, generator=g)
    fs = []
    for k in range(n):
        Bk, Ak = torch.randn(out, 1 + 2 * k, generator=g), torch.randn(1 + 2 * k, inp, generator=g)
        fs.append(Factor(torch.cat([B0, 0.6 * Bk], 1), torch.cat([A0, Ak], 0)))
    return fs


# --- plain dense references -------------------------------------------------------------


def ref_cos(x: np.ndarray, y: np.ndarray) -> float:
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    return 0.0 if nx == 0.0 or ny == 0.0 else float(np.clip(x @ y / (nx * ny), -1.0, 1.0))


def ref_model_stock(deltas: list[np.ndarray], ws: list[float], filter_wise: bool = False) -> np.ndarray:
    """Jang et al. 2024, Eq. (3) with mergekit's N > 2 rule: t = N·c / (1 + (N−1)·c), c the mean pairwise cosine."""
    n = len(deltas)
    rows = range(deltas[0].shape[0]) if filter_wise else [None]
    out = np.zeros_like(deltas[0])
    total = sum(w * d for w, d in zip(ws, deltas))
    for r in rows:
        vec = [d.ravel() if r is None else d[r] for d in deltas]
        pairs = [ref_cos(vec[i], vec[j]) for i in range(n) for j in range(i + 1, n)]
        c = float(np.mean(pairs)) if pairs else 1.0
        den = 1.0 + (n - 1) * c
        t = 0.0 if abs(den) < 1e-6 else n * c / den
        if r is None:
            out = t * total
        else:
            out[r] = t * total[r]
    return out


def ref_slerp_vec(t: float, a: np.ndarray, b: np.ndarray, parallel) -> np.ndarray:
    c = ref_cos(a, b)
    if parallel(c):
        return (1 - t) * a + t * b
    th = math.acos(c)
    return (math.sin((1 - t) * th) * a + math.sin(t * th) * b) / math.sin(th)


def ref_interpolate(d0, d1, w0, w1, per="whole", parallel=lambda c: abs(c) > 0.9995) -> np.ndarray:
    """(w₀+w₁)·slerp(w₁/(w₀+w₁), ΔW₀, ΔW₁), one angle per update, per row or per column."""
    s = w0 + w1
    t = w1 / s if s > 0 else 0.5
    if per == "whole":
        return s * ref_slerp_vec(t, d0.ravel(), d1.ravel(), parallel).reshape(d0.shape)
    out = np.zeros_like(d0)
    if per == "rows":
        for r in range(d0.shape[0]):
            out[r] = s * ref_slerp_vec(t, d0[r], d1[r], parallel)
    else:
        for c in range(d0.shape[1]):
            out[:, c] = s * ref_slerp_vec(t, d0[:, c], d1[:, c], parallel)
    return out


def nuslerp_parallel(c: float) -> bool:
    return 1 - c * c <= 1e-16


def ref_karcher(deltas: list[np.ndarray], ws: list[float], max_iter: int = 10, tol: float = 1e-5) -> np.ndarray:
    """Weighted Karcher mean on the unit sphere (Buss & Fillmore's fixed point, as mergekit iterates it) × Σ wᵢ‖ΔWᵢ‖."""
    vs = [d.ravel() for d in deltas]
    norms = [float(np.linalg.norm(v)) for v in vs]
    units = [v / n if n > 0 else v * 0 for v, n in zip(vs, norms)]
    valid = [k for k in range(len(vs)) if norms[k] > tol and ws[k] > 0]
    if not valid:
        return np.zeros_like(deltas[0])
    alpha = {k: ws[k] / sum(ws[j] for j in valid) for k in valid}
    u = sum(alpha[k] * units[k] for k in valid)
    u = units[valid[0]] if np.linalg.norm(u) < tol else u / np.linalg.norm(u)
    for _ in range(max_iter):
        tangent = np.zeros_like(u)
        for k in valid:
            c = float(np.clip(u @ units[k], -1, 1))
            th = math.acos(c)
            if th < tol:
                continue
            tangent += alpha[k] * (th / math.sin(th)) * (units[k] - c * u)
        tn = np.linalg.norm(tangent)
        if tn < tol:
            break
        u = math.cos(tn) * u + math.sin(tn) * tangent / tn
        if np.linalg.norm(u) > tol:
            u = u / np.linalg.norm(u)
    return (sum(w * n for w, n in zip(ws, norms)) * u).reshape(deltas[0].shape)


# --- Model Stock ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_equals_dense_reference(n, filter_wise):
    fs = related_factors(n)
    ws = [1.0 / n] * n
    r = merge_module("model_stock", fs, ws, {"filter_wise": filter_wise}, no_rng, EXACT)
    close(product(r), ref_model_stock([dense64(f) for f in fs], ws, filter_wise), rel=1e-6)
    assert r.rank == sum(f.B.shape[1] for f in fs) and r.kept_energy == 1.0


def test_model_stock_weights_replace_the_papers_mean():
    fs = related_factors(3)
    ws = [0.5, 0.3, 0.2]
    r = merge_module("model_stock", fs, ws, {}, no_rng, EXACT)
    close(product(r), ref_model_stock([dense64(f) for f in fs], ws), rel=1e-6)


def test_model_stock_of_one_input_with_weight_one_gives_it_back():
    (f,) = make_factors(ranks=(5,))
    r = merge_module("model_stock", [f], [1.0], {}, no_rng, EXACT)
    close(product(r), dense64(f), rel=1e-6)


def test_model_stock_of_identical_updates_is_their_average():
    (f,) = make_factors(ranks=(4,))
    r = merge_module("model_stock", [f, f, f], [1 / 3] * 3, {}, no_rng, EXACT)
    close(product(r), dense64(f), rel=1e-6)  # cos θ = 1: t = 1


def test_model_stock_pulls_a_module_few_inputs_adapt_towards_the_base():
    # The absent inputs are updates that did not move: cos θ = 0 with everyone, so t = 0.
    fs = make_factors()
    r = merge_module("model_stock", [fs[0], None, None], [1 / 3] * 3, {}, no_rng, EXACT)
    assert np.abs(product(r)).max() == 0.0


# --- SLERP and NuSLERP ----------------------------------------------------------------------


@pytest.mark.parametrize("w0,w1", [(0.5, 0.5), (0.7, 0.3), (0.1, 0.9), (1.0, 1.0), (2.0, 0.5)])
def test_slerp_equals_dense_reference(w0, w1):
    fs = related_factors(2)
    r = merge_module("slerp", fs, [w0, w1], {}, no_rng, EXACT)
    close(product(r), ref_interpolate(dense64(fs[0]), dense64(fs[1]), w0, w1), rel=1e-6)
    assert r.rank == 3 + 5 and r.kept_energy == 1.0


@pytest.mark.parametrize("strategy", ["slerp", "nuslerp"])
def test_interpolation_weights_one_and_zero_give_that_input(strategy):
    fs = related_factors(2)
    close(product(merge_module(strategy, fs, [1.0, 0.0], {}, no_rng, EXACT)), dense64(fs[0]), rel=1e-6)
    close(product(merge_module(strategy, fs, [0.0, 1.0], {}, no_rng, EXACT)), dense64(fs[1]), rel=1e-6)


def test_slerp_of_nearly_parallel_updates_is_the_linear_merge():
    (f,) = make_factors(ranks=(4,))
    g = torch.Generator().manual_seed(3)
    f2 = Factor(f.B * 1.5 + 1e-4 * torch.randn(f.B.shape, generator=g), f.A)  # |cos θ| > 0.9995
    r = merge_module("slerp", [f, f2], [0.6, 0.4], {}, no_rng, EXACT)
    close(product(r), 0.6 * dense64(f) + 0.4 * dense64(f2), rel=1e-6)


def test_slerp_of_two_equal_norm_updates_stays_on_their_sphere():
    fs = related_factors(2)
    d0, d1 = dense64(fs[0]), dense64(fs[1])
    f1 = Factor(fs[1].B * float(np.linalg.norm(d0) / np.linalg.norm(d1)), fs[1].A)
    for t in (0.25, 0.5, 0.8):
        r = merge_module("slerp", [fs[0], f1], [1 - t, t], {}, no_rng, EXACT)
        assert np.linalg.norm(product(r)) == pytest.approx(np.linalg.norm(d0), rel=1e-5)


@pytest.mark.parametrize("flatten,row_wise,per", [(1, 0, "whole"), (0, 0, "rows"), (0, 1, "columns")])
def test_nuslerp_equals_dense_reference(flatten, row_wise, per):
    fs = related_factors(2)
    r = merge_module("nuslerp", fs, [0.35, 0.65], {"flatten": flatten, "row_wise": row_wise}, no_rng, EXACT)
    want = ref_interpolate(dense64(fs[0]), dense64(fs[1]), 0.35, 0.65, per, nuslerp_parallel)
    close(product(r), want, rel=1e-6)


@pytest.mark.parametrize("strategy,params", [("slerp", {}), ("nuslerp", {"flatten": False})])
def test_interpolation_with_an_absent_module_keeps_the_other_update_scaled(strategy, params):
    # A zero update is orthogonal to the other: θ = 90°, so the present one is scaled by sin((1−t)·90°).
    fs = related_factors(2)
    r = merge_module(strategy, [fs[0], None], [0.5, 0.5], params, no_rng, EXACT)
    close(product(r), math.sin(math.pi / 4) * dense64(fs[0]), rel=1e-6)


@pytest.mark.parametrize("strategy", ["slerp", "nuslerp"])
def test_interpolation_takes_exactly_two_inputs_and_no_negative_weight(strategy):
    fs = related_factors(3)
    with pytest.raises(MergeError, match="exactly 2 inputs, got 3"):
        merge_module(strategy, fs, [0.3, 0.3, 0.4], {}, no_rng, EXACT)
    with pytest.raises(MergeError, match="exactly 2 inputs, got 1"):
        merge_module(strategy, fs[:1], [1.0], {}, no_rng, EXACT)
    with pytest.raises(MergeError, match=">= 0"):
        merge_module(strategy, fs[:2], [1.5, -0.5], {}, no_rng, EXACT)


# --- the Karcher mean ----------------------------------------------------------------------


@pytest.mark.parametrize("ws", [[1 / 3] * 3, [0.5, 0.3, 0.2], [1.0, 2.0, 0.0]])
def test_karcher_equals_dense_reference(ws):
    fs = related_factors(3)
    r = merge_module("karcher", fs, ws, {}, no_rng, EXACT)
    close(product(r), ref_karcher([dense64(f) for f in fs], ws), rel=1e-6)


def test_karcher_iteration_limit_and_tolerance_are_the_references():
    fs = related_factors(4, seed=2)
    for max_iter, tol in ((1, 1e-5), (3, 1e-3), (50, 1e-9)):
        r = merge_module("karcher", fs, [0.25] * 4, {"max_iter": max_iter, "tol": tol}, no_rng, EXACT)
        close(product(r), ref_karcher([dense64(f) for f in fs], [0.25] * 4, max_iter, tol), rel=1e-6)


def test_karcher_of_one_input_with_weight_one_gives_it_back():
    (f,) = make_factors(ranks=(5,))
    close(product(merge_module("karcher", [f], [1.0], {}, no_rng, EXACT)), dense64(f), rel=1e-6)


def test_karcher_mean_of_two_equal_norm_updates_is_their_geodesic_midpoint():
    fs = related_factors(2)
    d0, d1 = dense64(fs[0]), dense64(fs[1])
    f1 = Factor(fs[1].B * float(np.linalg.norm(d0) / np.linalg.norm(d1)), fs[1].A)
    mean = product(merge_module("karcher", [fs[0], f1], [0.5, 0.5], {"max_iter": 100, "tol": 1e-9}, no_rng, EXACT))
    mid = product(merge_module("slerp", [fs[0], f1], [0.5, 0.5], {}, no_rng, EXACT))
    close(mean, mid, rel=1e-5)


def test_karcher_refuses_negative_weights():
    with pytest.raises(MergeError, match=">= 0"):
        merge_module("karcher", related_factors(2), [1.0, -0.5], {}, no_rng, EXACT)


# --- exact in factor space ------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["model_stock", "slerp", "nuslerp", "karcher"])
def test_result_is_exact_with_rank_sum_and_optimally_truncated_otherwise(strategy):
    fs = related_factors(2)
    full = product(merge_module(strategy, fs, [0.5, 0.5], {}, no_rng, EXACT))
    r = merge_module(strategy, fs, [0.5, 0.5], {}, no_rng, RankPolicy.parse(3, None))
    S = np.linalg.svd(full, compute_uv=False)
    assert r.rank == 3
    assert r.kept_energy == pytest.approx(float((S[:3] ** 2).sum() / (S**2).sum()), rel=1e-5)
    assert np.linalg.norm(full - product(r)) ** 2 == pytest.approx(float((S[3:] ** 2).sum()), rel=1e-4)


@pytest.mark.parametrize("strategy,params", [("model_stock", {"filter_wise": True}), ("slerp", {}),
                                             ("nuslerp", {"flatten": False, "row_wise": True}), ("karcher", {})])
def test_angles_come_from_the_factors_without_a_dense_matrix(strategy, params):
    # 100000 x 80000 dense would be 32 GB: only the factors' inner products make this possible.
    g = torch.Generator().manual_seed(0)
    fs = [Factor(torch.randn(100_000, 4, generator=g), torch.randn(4, 80_000, generator=g)) for _ in range(2)]
    t = time.perf_counter()
    r = merge_module(strategy, fs, [0.5, 0.5], params, no_rng, EXACT)
    assert time.perf_counter() - t < 10.0
    assert r.rank == 8 and r.B.shape == (100_000, 8)


# --- mergekit's own code on the same updates --------------------------------------------------


@pytest.fixture(scope="module")
def mergekit():
    return pytest.importorskip("mergekit.merge_methods.api")


def _max_diff(mine: np.ndarray, theirs: torch.Tensor) -> float:
    return float(np.abs(mine - theirs.double().numpy()).max())


def _f32(f: Factor) -> torch.Tensor:
    return f.B @ f.A  # the dense update mergekit sees, fp32


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_equals_mergekits(mergekit, filter_wise):
    fs = related_factors(3)
    ds = [_f32(f) for f in fs]
    theirs = mergekit.merge_tensors([torch.zeros_like(ds[0]), *ds], "model_stock", base_index=0,
                                    parameters={"filter_wise": filter_wise})
    mine = product(merge_module("model_stock", fs, [1 / 3] * 3, {"filter_wise": filter_wise}, no_rng, EXACT))
    assert _max_diff(mine, theirs) <= 1e-6 * float(theirs.abs().max())


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("parallel", [False, True])
def test_slerp_equals_mergekits_slerp_of_the_updates(mergekit, t, parallel):
    fs = related_factors(2)
    if parallel:  # mergekit's lerp branch, |cos θ| > 0.9995
        fs[1] = Factor(fs[0].B * 0.7 + 1e-4 * fs[1].B[:, :2].sum(1, keepdim=True), fs[0].A)
    ds = [_f32(f) for f in fs]
    # The first tensor is mergekit's base, v0; merge_tensors SLERPs whole tensors (not per row).
    theirs = mergekit.merge_tensors(ds, "slerp", base_index=0, parameters={"t": t})
    mine = product(merge_module("slerp", fs, [1 - t, t], {}, no_rng, EXACT))
    assert _max_diff(mine, theirs) <= 1e-6 * float(theirs.abs().max())


@pytest.mark.parametrize("flatten,row_wise", [(True, False), (False, False), (False, True)])
def test_nuslerp_equals_mergekits_with_a_base(mergekit, flatten, row_wise):
    fs = related_factors(2)
    ds = [_f32(f) for f in fs]
    theirs = mergekit.merge_tensors([torch.zeros_like(ds[0]), *ds], "nuslerp", base_index=0,
                                    parameters={"weight": [0.7, 0.3], "nuslerp_flatten": flatten,
                                                "nuslerp_row_wise": row_wise})
    mine = product(merge_module("nuslerp", fs, [0.7, 0.3], {"flatten": flatten, "row_wise": row_wise}, no_rng, EXACT))
    assert _max_diff(mine, theirs) <= 1e-6 * float(theirs.abs().max())


@pytest.mark.parametrize("n", [2, 3, 5])
def test_karcher_equals_mergekits(mergekit, n):
    fs = related_factors(n, seed=n)
    ds = [_f32(f) for f in fs]
    theirs = mergekit.merge_tensors(ds, "karcher", parameters={"max_iter": 10, "tol": 1e-5})
    mine = product(merge_module("karcher", fs, [1 / n] * n, {}, no_rng, EXACT))
    assert _max_diff(mine, theirs) <= 1e-6 * float(theirs.abs().max())


def test_mergekits_slerp_of_full_weights_is_nearly_linear_and_differs_from_slerp_of_the_updates(mergekit):
    """Why mfgit's slerp acts on the updates: on full weights the shared base dominates the angle."""
    fs = related_factors(2)
    ds = [_f32(f) for f in fs]
    # Base weights a hundred times the updates: the full weights are 0.0005 rad apart, below mergekit's threshold.
    base = 1000.0 * torch.randn(OUT, IN, generator=torch.Generator().manual_seed(9))
    full = mergekit.merge_tensors([base + ds[0], base + ds[1]], "slerp", base_index=0, parameters={"t": 0.5})
    linear = 0.5 * (ds[0] + ds[1]).double()
    np.testing.assert_allclose((full - base).double().numpy(), linear.numpy(), atol=1e-3)
    mine = product(merge_module("slerp", fs, [0.5, 0.5], {}, no_rng, EXACT))
    assert np.abs(mine - linear.numpy()).max() > 0.02 * np.abs(mine).max()  # the updates are 32° apart
