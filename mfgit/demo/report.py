"""The demo's results: a text table, results.md, results.json and results.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _fmt(v: float) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _columns(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(test-set key, header label) in table order."""
    late = results["late_site"]
    cols = []
    for key in results["test_sets"]:
        label = key if key != late else f"{key}*"
        cols.append((key, label))
    return cols


def table_text(results: dict[str, Any]) -> str:
    """The table for a terminal: one row per model, accuracy and AUC per test set."""
    cols = _columns(results)
    sizes = results["test_sizes"]
    name_w = max(len("model"), *(len(r["name"]) for r in results["rows"]))
    titles = [f"{label} (n={sizes[key]})" for key, label in cols]
    cell_w = max(11, *(len(t) for t in titles))
    head1 = " " * name_w + "".join(f"  {t:<{cell_w}}" for t in titles)
    head2 = f"{'model':<{name_w}}" + "".join(f"  {'acc   AUC':<{cell_w}}" for _ in cols)
    lines = [head1.rstrip(), head2.rstrip(), "-" * len(head1.rstrip())]
    for row in results["rows"]:
        cells = "".join(f"  {_fmt(row['metrics'][k]['acc']) + ' ' + _fmt(row['metrics'][k]['auc']):<{cell_w}}"
                        for k, _ in cols)
        lines.append(f"{row['name']:<{name_w}}{cells}".rstrip())
    lines.append("(* arrives late; accuracy at threshold 0.5, AUC of P(malignant); test sets are each site's "
                 "held-out split, overall = their union)")
    if results.get("tuned"):
        lines.append(f"(tuned: {results['tuned']['how']})")
    return "\n".join(lines)


def table_markdown(results: dict[str, Any]) -> str:
    cols = _columns(results)
    sizes = results["test_sizes"]
    header = ["model", "commit"]
    for key, label in cols:
        header += [f"{label} acc", f"{label} AUC"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (2 * len(cols))) + "|"]
    for row in results["rows"]:
        cells = [row["name"], f"`{row['commit'][:10]}`" if row.get("commit") else "—"]
        for key, _ in cols:
            cells += [_fmt(row["metrics"][key]["acc"]), _fmt(row["metrics"][key]["auc"])]
        lines.append("| " + " | ".join(cells) + " |")
    check = results["async_integration"]
    sizes_txt = ", ".join(f"{k} {v}" for k, v in sizes.items())
    return "\n".join([
        "# mfgit demo results",
        "",
        results["about"],
        "",
        (f"Seed {results['seed']}. Test samples: {sizes_txt}. Sites marked * arrived late. "
        "Accuracy at threshold 0.5; AUC of P(malignant); computed with scikit-learn."),
        "",
        *lines,
        "",
        (f"Asynchronous integration: `main` after merging the late site {check['late_site']} into the linear "
        f"composite ({check['mode']}) vs the one-shot linear merge of all sites "
        f"(`composite/oneshot-check`): max |ΔW| difference {check['max_abs_diff']:.3g} "
        f"(largest |ΔW| entry {check['max_abs_delta']:.3g}; identical adapter object: {check['identical_adapter']})."),
        "",
        *_tuned_markdown(results),
    ])


def _tuned_markdown(results: dict[str, Any]) -> list[str]:
    """How the tuned row was made (docs/search-and-eval.md)."""
    tuned = results.get("tuned")
    if not tuned:
        return []
    ws = ", ".join(f"{label.rsplit('/', 1)[-1]} {w:.3f}" for label, w in tuned["weights"].items())
    opt = tuned["optimiser"]
    return [
        (f"Tuned composite (`composite/tuned`, `{tuned['commit'][:10]}`): {tuned['how']}. {opt['name']} "
         f"{opt['version']} ({opt['selected']}), budget {tuned['budget']}, bounds {tuned['bounds']}, "
         f"L1 {tuned['l1']}, seed {tuned['seed']}; public-split loss {tuned['start']['score']:.4f} with the "
         f"samples weights -> {tuned['chosen']['score']:.4f}; chosen weights: {ws}. Every vector tried is in "
         "the commit: `mfgit show --json composite/tuned`."),
        "",
    ]


