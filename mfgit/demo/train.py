"""Training a site's LoRA, and evaluation (CPU, deterministic)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from mfgit.demo.model import logits, tokenize

TRAIN = {"epochs": 2, "lr": 4e-3, "batch_size": 16}


def train_lora(model, prompts: list[list[str]], texts: list[str], y: np.ndarray, *, seed: int,
               epochs: int = TRAIN["epochs"], lr: float = TRAIN["lr"], batch_size: int = TRAIN["batch_size"]) -> float:
    """AdamW on the LoRA factors, cross-entropy of the prompt logits; returns the last epoch's mean loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    yt = torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    model.train()
    last = 0.0
    for _ in range(epochs):
        perm = torch.randperm(len(yt), generator=g).tolist()
        total = 0.0
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(logits(model, prompts, **tokenize([texts[j] for j in idx])), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        last = total / len(yt)
    model.eval()
    return last


@torch.no_grad()
def predict_proba(model, prompts: list[list[str]], texts: list[str], batch_size: int = 64) -> np.ndarray:
    """softmax over the task's classes for every record: [N, classes]."""
    model.eval()
    out = [logits(model, prompts, **tokenize(texts[i:i + batch_size])).softmax(-1)
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out).double().numpy()


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Accuracy (argmax) and ROC AUC of the positive class, computed by scikit-learn."""
    from sklearn.metrics import accuracy_score, roc_auc_score

    acc = float(accuracy_score(y, p.argmax(1)))
    auc = float(roc_auc_score(y, p[:, 1])) if len(np.unique(y)) == 2 else float("nan")
    return {"acc": acc, "auc": auc}
