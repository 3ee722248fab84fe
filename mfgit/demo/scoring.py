"""The coordinator's scores: Fusion's search objective on distilled sets, and the Mixture's output.

Both use only what sites committed: prompts (attachment ``task``) and
distilled sets (attachment ``distilled``), never records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def distilled_loss(model, data: Sequence[tuple[list[list[str]], dict[str, Any]]]) -> float:
    """Mean over sites of the cross-entropy of each distilled set against its own task's prompts (lower is better)."""
    import torch
    from torch.nn import functional as F

    from mfgit.demo.model import logits

    losses = []
    with torch.no_grad():
        for prompts, t in data:
            inputs = {k: v for k, v in t.items() if k != "labels"}
            losses.append(float(F.cross_entropy(logits(model, prompts, **inputs), t["labels"])))
    return float(np.mean(losses))


def mixture_proba(probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """MedForge-Mixture in output space: Σ wⱼ softmaxⱼ (weights normalised to sum to 1)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    return sum(wj * pj for wj, pj in zip(w, probs))
