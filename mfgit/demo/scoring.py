"""The coordinator's own score: MedForge-Mixture's search objective and predictions, on ``repo.load_mixture``'s module.

Fusion's search objective on the sites' distilled sets is mfgit's built-in
one (``merge --score prompts --data attachments:distilled``, mfgit.api.prompts);
a mixture's score receives probabilities, not a model, so the demo has its own.

The module (mfgit.api.mixture) returns Σⱼ wⱼ·softmaxⱼ with the weights as
committed; searched weights, as MedForge's, may be negative and need not
sum to 1. Each member's softmax sums to 1, so a row of the output sums to
Σⱼ wⱼ: the demo reads the output as a distribution by dividing each row by
its sum. For Σⱼ wⱼ > 0 that changes neither the argmax nor the AUC; weights
that sum to 0 or less give no distribution and their candidate fails (the
search skips it).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

# the class probability a negative member can push below 0 is floored here, so its loss is large, not NaN
FLOOR = 1e-6


def _distribution(p, weights: Sequence[float]):
    """`p` (the module's output) divided by its row sums, Σⱼ wⱼ up to rounding; None when Σⱼ wⱼ ≤ 0."""
    if p is None or not math.fsum(weights) > 0:
        return None
    return p / p.sum(-1, keepdim=True)


# module -> {(member commit, id of a distilled set's tensor): (that tensor, the member's softmax on it)}
_MEMBER_PROBS: "weakref.WeakKeyDictionary[Any, dict[tuple[str, int], tuple[Any, Any]]]" = weakref.WeakKeyDictionary()


def _mixed(module, prompts: list[list[str]], inputs: dict[str, Any]):
    """The module's output Σⱼ wⱼ·softmaxⱼ on `inputs`, each member's softmax computed once per module.

    A member's output does not depend on the weights, and a search only
    changes the weights: member j's softmax is the module's own output with
    the weights one-hot on j, kept, and a candidate sums them in member order,
    skipping weight 0, as the module's forward does (the same numbers).
    """
    cache = _MEMBER_PROBS.setdefault(module, {})
    weights = list(module.weights)
    total = None
    try:
        for j, (commit, w) in enumerate(zip(module.commits, weights)):
            if w == 0.0:
                continue
            anchor = next(iter(inputs.values()))
            key = (commit, id(anchor))
            if key not in cache:
                module.set_weights([1.0 if i == j else 0.0 for i in range(len(weights))])
                # the tensor is kept with its output: its id cannot be reused while the entry exists
                cache[key] = (anchor, module(prompts, **inputs))
            p = cache[key][1] * w
            total = p if total is None else total + p
    finally:
        module.set_weights(weights)
    return total


def mixture_loss(module, data: Sequence[tuple[list[list[str]], dict[str, Any]]]) -> float:
    """Mean over sites of the cross-entropy of the mixed distribution on each site's distilled set (lower is better).

    `data` is what the sites committed: (the task's prompts, the distilled
    tensors) per site; it stays the same object through a search (a
    member's softmax on it is computed once). Each member's logits are the
    demo's prompt logits (mfgit.demo.model.logits, given to ``mix`` and
    ``load_mixture`` as ``logits``).
    """
    import torch

    losses = []
    with torch.no_grad():
        for prompts, t in data:
            inputs = {k: v for k, v in t.items() if k != "labels"}
            q = _distribution(_mixed(module, prompts, inputs), module.weights)
            if q is None:
                return math.inf
            picked = q.gather(1, t["labels"].unsqueeze(1)).squeeze(1).clamp(min=FLOOR)
            losses.append(float(-picked.log().mean()))
    return float(np.mean(losses))


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
                                "(re-run the demo; the search never chooses such weights)")
            out.append(q)
    return torch.cat(out).double().numpy()
