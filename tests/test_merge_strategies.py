"""Merge strategies agree with plain dense reference implementations of their papers.

Every reference below is written from the paper's formula, in float64 numpy,
element by element where that is clearer, and calls nothing from
``mfgit.merge``. The only thing shared with the implementation is the
contract documented in ``mfgit/merge/strategies.py``: the dense ΔWᵢ is the
fp32 product Bᵢ @ Aᵢ (so magnitude orderings agree), each present input i gets
one ``torch.rand((out, in), generator=rng(i), dtype=torch.float32)`` draw, and
an element is dropped where that draw is below its drop probability.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mfgit.errors import MergeError
from mfgit.merge.lowrank import (
    RankPolicy,
    canonical_signs,
    factorize_dense,
    lowrank_svd,
    truncate_factors,
)
from mfgit.merge.strategies import (
    STRATEGIES,
    Factor,
    ModuleResult,
    merge_module,
    resolve_params,
)

OUT, IN = 24, 20
FULL = RankPolicy.parse(min(OUT, IN), None)  # full output rank: the merge is not truncated
RANDOM = ("dare_linear", "dare_ties", "della", "core_dare_linear", "core_dare_ties", "core_della",
          "knots_dare_linear", "knots_dare_ties")
ELEMENTWISE = ("ties", "dare_linear", "dare_ties", "breadcrumbs", "della", "magnitude_prune")
TWO = ("slerp", "nuslerp")  # strategies of exactly two inputs


def arity(strategy: str, items: list) -> list:
    """The first two of `items` for the strategies of exactly two inputs, else all of them."""
    return items[:2] if strategy in TWO else items


# --- fixtures -------------------------------------------------------------------


def make_factors(ranks=(3, 5, 4), seed=0, out=OUT, inp=IN) -> list[Factor]:
    g = torch.Generator().manual_seed(seed)
    return [Factor(torch.randn(out, r, generator=g), torch.randn(r, inp, generator=g)) for r in ranks]


def make_rng(seed: int):
    """The engine's contract: a fresh CPU generator per input, seeded from (seed, input)."""

    def rng(i: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed * 1000 + i)

    return rng


def no_rng(i: int) -> torch.Generator:  # for deterministic strategies
    raise AssertionError("a deterministic strategy drew random numbers")


def dense(f: Factor) -> np.ndarray:
    """ΔWᵢ as the implementation sees it: the fp32 product, then float64."""
    return (f.B @ f.A).double().numpy()


def dense64(f: Factor) -> np.ndarray:
    return f.B.double().numpy() @ f.A.double().numpy()


def product(r: ModuleResult) -> np.ndarray:
    return (r.B.double() @ r.A.double()).numpy()


def uniform(rng, i: int) -> np.ndarray:
    return torch.rand((OUT, IN), generator=rng(i), dtype=torch.float32).double().numpy()


def close(actual: np.ndarray, expected: np.ndarray, rel: float = 2e-5) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * scale)


# --- plain dense references (from the papers) -------------------------------------


def n_of(frac: float, n: int) -> int:
    return max(0, min(n, int(math.floor(frac * n + 0.5))))


def ref_top(t: np.ndarray, density: float) -> np.ndarray:
    """TIES 'trim': keep the top-k% entries by magnitude, zero the rest."""
    flat = t.ravel()
    order = np.argsort(-np.abs(flat), kind="stable")
    keep = np.zeros(flat.size, dtype=bool)
    keep[order[: n_of(density, flat.size)]] = True
    return np.where(keep, flat, 0.0).reshape(t.shape)


def ref_elect_mean(taus: list[np.ndarray], ws: list[float]) -> np.ndarray:
    """TIES 'elect' + 'disjoint merge', weighted, element by element (positive weights)."""
    out = np.zeros_like(taus[0])
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            gamma = np.sign(sum(w * t[r, c] for w, t in zip(ws, taus)))
            agree = [(w, t[r, c]) for w, t in zip(ws, taus) if gamma != 0 and np.sign(t[r, c]) == gamma]
            den = sum(w for w, _ in agree)
            out[r, c] = sum(w * v for w, v in agree) / den if den > 0 else 0.0
    return out


def ref_ties(fs, ws, density, lam):
    return lam * ref_elect_mean([ref_top(dense(f), density) for f in fs], ws)


def ref_dare(t: np.ndarray, u: np.ndarray, p: float) -> np.ndarray:
    """DARE: drop with probability p (u < p), rescale survivors by 1/(1-p)."""
    return np.where(u < p, 0.0, t / (1.0 - p))


def ref_dare_linear(fs, ws, p, lam, rng):
    return lam * sum(w * ref_dare(dense(f), uniform(rng, i), p) for i, (f, w) in enumerate(zip(fs, ws)))


def ref_dare_ties(fs, ws, p, lam, rng):
    taus = [ref_dare(dense(f), uniform(rng, i), p) for i, f in enumerate(fs)]
    return lam * ref_elect_mean(taus, ws)


