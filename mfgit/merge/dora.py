"""DoRA's effective update of one linear module, as a (dense) factor a merge strategy can take.

DoRA (Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", ICML 2024,
arXiv:2402.09353) trains, besides B and A, a magnitude vector m with one
entry per output row, and adapts a linear layer to

    W' = (m / ‖W + s·B·A‖_row)[:, None] · (W + s·B·A)

where ‖·‖_row is the L2 norm of each row (over the input dimension, dim=1,
as PEFT's ``DoraLinearLayer.get_weight_norm`` takes it) and s the LoRA
scaling (α/r, α/√r with rsLoRA). Its update ΔW = W' − W depends on the base
weight W and is not s·B·A: adding DoRA adapters' B·A (or their m) does not
add their effects. A merge therefore works on each DoRA input's effective
ΔW, which is dense (generally of full rank, since m rescales W's rows), and
the strategy's result is re-factorised to a plain LoRA like any dense merge.
"""

from __future__ import annotations

import torch

from mfgit.errors import MergeError
from mfgit.merge.updates import Factor

__all__ = ["effective_update", "dense_factor"]


def effective_update(W: torch.Tensor, B: torch.Tensor, A: torch.Tensor, magnitude: torch.Tensor,
                     scaling: float, module: str = "") -> torch.Tensor:
    """ΔW = (m / ‖W + s·B·A‖_row)[:, None] · (W + s·B·A) − W, in the inputs' dtype (fp32 in a merge).

    The norm is PEFT's: ``torch.linalg.norm(W + s·B·A, dim=1)``. A row whose
    adapted weight is all zero has no direction (PEFT divides by 0 and gets
    NaN): MergeError, rather than a guess.
    """
    adapted = W + scaling * (B @ A)
    norm = torch.linalg.norm(adapted, dim=1)
    if bool((norm == 0).any()):
        row = int((norm == 0).nonzero()[0, 0])
        raise MergeError(f"DoRA module {module}: row {row} of W + s·B·A is zero, so its direction is undefined")
    return (magnitude / norm).unsqueeze(1) * adapted - W


def dense_factor(delta: torch.Tensor, rank: int) -> Factor:
    """`delta` (out × in) as exact factors B @ A, one of them an identity of the smaller side.

    The product is exact in floating point (each entry is one term times 1
    plus zeros), so dense strategies see `delta` itself and factor-space
    strategies its full column or row space; `rank` is what the rank
    policies count for it (the DoRA adapter's own r).
    """
    out_f, in_f = delta.shape
    if out_f <= in_f:
        eye = torch.eye(out_f, dtype=delta.dtype, device=delta.device)
        return Factor(B=eye, A=delta.contiguous(), rank=rank)
    eye = torch.eye(in_f, dtype=delta.dtype, device=delta.device)
    return Factor(B=delta.contiguous(), A=eye, rank=rank)
