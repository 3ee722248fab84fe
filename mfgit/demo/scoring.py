"""The demo's mixture predictions, on ``repo.load_mixture``'s module.

The mixture's search objective on the sites' distilled sets is mfgit's
built-in one (``mix --score prompts --data attachments:distilled``,
mfgit.api.mixscore: the generalized KL of Σⱼ wⱼ·softmaxⱼ, which sees the
weights' scale), as Fusion's is (``merge --score prompts``).

For predictions the module (mfgit.api.mixture) returns Σⱼ wⱼ·softmaxⱼ with
the weights as committed; searched weights, as MedForge's, may be negative
and need not sum to 1. Each member's softmax sums to 1, so a row of the
output sums to Σⱼ wⱼ: the demo reads the output as a distribution by
dividing each row by its sum. For Σⱼ wⱼ > 0 that changes neither the
argmax nor the AUC; weights that sum to 0 or less give no distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _distribution(p, weights: Sequence[float]):
    """`p` (the module's output) divided by its row sums, Σⱼ wⱼ up to rounding; None when Σⱼ wⱼ ≤ 0."""
    if p is None or not math.fsum(weights) > 0:
        return None
    return p / p.sum(-1, keepdim=True)


def mixture_predict_proba(module, prompts: list[list[str]], texts: list[str], batch_size: int = 64) -> np.ndarray:
    """The mixture's distribution over the task's classes for every record: [N, classes]."""
    import torch

    from mfgit.demo.model import tokenize
    from mfgit.errors import DemoError

    module.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            q = _distribution(module(prompts, **tokenize(texts[i:i + batch_size])), module.weights)
            if q is None:
                raise DemoError(f"the mixture's weights {module.weights} sum to 0 or less: no distribution "
                                "(re-run the demo with another --seed)")
            out.append(q)
    return torch.cat(out).double().numpy()