def ref_breadcrumbs(fs, ws, beta, gamma, lam):
    """Model Breadcrumbs: mask the top-gamma and bottom-beta fractions by magnitude, sum."""
    total = np.zeros((OUT, IN))
    for f, w in zip(fs, ws):
        t = dense(f).ravel()
        order = np.argsort(-np.abs(t), kind="stable")  # largest first
        n = t.size
        keep = np.zeros(n, dtype=bool)
        keep[order[n_of(gamma, n) : n - n_of(beta, n)]] = True
        total += w * np.where(keep, t, 0.0).reshape(OUT, IN)
    return lam * total


def ref_magprune(t: np.ndarray, u: np.ndarray, p: float, eps: float) -> np.ndarray:
    """DELLA MAGPRUNE, row by row: rank by magnitude, drop prob p+eps (smallest) .. p-eps (largest)."""
    out = np.zeros_like(t)
    cols = t.shape[1]
    for r in range(t.shape[0]):
        order = np.argsort(np.abs(t[r]), kind="stable")
        rank = np.empty(cols)
        rank[order] = np.arange(cols)
        for c in range(cols):
            pk = p + eps - 2 * eps * rank[c] / (cols - 1)
            out[r, c] = 0.0 if u[r, c] < pk else t[r, c] / (1 - pk)
    return out


def ref_della(fs, ws, p, eps, lam, rng):
    taus = [ref_magprune(dense(f), uniform(rng, i), p, eps) for i, f in enumerate(fs)]
    return lam * ref_elect_mean(taus, ws)


def ref_magnitude_prune(fs, ws, density, lam):
    return lam * sum(w * ref_top(dense(f), density) for f, w in zip(fs, ws))


