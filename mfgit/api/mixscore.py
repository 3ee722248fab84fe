"""The built-in score of a mixture: ``mix --search weights --score prompts --data attachments:NAME``.

A mixture predicts q = Σⱼ wⱼ·softmaxⱼ (mfgit.api.mixture). Searched weights
may be negative and need not sum to 1, so a row of q sums to Σⱼ wⱼ, not 1.
Dividing each row by its sum would make the loss blind to the weights'
scale (every positive multiple of w would score the same). The score is
instead the generalized KL divergence from the one-hot label to q, which
is defined for any non-negative q and equals the cross-entropy when
Σⱼ wⱼ = 1:

    loss(q, y) = −log max(q_y, ε) + Σ_c q_c − 1        (ε = EPSILON)

The floor keeps a class probability that a negative weight pushes to 0 or
below finite (a large loss, not NaN). Each member's softmax is that of the
prompt logits of `mfgit.api.prompts.PromptScore` (the site's own task
prompts, with member j's adapter active); losses are averaged per task over
its samples, then over tasks, as ``merge --score prompts`` does. The search
adds its l1 penalty (mfgit.api.mixture).

A member's softmax on a distilled set does not depend on the weights, and
a search changes only the weights: `MemberOutputs` computes it once per
member and dataset and sums the kept outputs for each candidate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence

from mfgit.api.prompts import NAME, PromptScore, check_labels, check_sites, task_means
from mfgit.errors import ScoreError

if TYPE_CHECKING:
    import torch

    from mfgit.api.sitedata import SiteData

EPSILON = 1e-6  # floor of q_y in the generalized KL
LOSS = "generalized_kl"


def generalized_kl(q: "torch.Tensor", labels: "torch.Tensor", eps: float = EPSILON) -> "torch.Tensor":
    """Per-sample KL(one-hot(y) ‖ q) for a possibly unnormalised q: −log max(q_y, ε) + Σ_c q_c − 1."""
    picked = q.gather(1, labels.unsqueeze(1)).squeeze(1).clamp(min=eps)
    return -picked.log() + q.sum(1) - 1.0


class MemberOutputs:
    """Each member's output on a dataset, kept: Σⱼ wⱼ·outputⱼ for any weights without another forward pass.

    Keys are (member commit, dataset key); `keep` (optional) is held with the
    output, so a key made of an object's id stays unique while the entry lives.
    """

    def __init__(self) -> None:
        self._kept: dict[tuple[str, Hashable], tuple[Any, Any]] = {}

    def mixed(self, commits: Sequence[str], weights: Sequence[float], key: Hashable,
              compute: Callable[[int], "torch.Tensor"], keep: Any = None) -> "torch.Tensor | None":
        """Σⱼ wⱼ·compute(j) in member order, skipping weight 0 (as the mixture module's forward does);
        None when every weight is 0."""
        total = None
        for j, (commit, w) in enumerate(zip(commits, weights)):
            if w == 0.0:
                continue
            hit = self._kept.get((commit, key))
            if hit is None:
                hit = self._kept[(commit, key)] = (keep, compute(j))
            p = hit[1] * w
            total = p if total is None else total + p
        return total


class MixturePromptScore:
    """``score(module, sites)`` of ``mix --score prompts``: the generalized KL of the mixture on each site's
    distilled set under its own task's prompts (see the module docstring)."""

    def __init__(self, prompts: PromptScore):
        self.prompts = prompts
        self.outputs = MemberOutputs()

    def record(self) -> dict[str, Any]:
        return {**self.prompts.record(), "epsilon": EPSILON,
                "objective": "generalized KL of sum_j w_j softmax_j to the one-hot label, "
                             "-log max(q_y, eps) + sum_c q_c - 1 (the cross-entropy when sum_j w_j = 1), "
                             "mean per task, then over tasks"}

    def member_probabilities(self, module, j: int, site: "SiteData") -> "torch.Tensor":
        """softmax of the prompt logits on `site` with member j's adapter active (float32, on the CPU)."""
        import torch

        module.peft_model.set_adapter(module.adapter_names[j])
        logits = self.prompts.site_logits(module.peft_model, site).float().cpu()
        check_labels(site, logits.shape[1])
        return torch.softmax(logits, dim=-1)

    def __call__(self, module, sites: Sequence["SiteData"]) -> dict[str, float]:
        import torch

        check_sites(sites)
        if not hasattr(module, "adapter_names"):
            raise ScoreError(NAME, "the built-in mixture score scores a mixture module (mfgit.api.mixture.load_mixture)")
        per_sample = []
        with torch.no_grad():
            for site in sites:
                q = self.outputs.mixed(module.commits, module.weights, (site.commit, site.name),
                                       lambda j, s=site: self.member_probabilities(module, j, s))
                if q is None:  # every weight 0: q = 0, the largest loss
                    q = torch.zeros_like(self.member_probabilities(module, 0, site))
                per_sample.append((site, generalized_kl(q, site.labels), q.argmax(1)))
        return task_means(per_sample, LOSS)
