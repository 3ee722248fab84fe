"""The coordinator's output-space composite: MedForge-Mixture's probabilities.

Fusion's search objective on the sites' distilled sets is mfgit's built-in
one (``merge --score prompts --data attachments:distilled``, mfgit.api.prompts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mixture_proba(probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """MedForge-Mixture in output space: Σ wⱼ softmaxⱼ (weights normalised to sum to 1)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    return sum(wj * pj for wj, pj in zip(w, probs))