def ref_tsv(fs, ws, K, alpha):
    """TSV-Merge: top ⌊K/n⌋ triplets per task, polar-orthogonalise U_cat and V_cat."""
    n = len(fs)
    k = max(1, K // n)
    Us, Ss, Vs = [], [], []
    for f, w in zip(fs, ws):
        U, S, Vt = np.linalg.svd(dense64(f), full_matrices=False)
        m = min(k, int((S > S[0] * 1e-6).sum()))
        Us.append(U[:, :m])
        Ss.append(w * S[:m])
        Vs.append(Vt[:m].T)
    Uc, Sc, Vc = np.hstack(Us), np.concatenate(Ss), np.hstack(Vs)
    P, _, Qt = np.linalg.svd(Uc, full_matrices=False)
    P2, _, Q2t = np.linalg.svd(Vc, full_matrices=False)
    return alpha * (P @ Qt) @ np.diag(Sc) @ (P2 @ Q2t).T


def ref_iso_c(fs, ws, alpha, K=None):
    """Iso-C: SVD of the task-arithmetic sum, every kept singular value replaced by their mean."""
    M = sum(w * dense64(f) for f, w in zip(fs, ws))
    U, S, Vt = np.linalg.svd(M, full_matrices=False)
    r0 = int((S > S[0] * 1e-6).sum())
    sbar = S[:r0].mean()
    r = r0 if K is None else min(K, r0)
    return alpha * sbar * U[:, :r] @ Vt[:r]


# --- identities ---------------------------------------------------------------------


def test_one_input_with_weight_one_gives_back_its_update():
    (f,) = make_factors(ranks=(5,))
    for strategy in ("linear", "task_arithmetic", "svd"):
        r = merge_module(strategy, [f], [1.0], {}, no_rng, RankPolicy.parse(None, None))
        assert r.rank == 5
        assert r.kept_energy == pytest.approx(1.0)
        close(product(r), dense64(f))


def test_weights_one_zero_give_the_first_input():
    fs = make_factors(ranks=(4, 6))
    r = merge_module("linear", fs, [1.0, 0.0], {}, no_rng, RankPolicy.parse("sum", None))
    close(product(r), dense64(fs[0]))
    r = merge_module("linear", fs, [1.0, 0.0], {}, no_rng, RankPolicy.parse(None, None))
    close(product(r), dense64(fs[0]))


@pytest.mark.parametrize("strategy", ["linear", "svd", "ties", "magnitude_prune", "breadcrumbs", "iso_c", "tsv"])
def test_weight_minus_one_negates(strategy):
    (f,) = make_factors(ranks=(4,))
    plus = merge_module(strategy, [f], [1.0], {}, no_rng, FULL)
    minus = merge_module(strategy, [f], [-1.0], {}, no_rng, FULL)
    close(product(minus), -product(plus))


def test_linear_sum_policy_is_the_exact_weighted_sum():
    fs = make_factors(ranks=(3, 5, 4, 6))
    ws = [0.4, -0.3, 0.2, 0.7]
    r = merge_module("linear", fs, ws, {"lambda": 1.5}, no_rng, RankPolicy.parse("sum", None))
    assert r.rank == 3 + 5 + 4 + 6
    assert r.kept_energy == 1.0
    expected = 1.5 * sum(w * dense64(f) for f, w in zip(fs, ws))
    close(product(r), expected, rel=1e-6)


@pytest.mark.parametrize("rank", [1, 4, 9, 12])
def test_svd_equals_truncated_svd_of_the_dense_sum(rank):
    fs = make_factors(ranks=(3, 5, 4))
    ws = [0.5, 0.3, 0.2]
    r = merge_module("svd", fs, ws, {}, no_rng, RankPolicy.parse(rank, None))
    M = torch.from_numpy(sum(w * dense64(f) for f, w in zip(fs, ws)))
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    expected = (U[:, :rank] * S[:rank]) @ Vh[:rank]
    assert r.rank == rank
    close(product(r), expected.numpy(), rel=1e-5)
    assert r.kept_energy == pytest.approx(float((S[:rank] ** 2).sum() / (S**2).sum()), rel=1e-5)


def test_energy_policy_keeps_the_smallest_rank_reaching_the_energy():
    fs = make_factors(ranks=(3, 5, 4))
    ws = [0.5, 0.3, 0.2]
    M = torch.from_numpy(sum(w * dense64(f) for f, w in zip(fs, ws)))
    S = torch.linalg.svdvals(M)
    cum = torch.cumsum(S**2, 0) / (S**2).sum()
    for energy in (0.5, 0.9, 0.99, 1.0):
        r = merge_module("svd", fs, ws, {}, no_rng, RankPolicy.parse(None, energy))
        expected_rank = int((cum < energy - 1e-9).sum()) + 1
        assert r.rank == min(expected_rank, 12)
        assert r.kept_energy >= energy - 1e-6


# --- element-wise strategies vs dense references -------------------------------------


WS = [0.5, 0.3, 0.2]


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_equals_dense_reference(density):
    fs = make_factors()
    r = merge_module("ties", fs, WS, {"density": density, "lambda": 1.3}, no_rng, FULL)
    close(product(r), ref_ties(fs, WS, density, 1.3))


def test_ties_with_equal_weights_is_the_papers_unweighted_disjoint_mean():
    fs = make_factors()
    ws = [1 / 3] * 3
    r = merge_module("ties", fs, ws, {"density": 0.3}, no_rng, FULL)
    trimmed = [ref_top(dense(f), 0.3) for f in fs]
    expected = np.zeros((OUT, IN))
    for rr in range(OUT):
        for c in range(IN):
            gamma = np.sign(sum(t[rr, c] for t in trimmed))
            vals = [t[rr, c] for t in trimmed if gamma != 0 and np.sign(t[rr, c]) == gamma]
            expected[rr, c] = np.mean(vals) if vals else 0.0
    close(product(r), expected)


@pytest.mark.parametrize("p", [0.0, 0.5, 0.9])
def test_dare_linear_equals_dense_reference(p):
    fs, rng = make_factors(), make_rng(7)
    r = merge_module("dare_linear", fs, WS, {"drop_rate": p, "lambda": 0.8}, rng, FULL)
    close(product(r), ref_dare_linear(fs, WS, p, 0.8, rng))


def test_dare_ties_equals_dense_reference():
    fs, rng = make_factors(), make_rng(11)
    r = merge_module("dare_ties", fs, WS, {"drop_rate": 0.6}, rng, FULL)
    close(product(r), ref_dare_ties(fs, WS, 0.6, 1.0, rng))


@pytest.mark.parametrize("beta,gamma", [(0.85, 0.01), (0.5, 0.1), (0.0, 0.0)])
def test_breadcrumbs_equals_dense_reference(beta, gamma):
    fs = make_factors()
    r = merge_module("breadcrumbs", fs, WS, {"beta": beta, "gamma": gamma, "lambda": 2.0}, no_rng, FULL)
    close(product(r), ref_breadcrumbs(fs, WS, beta, gamma, 2.0))


@pytest.mark.parametrize("p,eps", [(0.3, 0.14), (0.5, 0.5 - 1e-3), (0.7, 0.0)])
def test_della_equals_dense_reference(p, eps):
    fs, rng = make_factors(), make_rng(3)
    r = merge_module("della", fs, WS, {"drop_rate": p, "epsilon": eps, "lambda": 1.1}, rng, FULL)
    close(product(r), ref_della(fs, WS, p, eps, 1.1, rng))


@pytest.mark.parametrize("density", [0.1, 0.2, 1.0])
def test_magnitude_prune_equals_dense_reference(density):
    fs = make_factors()
    r = merge_module("magnitude_prune", fs, WS, {"density": density}, no_rng, FULL)
    close(product(r), ref_magnitude_prune(fs, WS, density, 1.0))


@pytest.mark.parametrize("strategy", ELEMENTWISE)
def test_elementwise_result_is_refactorised_to_the_policy_rank_with_honest_energy(strategy):
    fs, rng = make_factors(), make_rng(5)
    full = product(merge_module(strategy, fs, WS, {}, rng, FULL))
    r = merge_module(strategy, fs, WS, {}, rng, RankPolicy.parse(None, None))  # max input rank
    assert r.rank == 5
    S = np.linalg.svd(full, compute_uv=False)
    assert r.kept_energy == pytest.approx(float((S[:5] ** 2).sum() / (S**2).sum()), rel=1e-4)
    r = merge_module(strategy, fs, WS, {}, rng, RankPolicy.parse("sum", None))
    assert r.rank == 12


# --- newer low-rank methods vs dense references ---------------------------------------


@pytest.mark.parametrize("K", [20, 6, 12])
def test_tsv_equals_dense_reference(K):
    fs = make_factors()
    r = merge_module("tsv", fs, WS, {"alpha": 0.9}, no_rng, RankPolicy.parse(K, None))
    close(product(r), ref_tsv(fs, WS, K, 0.9), rel=1e-4)
    assert r.rank <= K


def test_tsv_of_orthogonal_tasks_is_their_weighted_sum():
    # Tasks living in orthogonal row and column spaces do not interfere: TSV-M is then task arithmetic.
    g = torch.Generator().manual_seed(1)
    Q1 = torch.linalg.qr(torch.randn(OUT, OUT, generator=g))[0]
    Q2 = torch.linalg.qr(torch.randn(IN, IN, generator=g))[0]
    fs = [
        Factor(Q1[:, 0:3] * torch.tensor([3.0, 2.0, 1.0]), Q2[:, 0:3].T.contiguous()),
        Factor(Q1[:, 3:7] * torch.tensor([4.0, 1.5, 1.0, 0.5]), Q2[:, 3:7].T.contiguous()),
    ]
    # K = 8 gives each of the two tasks ⌊8/2⌋ = 4 triplets, all they have.
    r = merge_module("tsv", fs, [0.6, 0.4], {}, no_rng, RankPolicy.parse(8, None))
    assert r.rank == 7
    close(product(r), 0.6 * dense64(fs[0]) + 0.4 * dense64(fs[1]), rel=1e-5)


@pytest.mark.parametrize("K", [None, 4])
def test_iso_c_equals_dense_reference(K):
    fs = make_factors()
    policy = FULL if K is None else RankPolicy.parse(K, None)
    r = merge_module("iso_c", fs, WS, {"alpha": 1.4}, no_rng, policy)
    close(product(r), ref_iso_c(fs, WS, 1.4, K), rel=1e-4)
    S = np.linalg.svd(product(r), compute_uv=False)
    assert np.allclose(S[: r.rank], S[0], rtol=1e-4)  # the spectrum is flat
    assert r.kept_energy == pytest.approx(1.0 if K is None else K / 12)


# --- absent modules, determinism, randomness ---------------------------------------------


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_absent_module_equals_a_zero_update(strategy):
    fs = make_factors(ranks=(3, 5, 4))
    zero = Factor(torch.zeros(OUT, 5), torch.zeros(5, IN))
    rng = make_rng(13)
    ws = arity(strategy, [0.5, 0.3, 0.2])
    a = merge_module(strategy, arity(strategy, [fs[0], None, fs[2]]), ws, {}, rng, FULL)
    b = merge_module(strategy, arity(strategy, [fs[0], zero, fs[2]]), ws, {}, rng, FULL)
    close(product(a), product(b), rel=1e-5)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_same_call_twice_is_bit_identical(strategy):
    fs, ws = arity(strategy, make_factors()), arity(strategy, WS)
    policy = RankPolicy.parse(None, None)
    a = merge_module(strategy, fs, ws, {}, make_rng(21), policy)
    b = merge_module(strategy, fs, ws, {}, make_rng(21), policy)
    assert torch.equal(a.B, b.B) and torch.equal(a.A, b.A)
    assert a.rank == b.rank and a.kept_energy == b.kept_energy


@pytest.mark.parametrize("strategy", RANDOM)
def test_a_different_seed_gives_a_different_result(strategy):
    fs = make_factors()
    a = merge_module(strategy, fs, WS, {}, make_rng(1), FULL)
    b = merge_module(strategy, fs, WS, {}, make_rng(2), FULL)
    assert not np.allclose(product(a), product(b))


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_generators_are_used_once_per_present_input_and_only_by_random_strategies(strategy):
    fs = make_factors()
    calls: list[int] = []

    def rng(i: int) -> torch.Generator:
        calls.append(i)
        return torch.Generator().manual_seed(i)

    state = torch.random.get_rng_state()
    merge_module(strategy, arity(strategy, [None, fs[0], fs[1], fs[2]]), arity(strategy, [0.4, 0.1, 0.3, 0.2]), {},
                 rng, FULL)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert calls == ([1, 2, 3] if strategy in RANDOM else [])


def test_dare_drop_rate_drops_that_fraction_of_elements():
    (f,) = make_factors(ranks=(6,), out=200, inp=150)
    r = merge_module("dare_linear", [f], [1.0], {"drop_rate": 0.7}, make_rng(4), RankPolicy.parse(150, None))
    zero = np.isclose(product(r), 0.0, atol=1e-4).mean()
    assert 0.67 < zero < 0.73


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_cpu_and_gpu_give_the_same_merge(strategy):
    fs, ws = arity(strategy, make_factors()), arity(strategy, WS)
    gpu = [Factor(f.B.cuda(), f.A.cuda()) for f in fs]
    a = merge_module(strategy, fs, ws, {}, make_rng(8), FULL)
    b = merge_module(strategy, gpu, ws, {}, make_rng(8), FULL)
    assert b.B.is_cuda and b.rank == a.rank
    close(product(ModuleResult(b.B.cpu(), b.A.cpu(), b.rank, b.kept_energy)), product(a), rel=1e-4)


# --- low-rank primitives ------------------------------------------------------------------


@pytest.mark.parametrize("rank,energy", [(1, None), (3, None), (7, None), (None, None), (None, 0.8), (2, 0.99)])
def test_truncate_factors_equals_factorize_dense_of_the_product(rank, energy):
    g = torch.Generator().manual_seed(2)
    B, A = torch.randn(30, 7, generator=g), torch.randn(7, 25, generator=g)
    Bt, At, kt = truncate_factors(B, A, rank, energy)
    Bd, Ad, kd = factorize_dense(B @ A, rank, energy)
    if rank is None and energy is None:  # uncapped: rank min(out, in, r) vs min(out, in)
        assert Bt.shape == (30, 7) and Bd.shape == (30, 25)
    else:
        assert Bt.shape == Bd.shape and At.shape == Ad.shape
    np.testing.assert_allclose((Bt @ At).numpy(), (Bd @ Ad).numpy(), rtol=1e-4, atol=1e-4)
    assert kt == pytest.approx(kd, rel=1e-5)
    # balanced split: both factors carry √σ
    np.testing.assert_allclose(Bt.norm(dim=0).numpy(), At.norm(dim=1).numpy(), rtol=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    out=st.integers(1, 12),
    inp=st.integers(1, 12),
    r=st.integers(1, 15),
    rank=st.integers(1, 15),
    seed=st.integers(0, 2**16),
)
def test_truncate_factors_is_the_eckart_young_optimum(out, inp, r, rank, seed):
    g = torch.Generator().manual_seed(seed)
    B, A = torch.randn(out, r, generator=g, dtype=torch.float64), torch.randn(r, inp, generator=g, dtype=torch.float64)
    Bt, At, kept = truncate_factors(B, A, rank)
    k = min(out, inp, r)
    assert Bt.shape == (out, min(rank, k)) and At.shape == (min(rank, k), inp)
    S = torch.linalg.svdvals(B @ A)
    err = torch.linalg.matrix_norm(B @ A - Bt @ At) ** 2
    assert float(err) == pytest.approx(float((S[min(rank, k) :] ** 2).sum()), abs=1e-8 * float((S**2).sum()) + 1e-12)
    assert 0.0 <= kept <= 1.0


def test_truncate_factors_never_forms_the_dense_product():
    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(4096, 16, generator=g), torch.randn(16, 4096, generator=g)
    t = time.perf_counter()
    Bt, At, _ = truncate_factors(B, A, 8)
    assert time.perf_counter() - t < 2.0
    assert Bt.shape == (4096, 8) and At.shape == (8, 4096)
    # 200000 x 150000 dense would be 120 GB: only a factor-space method can do this.
    B, A = torch.randn(200_000, 4, generator=g), torch.randn(4, 150_000, generator=g)
    t = time.perf_counter()
    Bt, At, kept = truncate_factors(B, A, 2)
    assert time.perf_counter() - t < 5.0
    assert Bt.shape == (200_000, 2) and 0.0 < kept < 1.0


def test_truncate_factors_of_zero_keeps_shapes_and_reports_full_energy():
    Bt, At, kept = truncate_factors(torch.zeros(10, 4), torch.zeros(4, 8), 3)
    assert Bt.shape == (10, 3) and At.shape == (3, 8) and kept == 1.0
    assert not Bt.any() and not At.any()


def test_output_rank_is_capped_by_what_the_factors_can_hold():
    g = torch.Generator().manual_seed(0)
    Bt, At, kept = truncate_factors(torch.randn(10, 4, generator=g), torch.randn(4, 8, generator=g), 16)
    assert Bt.shape == (10, 4) and kept == pytest.approx(1.0)


def test_canonical_signs_make_the_largest_entry_of_each_u_column_positive():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(9, 6, generator=g)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    flip = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0, 1.0])
    U2, Vh2 = canonical_signs(U * flip, Vh * flip[:, None])
    cols = U2[U2.abs().argmax(dim=0), torch.arange(6)]
    assert (cols > 0).all()
    U3, Vh3 = canonical_signs(U, Vh)
    assert torch.equal(U2, U3) and torch.equal(Vh2, Vh3)
    np.testing.assert_allclose(((U2 * S) @ Vh2).numpy(), M.numpy(), atol=1e-5)


