"""The names of the merge strategies, without the table that computes them.

The table in :mod:`mfgit.merge.strategies` needs torch, which costs seconds to
import; ``mfgit merge --help`` and option checks only need the names. The
table checks at import that its keys are exactly these, in this order, so the
two cannot drift apart.
"""

from __future__ import annotations

STRATEGY_NAMES: tuple[str, ...] = (
    "linear", "task_arithmetic", "svd", "ties", "dare_linear", "dare_ties", "breadcrumbs", "della",
    "magnitude_prune", "tsv", "iso_c",
    "core_ties", "core_dare_linear", "core_dare_ties", "core_breadcrumbs", "core_della",
    "knots_ties", "knots_dare_linear", "knots_dare_ties",
    "model_stock", "slerp", "nuslerp", "karcher",
)
