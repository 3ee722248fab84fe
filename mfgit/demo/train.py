"""Training a site's LoRA, its distilled set, and evaluation (CPU, deterministic)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from mfgit.demo.model import embed, logits, tokenize

TRAIN = {"epochs": 2, "lr": 4e-3, "batch_size": 16}
# The distilled set: `size` synthetic records in the site's class proportions (at least
# `min_per_class` each), `tokens` token embeddings long.
DISTILL = {"size": 10, "min_per_class": 2, "tokens": 16, "steps": 60, "lr": 0.05}


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


def distill(base, texts: list[str], y: np.ndarray, *, seed: int, size: int = DISTILL["size"],
            tokens: int = DISTILL["tokens"], steps: int = DISTILL["steps"], lr: float = DISTILL["lr"]) -> dict[str, torch.Tensor]:
    """Distribution matching in embedding space: synthetic ``inputs_embeds`` per class.

    For each class, synthetic token-embedding sequences (as many as the
    class's share of `size`, at least DISTILL["min_per_class"]) are optimised (Adam) so that the *frozen base* encoder's mean pooled
    feature of the synthetic set matches the mean pooled feature of the
    site's real records of that class. They start from random combinations
    of the vocabulary's embedding rows, not from records, and only the
    synthetic tensors leave the site. Returns the safetensors contents of
    the ``distilled`` attachment: inputs_embeds, attention_mask, labels.
    """
    g = torch.Generator().manual_seed(seed)
    word = base.get_input_embeddings().weight.detach()
    classes = sorted(int(c) for c in np.unique(y))
    with torch.no_grad():
        targets = {c: torch.cat([embed(base, **tokenize([texts[i] for i in np.flatnonzero(y == c)[j:j + 64]]))
                                 for j in range(0, int((y == c).sum()), 64)]).mean(0) for c in classes}
    counts = {c: max(DISTILL["min_per_class"], round(size * float((y == c).mean()))) for c in classes}
    n = sum(counts.values())
    rows = torch.randint(0, word.shape[0], (n, tokens, 4), generator=g)
    synth = word[rows].mean(2).clone().requires_grad_(True)
    mask = torch.ones(n, tokens, dtype=torch.int64)
    labels = torch.tensor([c for c in classes for _ in range(counts[c])], dtype=torch.int64)
    opt = torch.optim.Adam([synth], lr=lr)
    for _ in range(steps):
        feats = embed(base, inputs_embeds=synth, attention_mask=mask)
        loss = sum(((feats[labels == c].mean(0) - targets[c]) ** 2).sum() for c in classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {"inputs_embeds": synth.detach().contiguous(), "attention_mask": mask, "labels": labels}