def test_lowrank_svd_matches_dense_singular_values():
    g = torch.Generator().manual_seed(5)
    B, A = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(6, 30, generator=g, dtype=torch.float64)
    U, S, Vh = lowrank_svd(B, A)
    np.testing.assert_allclose(S.numpy(), torch.linalg.svdvals(B @ A)[:6].numpy(), rtol=1e-10)
    np.testing.assert_allclose((U.T @ U).numpy(), np.eye(6), atol=1e-10)


# --- rank policy and parameters -------------------------------------------------------------


def test_rank_policy_parse():
    assert RankPolicy.parse(None, None) == RankPolicy("max")
    assert RankPolicy.parse(16, None) == RankPolicy("fixed", rank=16)
    assert RankPolicy.parse("16", None) == RankPolicy("fixed", rank=16)
    assert RankPolicy.parse("sum", None) == RankPolicy("sum")
    assert RankPolicy.parse("max", None) == RankPolicy("max")
    assert RankPolicy.parse(None, 0.99) == RankPolicy("energy", energy=0.99)
    assert RankPolicy.parse(32, 0.99) == RankPolicy("energy", rank=32, energy=0.99)
    assert RankPolicy.parse(16, None).to_dict() == {"kind": "fixed", "rank": 16, "energy": None}
    p = RankPolicy.parse(32, 0.9)
    assert RankPolicy.from_dict(p.to_dict()) == p
    assert RankPolicy("max").rank_for([4, 16, 8], 20) == 16
    assert RankPolicy("sum").rank_for([4, 16, 8], 20) == 20
    assert RankPolicy.parse(None, 0.5).rank_for([4], 20) is None