def write_json(results: dict[str, Any], path: Path) -> None:
    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    path.write_text(json.dumps(clean(results), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_plot(results: dict[str, Any], path: Path) -> None:
    """A grouped bar plot: one group per test set, one bar per model; accuracy and AUC panels."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    cols = _columns(results)
    rows = results["rows"]
    fig, axes = plt.subplots(2, 1, figsize=(max(9, 1.9 * len(cols) + 3) + 3, 8), sharex=True)
    width = 0.8 / len(rows)
    xs = np.arange(len(cols))
    cmap = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20")
    for ax, metric, title in zip(axes, ("acc", "auc"), ("accuracy", "ROC AUC")):
        low = 1.0
        for i, row in enumerate(rows):
            vals = [row["metrics"][k][metric] for k, _ in cols]
            vals = [0.0 if v is None or math.isnan(v) else v for v in vals]
            low = min(low, *vals)
            hatch = "//" if row["kind"] == "integrated" else None
            ax.bar(xs + (i - (len(rows) - 1) / 2) * width, vals, width, label=row["name"], color=cmap(i % cmap.N),
                   hatch=hatch, edgecolor="white" if hatch else None, linewidth=0)
        ax.set_ylim(max(0.0, math.floor((low - 0.05) * 20) / 20), 1.0)
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(xs, [f"{label}\n(n={results['test_sizes'][k]})" for k, label in cols])
    axes[0].set_title("mfgit demo: base model, site adapters and composites on every site's test set")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right", frameon=False)
    fig.text(0.01, 0.005, "Tiny model, small tabular data set (sklearn breast cancer): a workflow demonstration, "
             "not a clinical model. * = late site.", fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 0.78, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(results: dict[str, Any], work: Path) -> list[str]:
    md = work / "results.md"
    md.write_text(table_markdown(results), encoding="utf-8")
    png = work / "results.png"
    write_plot(results, png)
    write_json(results, work / "results.json")
    return [str(work / "results.json"), str(md), str(png)]


def next_steps(work: Path, initial: list[str], late: str, *, lineage_page: bool = False) -> str:
    coord = work / "coordinator"
    commands = [
        ("mfgit log --graph", "main: the composite, then the late site integrated into it"),
        ("mfgit show HEAD", "the integrated composite and its merge provenance"),
        ("mfgit show --json HEAD", "the full recipe: strategy, leaves, weights, seed, kept energy"),
        (f"mfgit show origin/sites/{initial[0]}", "a site commit: author, site, samples, epochs, lr, val_auc"),
        ("mfgit lineage main", "the sites inside main, with their effective weights"),
        ("mfgit diff main composite/oneshot-check", "late integration == one-shot merge: identical"),
        ("mfgit branch -a", "composite/* here, origin/sites/* from the hub"),
        ("mfgit checkout HEAD --to composite/", "the composite as a PEFT adapter directory"),
        ("mfgit verify --reproduce main", "re-run every merge from its recorded recipe"),
        ("mfgit show --json composite/tuned", "the search: optimiser, seed, every weight vector tried, its score"),
    ]
    width = max(len(c) for c, _ in commands)
    sites = " ".join(f"origin/sites/{n}" for n in [*initial, late])
    lines = ["What to try next:", f"  cd {coord}"]
    lines += [f"  {c:<{width}}  # {why}" for c, why in commands]
    lines += [
        "Try another strategy on a branch of its own:",
        f"  mfgit switch --orphan try && mfgit merge {sites} -s dare_ties --weights-from samples",
        "Load a composite onto the base model with PEFT:",
        ("  python -c \"from mfgit.api.repository import Repository; from mfgit.demo.model import load_base; "
         f"m = Repository.open('{coord}').load_adapter(load_base('{work / 'base'}'), 'main'); print(m)\""),
    ]
    if lineage_page:
        lines.append(f"Open {work / 'lineage.html'} in a browser: who contributed what to main, with weights.")
    return "\n".join(lines)
