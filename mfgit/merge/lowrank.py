"""Low-rank linear algebra for merging LoRA factors, without dense matrices.

A LoRA update is ΔW = B @ A with B: out×r and A: r×in, r ≪ min(out, in).
Everything here works on the factors; the dense out×in matrix is formed only
by :func:`factorize_dense`, whose caller already holds one.

Conventions shared by every function:

* The result of a truncation is split *balanced*: B_out = U·diag(√σ),
  A_out = diag(√σ)·Vᵀ, so both factors carry the same scale (what a LoRA
  trained from scratch tends to look like, and what keeps fp16/bf16 storage
  of either factor well conditioned).
* Singular vectors are made deterministic by :func:`canonical_signs`; with the
  same inputs on the same device the outputs are bit-identical.
* ``kept_energy`` is Σ_{j<r} σ_j² / Σ_j σ_j², the fraction of the squared
  Frobenius norm kept by the truncation (1.0 when the input is exactly zero).
* Output shapes are stable: the output rank is the requested rank capped at
  the rank the factors can have (k = min(out, in, r)); directions with a zero
  singular value are kept as zero columns rather than dropped, so a caller
  that asked for rank 16 gets rank 16 whenever the inputs allow it.

No I/O, no repository knowledge, no global state, no random numbers
(merges are deterministic; see docs/merging.md, "Randomness and determinism").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from mfgit.errors import MergeError

__all__ = [
    "RankPolicy",
    "balanced_split",
    "canonical_signs",
    "factorize_dense",
    "lowrank_svd",
    "select_rank",
    "truncate_factors",
]

_POLICY_KINDS = ("fixed", "sum", "energy", "max")


@dataclass(frozen=True)
class RankPolicy:
    """How the rank of a merged module is chosen.

    kind:
        ``"max"``    (default) the largest rank among the inputs that adapt the module;
        ``"sum"``    the sum of the input ranks (exact for linear merges in factor space);
        ``"fixed"``  exactly ``rank`` (capped at what the module can hold);
        ``"energy"`` the smallest rank keeping ``energy`` of the squared Frobenius norm,
                     optionally capped at ``rank``.
    """

    kind: str = "max"
    rank: int | None = None
    energy: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in _POLICY_KINDS:
            raise MergeError(f"rank policy kind must be one of {', '.join(_POLICY_KINDS)}, got {self.kind!r}")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise MergeError(f"rank must be an integer >= 1, got {self.rank!r}")
        if self.kind == "fixed" and self.rank is None:
            raise MergeError("rank policy 'fixed' needs a rank (an integer >= 1)")
        if self.kind in ("sum", "max") and self.rank is not None:
            raise MergeError(f"rank policy {self.kind!r} takes no explicit rank")
        if self.kind == "energy":
            e = self.energy
            if e is None or isinstance(e, bool) or not isinstance(e, (int, float)) or not (0.0 < float(e) <= 1.0):
                raise MergeError(f"energy must be in (0, 1], got {e!r}")
        elif self.energy is not None:
            raise MergeError(f"rank policy {self.kind!r} takes no energy")

    @classmethod
    def parse(cls, rank: str | int | None, energy: float | None) -> "RankPolicy":
        """Build a policy from the CLI/API options ``--rank`` and ``--energy``.

        ``rank``: ``None`` (default: max input rank), an integer N or its string
        form (fixed rank N), ``"sum"`` or ``"max"``. ``energy``: ``None`` or a
        fraction in (0, 1]; with an integer ``rank`` the rank is a cap on top of
        the energy rule, with ``"sum"``/``None`` there is no extra cap.

        Raises:
            MergeError: an unknown rank word, a rank < 1, an energy out of range,
                or energy combined with ``"max"``.
        """
        parsed: int | str | None
        if rank is None:
            parsed = None
        elif isinstance(rank, bool):
            raise MergeError(f"--rank must be an integer >= 1, 'sum' or 'max', got {rank!r}")
        elif isinstance(rank, int):
            parsed = rank
        elif isinstance(rank, str):
            word = rank.strip().lower()
            if word in ("sum", "max"):
                parsed = word
            else:
                try:
                    parsed = int(word, 10)
                except ValueError:
                    raise MergeError(f"--rank must be an integer >= 1, 'sum' or 'max', got {rank!r}") from None
        else:
            raise MergeError(f"--rank must be an integer >= 1, 'sum' or 'max', got {rank!r}")
        if isinstance(parsed, int) and parsed < 1:
            raise MergeError(f"--rank must be an integer >= 1, 'sum' or 'max', got {rank!r}")

        if energy is not None:
            if isinstance(energy, bool):
                raise MergeError(f"--energy must be in (0, 1], got {energy!r}")
            try:
                e = float(energy)
            except (TypeError, ValueError):
                raise MergeError(f"--energy must be in (0, 1], got {energy!r}") from None
            if not (0.0 < e <= 1.0) or math.isnan(e):
                raise MergeError(f"--energy must be in (0, 1], got {energy!r}")
            if parsed == "max":
                raise MergeError("--energy cannot be combined with --rank max; give an integer cap or none")
            return cls("energy", rank=parsed if isinstance(parsed, int) else None, energy=e)
        if parsed is None or parsed == "max":
            return cls("max")
        if parsed == "sum":
            return cls("sum")
        return cls("fixed", rank=parsed)

    def to_dict(self) -> dict:
        """JSON-ready form, recorded in merge commits: ``{"kind", "rank", "energy"}``."""
        return {"kind": self.kind, "rank": self.rank, "energy": self.energy}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RankPolicy":
        """Inverse of :meth:`to_dict`."""
        return cls(str(d.get("kind", "max")), rank=d.get("rank"), energy=d.get("energy"))

    def rank_for(self, input_ranks: Sequence[int], limit: int | None = None) -> int | None:
        """The rank cap this policy gives for a module.

        Args:
            input_ranks: the ranks of the inputs that adapt the module (absent ones left out).
            limit: an upper bound (usually min(out, in)), or None.

        Returns:
            The maximum output rank, or None for an uncapped energy policy.
        """
        if self.kind == "fixed":
            r: int | None = self.rank
        elif self.kind == "sum":
            r = int(sum(input_ranks))
        elif self.kind == "max":
            r = int(max(input_ranks)) if len(input_ranks) else 0
        else:
            r = self.rank
        if r is not None and limit is not None:
            r = min(r, int(limit))
        return r


# ---------------------------------------------------------------------------


def canonical_signs(U: torch.Tensor, Vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fix the sign ambiguity of an SVD.

    Each singular pair (u_j, v_j) may be replaced by (−u_j, −v_j). Flip the pair
    so that the entry of largest magnitude of each column of U is positive (the
    first such entry on ties; an all-zero column is left as is).

    Args:
        U: m×k left singular vectors (columns).
        Vh: k×n right singular vectors (rows).

    Returns:
        (U, Vh) with the signs fixed; new tensors, the inputs are not modified.
    """
    if U.shape[-1] == 0:
        return U.clone(), Vh.clone()
    idx = U.abs().argmax(dim=0, keepdim=True)  # first maximum per column
    pick = torch.gather(U, 0, idx).squeeze(0)
    sign = torch.where(pick < 0, -1.0, 1.0).to(U.dtype)
    return U * sign.unsqueeze(0), Vh * sign.unsqueeze(1)