@pytest.mark.parametrize(
    "rank,energy", [(0, None), ("-3", None), ("sixteen", None), (None, 0.0), (None, 1.5), ("max", 0.9), (True, None)]
)
def test_rank_policy_rejects_bad_options(rank, energy):
    with pytest.raises(MergeError):
        RankPolicy.parse(rank, energy)


def test_resolve_params_fills_defaults_and_accepts_lambda_alias():
    assert resolve_params("ties", {}) == {"density": 0.2, "lambda": 1.0}
    assert resolve_params("ties", {"lambda_": 0.5}) == {"density": 0.2, "lambda": 0.5}
    assert resolve_params("dare_linear", {}) == {"drop_rate": 0.9, "lambda": 1.0}
    assert resolve_params("della", {}) == {"drop_rate": 0.3, "epsilon": 0.14, "lambda": 1.0}
    assert resolve_params("breadcrumbs", {}) == {"beta": 0.85, "gamma": 0.01, "lambda": 1.0}
    assert resolve_params("iso_c", {}) == {"alpha": 1.0}
    for name, spec in STRATEGIES.items():
        assert resolve_params(name, {}) == {k: float(v) for k, v in spec.params.items()}


def test_resolve_params_rejects_unknown_parameters_and_strategies():
    with pytest.raises(MergeError, match="density"):
        resolve_params("linear", {"density": 0.5})
    with pytest.raises(MergeError, match="unknown merge strategy"):
        resolve_params("frobnicate", {})


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, float("nan"), "a lot", True])
def test_resolve_params_rejects_out_of_range_density(value):
    with pytest.raises(MergeError, match=r"density .*\(0, 1\]"):
        resolve_params("ties", {"density": value})


