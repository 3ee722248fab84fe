"""Deterministic training and evaluation for the demo (CPU, tiny batches)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, seed: int,
          batch_size: int = 32, weight_decay: float = 0.0) -> float:
    """Mini-batch AdamW on the parameters that require grad; returns the last epoch's mean loss.

    The batch order comes from a generator seeded with `seed`; the global
    RNG is not used, so a run is reproducible.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    model.train()
    last = 0.0
    for _ in range(epochs):
        perm = torch.randperm(len(yt), generator=g)
        total = 0.0
        for i in range(0, len(yt), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        last = total / len(yt)
    model.eval()
    return last


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """P(malignant) for every row of `x`."""
    model.eval()
    return model(torch.from_numpy(x)).softmax(-1)[:, 1].double().numpy()


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Accuracy (threshold 0.5) and ROC AUC, computed by scikit-learn."""
    from sklearn.metrics import accuracy_score, roc_auc_score

    acc = float(accuracy_score(y, (p >= 0.5).astype(np.int64)))
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    return {"acc": acc, "auc": auc}