def select_rank(s: torch.Tensor, rank: int | None, energy: float | None) -> tuple[int, float]:
    """Choose how many leading singular values to keep.

    Args:
        s: singular values, non-increasing, length k.
        rank: cap on the rank (None: k).
        energy: if given, the smallest r with Σ_{j<r} σ_j² ≥ energy · Σ σ_j²
            (at least 1 when k ≥ 1), then capped by ``rank``.

    Returns:
        (r, kept_energy).
    """
    k = int(s.shape[0])
    cap = k if rank is None else max(0, min(int(rank), k))
    if k == 0:
        return 0, 1.0
    # float64 on the host: a handful of numbers, and the rank choice must not
    # flip on fp32 rounding of a cumulative sum.
    e2 = (s.detach().to(torch.float64) ** 2).cpu()
    total = float(e2.sum())
    if energy is None:
        r = cap
    elif total == 0.0:
        r = min(1, cap)
    else:
        cum = torch.cumsum(e2, 0)
        target = float(energy) * total * (1.0 - 1e-12)
        r = int((cum < target).sum()) + 1
        r = max(1, min(r, cap))
    kept = 1.0 if total == 0.0 else float(e2[:r].sum()) / total
    return r, min(1.0, kept)


def balanced_split(U: torch.Tensor, s: torch.Tensor, Vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced split of U·diag(s)·Vh into (B, A); s may be negative (sign goes into B)."""
    root = s.abs().sqrt()
    B = (U * (torch.sign(s) * root).unsqueeze(0)).contiguous()
    A = (Vh * root.unsqueeze(1)).contiguous()
    return B, A


def lowrank_svd(B: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of B @ A from the factors: U (out×k), S (k), Vh (k×in), k = min(out, in, r).

    QR of B and of Aᵀ, SVD of the small core R_B R_Aᵀ, multiply back. Cost
    O((out + in)·r² + r³) instead of O(out·in·min(out, in)); the dense product
    is never formed. Signs are canonical (:func:`canonical_signs`).
    """
    if B.dim() != 2 or A.dim() != 2 or B.shape[1] != A.shape[0]:
        raise MergeError(f"factor shapes do not chain: B {tuple(B.shape)}, A {tuple(A.shape)}")
    out_f, r = B.shape
    in_f = A.shape[1]
    if r == 0 or out_f == 0 or in_f == 0:
        k = 0
        return (B.new_zeros((out_f, k)), B.new_zeros((k,)), A.new_zeros((k, in_f)))
    Qb, Rb = torch.linalg.qr(B, mode="reduced")  # out×k1, k1×r
    Qa, Ra = torch.linalg.qr(A.T, mode="reduced")  # in×k2, k2×r
    core = Rb @ Ra.T  # k1×k2
    u, s, vh = torch.linalg.svd(core, full_matrices=False)
    U = Qb @ u
    Vh = vh @ Qa.T
    U, Vh = canonical_signs(U, Vh)
    return U, s, Vh


def truncate_factors(
    B: torch.Tensor, A: torch.Tensor, rank: int | None, energy: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best approximation of B @ A of rank ≤ ``rank`` (Eckart–Young), from the factors.

    Args:
        B: out×r factor (scaling already folded in).
        A: r×in factor.
        rank: maximum output rank (None: no cap, i.e. k = min(out, in, r)).
        energy: if given, keep the smallest rank holding this fraction of the
            squared Frobenius norm (still capped by ``rank``).

    Returns:
        (B_out, A_out, kept_energy) with B_out: out×r', A_out: r'×in,
        B_out = Q_B U √S, A_out = √S Vᵀ Q_Aᵀ, r' = the chosen rank.
        The dense product B @ A is never formed.
    """
    U, s, Vh = lowrank_svd(B, A)
    r, kept = select_rank(s, rank, energy)
    B_out, A_out = balanced_split(U[:, :r], s[:r], Vh[:r])
    return B_out, A_out, kept


def factorize_dense(
    W: torch.Tensor, rank: int | None, energy: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Rank-``rank`` (or ``energy``) factorisation of a dense matrix by torch.linalg.svd.

    Same conventions as :func:`truncate_factors`: balanced split, canonical
    signs, output rank = ``rank`` capped at min(out, in), kept_energy reported.
    """
    if W.dim() != 2:
        raise MergeError(f"expected a matrix, got shape {tuple(W.shape)}")
    if W.shape[0] == 0 or W.shape[1] == 0:
        return W.new_zeros((W.shape[0], 0)), W.new_zeros((0, W.shape[1])), 1.0
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    U, Vh = canonical_signs(U, Vh)
    r, kept = select_rank(s, rank, energy)
    B_out, A_out = balanced_split(U[:, :r], s[:r], Vh[:r])
    return B_out, A_out, kept