@pytest.mark.parametrize(
    "strategy,params",
    [
        ("dare_linear", {"drop_rate": 1.0}),
        ("breadcrumbs", {"beta": 0.9, "gamma": 0.1}),
        ("della", {"drop_rate": 0.9, "epsilon": 0.2}),
        ("della", {"drop_rate": 0.1, "epsilon": 0.2}),
        ("ties", {"lambda": 1, "lambda_": 2}),
    ],
)
def test_resolve_params_rejects_inconsistent_values(strategy, params):
    with pytest.raises(MergeError):
        resolve_params(strategy, params)


@pytest.mark.parametrize("value,expected", [(True, 1.0), (False, 0.0), (1, 1.0), (0, 0.0), (1.0, 1.0)])
def test_switch_parameters_take_true_false_or_one_zero(value, expected):
    assert resolve_params("nuslerp", {"flatten": value})["flatten"] == expected


@pytest.mark.parametrize("value", [2, 0.5, "yes", -1])
def test_switch_parameters_refuse_anything_else(value):
    with pytest.raises(MergeError, match="flatten must be true or false"):
        resolve_params("nuslerp", {"flatten": value})


def test_count_parameters_must_be_whole_numbers_in_range():
    assert resolve_params("karcher", {"max_iter": 25})["max_iter"] == 25.0
    with pytest.raises(MergeError, match="whole number"):
        resolve_params("karcher", {"max_iter": 2.5})
    with pytest.raises(MergeError, match=r"max_iter must be in \[1, 10000\]"):
        resolve_params("karcher", {"max_iter": 0})


def test_merge_module_rejects_malformed_inputs():
    fs = make_factors()
    with pytest.raises(MergeError, match="weights"):
        merge_module("linear", fs, [1.0], {}, no_rng, FULL)
    with pytest.raises(MergeError, match="no input"):
        merge_module("linear", [None, None], [1.0, 1.0], {}, no_rng, FULL)
    other = Factor(torch.randn(OUT + 1, 3), torch.randn(3, IN))
    with pytest.raises(MergeError, match="differs"):
        merge_module("linear", [fs[0], other], [1.0, 1.0], {}, no_rng, FULL)
    with pytest.raises(MergeError, match="do not chain"):
        merge_module("linear", [Factor(torch.randn(OUT, 3), torch.randn(4, IN))], [1.0], {}, no_rng, FULL)


# --- fast paths: threshold selection and block Krylov re-factorisation -------------------
#
# The dense strategies select by magnitude without sorting whole modules and
# re-factorise large modules by block Krylov iteration instead of a full SVD.
# These tests check both against the plain methods at sizes where the fast
# paths are taken (the small modules above go through the exact ones).

from mfgit.merge import lowrank as _lowrank  # noqa: E402
from mfgit.merge import strategies as _strategies  # noqa: E402


def _argsort_top(x: torch.Tensor, k: int) -> torch.Tensor:
    """The specification: the first k of a stable descending argsort of |x|."""
    order = torch.argsort(x.abs().flatten(), descending=True, stable=True)
    mask = torch.zeros(x.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask


def _tied_matrix(seed: int, rows: int = 300, cols: int = 310) -> torch.Tensor:
    """Magnitudes from a small set of values: many exact ties at every threshold."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-40, 41, (rows, cols), generator=g).to(torch.float32) / 8
    x[:5] = 0.0  # a block of exact zeros (and -0.0)
    x[5, ::2] = -0.0
    return x


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("frac", [0.0, 1e-5, 0.01, 0.2, 0.5, 0.85, 0.99, 1.0])
def test_top_selection_equals_a_stable_argsort_with_ties(seed, frac):
    for x in (_tied_matrix(seed), torch.randn(300, 310, generator=torch.Generator().manual_seed(seed))):
        assert x.numel() > 4 * _strategies._SAMPLE  # the sampled-bracket path
        k = n_of(frac, x.numel())
        mask = _strategies._top_mask(x.view(-1), k)
        assert torch.equal(mask, _argsort_top(x, k))
        kept = _strategies._keep_top_(x.clone(), frac) if frac > 0 else None
        if kept is not None:
            expected = torch.where(_argsort_top(x, k).view_as(x), x, torch.zeros_like(x))
            assert torch.equal(kept, expected)


def test_top_selection_falls_back_when_the_sample_misses():
    # All magnitudes equal but one block: the sample bracket cannot straddle the threshold.
    x = torch.ones(400, 400)
    x[:, 0] = 3.0
    x[7, 7] = 2.0
    for k in (1, 399, 400, 401, 402, 1000, 159_999):
        assert torch.equal(_strategies._top_mask(x.view(-1), k), _argsort_top(x, k))


@pytest.mark.parametrize("beta,gamma", [(0.85, 0.01), (0.3, 0.3), (0.0, 0.2), (0.5, 0.0)])
def test_breadcrumbs_selection_equals_a_stable_argsort_with_ties(beta, gamma):
    x = _tied_matrix(3)
    n = x.numel()
    order = torch.argsort(x.abs().flatten(), descending=True, stable=True)
    keep = torch.zeros(n, dtype=torch.bool)
    keep[order[n_of(gamma, n) : n - n_of(beta, n)]] = True
    expected = torch.where(keep.view_as(x), x, torch.zeros_like(x))
    assert torch.equal(_strategies._keep_middle_(x.clone(), beta, gamma), expected)


def test_della_ranks_equal_a_stable_float_argsort():
    x = _tied_matrix(4, rows=40, cols=64)
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(9))
    got = _strategies._magprune_(x.clone(), u.clone(), 0.4, 0.2)
    order = torch.argsort(x.abs(), dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(x.shape[1]).expand_as(x).contiguous())
    p_drop = (0.4 + 0.2) - (2.0 * 0.2) * (ranks.to(torch.float32) / float(x.shape[1] - 1))
    expected = torch.where(u >= p_drop, x / (1.0 - p_drop), torch.zeros_like(x))
    assert torch.equal(got, expected)


def _ties_like(out: int, inp: int, seed: int = 0) -> torch.Tensor:
    """A dense TIES result of three random rank-8 updates (slowly decaying spectrum)."""
    g = torch.Generator().manual_seed(seed)
    fs = [Factor(torch.randn(out, 8, generator=g), torch.randn(8, inp, generator=g)) for _ in range(3)]
    full = merge_module("ties", fs, [0.5, 0.3, 0.2], {}, no_rng, RankPolicy.parse(min(out, inp), None))
    return (full.B @ full.A).contiguous()


@pytest.mark.parametrize(
    "shape,rank", [((600, 480), 1), ((600, 480), 8), ((480, 600), 4), ((480, 600), 8), ((1000, 800), 16)]
)
def test_krylov_refactorisation_matches_the_exact_svd(shape, rank):
    W = _ties_like(*shape)
    assert _lowrank.uses_krylov(shape, rank)
    assert _lowrank._krylov_top(W, rank) is not None  # converged: the fast path is what is tested
    B, A, kept = factorize_dense(W, rank)
    S = torch.linalg.svdvals(W.double())
    exact = float((S[:rank] ** 2).sum() / (S**2).sum())
    assert B.shape == (shape[0], rank) and A.shape == (rank, shape[1])
    assert abs(kept - exact) <= 1e-4 * exact  # the documented accuracy (typically ~1e-7)
    # The approximation error is the optimal one, ‖W − BA‖² = Σ_{j≥rank} σⱼ², to the same accuracy.
    err = float(torch.linalg.matrix_norm((W - B @ A).double()) ** 2)
    assert err == pytest.approx(float((S[rank:] ** 2).sum()), rel=1e-4)
    # Balanced split with orthonormal directions and canonical signs.
    sig = B.norm(dim=0) * A.norm(dim=1)
    np.testing.assert_allclose(sig.numpy(), S[:rank].numpy(), rtol=1e-4)
    np.testing.assert_allclose(B.norm(dim=0).numpy(), A.norm(dim=1).numpy(), rtol=1e-5)
    U = B / B.norm(dim=0)
    np.testing.assert_allclose((U.T @ U).numpy(), np.eye(rank), atol=1e-5)
    assert (U[U.abs().argmax(dim=0), torch.arange(rank)] > 0).all()


def test_krylov_refactorisation_is_deterministic_and_leaves_the_global_rng_alone():
    W = _ties_like(500, 400, seed=2)
    state = torch.random.get_rng_state()
    a = factorize_dense(W, 8)
    b = factorize_dense(W.clone(), 8)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_krylov_energy_policy_with_a_cap_matches_the_exact_svd():
    W = _ties_like(600, 500, seed=1)
    S = torch.linalg.svdvals(W.double())
    cum = torch.cumsum(S**2, 0) / (S**2).sum()
    for energy in (0.01, 0.05, 0.2, 0.9):
        B, A, kept = factorize_dense(W, 12, energy)
        expected = min(12, int((cum < energy - 1e-9).sum()) + 1)
        assert B.shape[1] == expected
        assert kept == pytest.approx(float(cum[expected - 1]), rel=1e-4)


def test_krylov_of_a_low_rank_matrix_is_exact_and_keeps_the_requested_rank():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(500, 3, generator=g) @ torch.randn(3, 450, generator=g)
    B, A, kept = factorize_dense(W, 8)
    assert B.shape == (500, 8) and A.shape == (8, 450)
    assert kept == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose((B @ A).numpy(), W.numpy(), atol=1e-4 * float(W.abs().max()))
    assert not B[:, 3:].any() and not A[3:].any()  # zero directions stay as zero columns


def test_krylov_of_zero_keeps_shapes_and_reports_full_energy():
    B, A, kept = factorize_dense(torch.zeros(500, 400), 8)
    assert B.shape == (500, 8) and A.shape == (8, 400) and kept == 1.0
    assert not B.any() and not A.any()


def test_flat_spectrum_falls_back_to_the_exact_svd():
    # Gaussian noise: singular values too close for the iteration to converge within its cap.
    W = torch.randn(400, 400, generator=torch.Generator().manual_seed(0))
    assert _lowrank.uses_krylov(W.shape, 4)
    assert _lowrank._krylov_top(W, 4) is None
    B, A, kept = factorize_dense(W, 4)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    U, Vh = canonical_signs(U, Vh)
    assert torch.equal(B, U[:, :4] * S[:4].sqrt())
    assert kept == pytest.approx(float((S[:4].double() ** 2).sum() / (S.double() ** 2).sum()), rel=1e-6)


def test_full_rank_requests_keep_the_exact_svd():
    # The dense references above ask for rank min(out, in): the exact path, no iteration.
    assert not _lowrank.uses_krylov((OUT, IN), min(OUT, IN))
    assert not _lowrank.uses_krylov((2048, 2048), None)
    assert not _lowrank.uses_krylov((2048, 2048), 1024)
    assert _lowrank.uses_krylov((2048, 2048), 16)


@pytest.mark.parametrize("strategy", ELEMENTWISE)
def test_large_module_merge_matches_the_exact_refactorisation(strategy):
    g = torch.Generator().manual_seed(6)
    fs = [Factor(torch.randn(520, 8, generator=g), torch.randn(8, 480, generator=g)) for _ in range(3)]
    full = merge_module(strategy, fs, WS, {}, make_rng(2), RankPolicy.parse(480, None))  # exact SVD path
    W = full.B.double() @ full.A.double()
    r = merge_module(strategy, fs, WS, {}, make_rng(2), RankPolicy.parse(8, None))  # block Krylov path
    S = torch.linalg.svdvals(W)
    exact = float((S[:8] ** 2).sum() / (S**2).sum())
    assert r.rank == 8
    assert abs(r.kept_energy - exact) <= 1e-4 * exact
    err = float(torch.linalg.matrix_norm(W - r.B.double() @ r.A.double()) ** 2)
    assert err == pytest.approx(float((S[8:] ** 2).sum()), rel=1e-4)


def test_tf32_is_off_inside_a_cuda_merge_and_restored_after():
    m = torch.backends.cuda.matmul
    before = m.allow_tf32
    try:
        m.allow_tf32 = True
        with _strategies._ieee_fp32_matmul(torch.device("cuda")):
            assert m.allow_tf32 is False
        assert m.allow_tf32 is True
        with _strategies._ieee_fp32_matmul(torch.device("cpu")):  # CPU merges change nothing
            assert m.allow_tf32 is True
    finally:
        m.allow_tf32 = before
