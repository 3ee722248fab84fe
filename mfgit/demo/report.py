"""The demo's results: the table, the targets, results.md, results.json and results.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

COMPOSITE_KINDS = ("composite", "integrated", "fusion", "mixture")


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def loads(text: str) -> Any:
    return json.loads(text)


def _fmt(v: float | None) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _columns(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(test-set key, header label) in table order; the late site's task gets a *."""
    late_task = results["site_tasks"][results["late_site"]]
    return [(k, f"{k}*" if k == late_task else k) for k in results["test_sets"]]


def table_text(results: dict[str, Any]) -> str:
    """The table for a terminal: one row per model, accuracy and AUC per task, macro last."""
    cols = _columns(results)
    sizes = results["test_sizes"]
    name_w = max(len("model"), *(len(r["name"]) for r in results["rows"]))
    titles = [f"{label} (n={sizes[key]})" if key in sizes else label for key, label in cols]
    cell_w = max(11, *(len(t) for t in titles))
    head1 = " " * name_w + "".join(f"  {t:<{cell_w}}" for t in titles)
    head2 = f"{'model':<{name_w}}" + "".join(f"  {'acc   AUC':<{cell_w}}" for _ in cols)
    lines = [head1.rstrip(), head2.rstrip(), "-" * len(head2.rstrip())]
    for row in results["rows"]:
        cells = "".join(f"  {_fmt(row['metrics'][k]['acc']) + ' ' + _fmt(row['metrics'][k]['auc']):<{cell_w}}"
                        for k, _ in cols)
        lines.append(f"{row['name']:<{name_w}}{cells}".rstrip())
    lines.append("(* the late site's task; accuracy of the argmax class, AUC of the positive class; each task's "
                 "held-out test split; macro = mean over tasks, the headline)")
    return "\n".join(lines)


def targets(results: dict[str, Any], time_limit_s: float) -> list[dict[str, Any]]:
    """The demo's targets, each with the numbers it was judged on and whether it is met."""
    rows = results["rows"]
    tasks = [k for k in results["test_sets"] if k != "macro"]
    sites = [r for r in rows if r["kind"] == "site"]
    comps = [r for r in rows if r["kind"] in COMPOSITE_KINDS]
    best = max(comps, key=lambda r: r["metrics"]["macro"]["acc"])
    best_site = max(sites, key=lambda r: r["metrics"]["macro"]["acc"])
    out = [{"target": "best composite macro accuracy > every single-site adapter's",
            "value": f"{best['name']} {best['metrics']['macro']['acc']:.3f} vs best site {best_site['name']} "
                     f"{best_site['metrics']['macro']['acc']:.3f}",
            "met": best["metrics"]["macro"]["acc"] > best_site["metrics"]["macro"]["acc"]}]
    own = {results["site_tasks"][r["site"]]: r for r in sites}
    for task in tasks:
        top = max(comps, key=lambda r: r["metrics"][task]["acc"])
        gap = own[task]["metrics"][task]["acc"] - top["metrics"][task]["acc"]
        out.append({"target": f"{task}: best composite within 3 accuracy points of the task's own adapter",
                    "value": f"{top['name']} {top['metrics'][task]['acc']:.3f} vs own "
                             f"{own[task]['metrics'][task]['acc']:.3f} (gap {100 * gap:+.1f} points)",
                    "met": gap <= 0.03 + 1e-12})
    fusion = next(r for r in rows if r["kind"] == "fusion")
    uniform = next(r for r in rows if r.get("strategy") == "uniform-all")
    out.append({"target": "MedForge-Fusion macro accuracy >= uniform linear of the same sites",
                "value": f"{fusion['metrics']['macro']['acc']:.3f} vs {uniform['metrics']['macro']['acc']:.3f}",
                "met": fusion["metrics"]["macro"]["acc"] >= uniform["metrics"]["macro"]["acc"]})
    out.append({"target": f"{'--quick ' if results['quick'] else ''}demo within {time_limit_s:.0f} s",
                "value": "measured at the end", "met": None, "limit_s": time_limit_s})
    return out


def finish_targets(results: dict[str, Any]) -> None:
    """Fill in the time target once the total is known."""
    for t in results["targets"]:
        if "limit_s" in t:
            total = results["timings_s"]["total"]
            t["value"] = f"{total:.1f} s"
            t["met"] = total <= t["limit_s"]


def targets_text(results: dict[str, Any]) -> str:
    lines = ["Targets:"]
    for t in results["targets"]:
        mark = {True: "met    ", False: "NOT met", None: "  ...  "}[t["met"]]
        lines.append(f"  [{mark}] {t['target']}: {t['value']}")
    return "\n".join(lines)


def table_markdown(results: dict[str, Any]) -> str:
    cols = _columns(results)
    header = ["model", "commit"]
    for _key, label in cols:
        header += [f"{label} acc", f"{label} AUC"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (2 * len(cols))) + "|"]
    for row in results["rows"]:
        cells = [row["name"], f"`{row['commit'][:10]}`" if row.get("commit") else "—"]
        for key, _ in cols:
            cells += [_fmt(row["metrics"][key]["acc"]), _fmt(row["metrics"][key]["auc"])]
        lines.append("| " + " | ".join(cells) + " |")
    check = results["async_integration"]
    fusion = results["fusion"]
    sizes_txt = ", ".join(f"{k} {v}" for k, v in results["test_sizes"].items())
    mixture = results["mixture"]
    ws = ", ".join(f"{s} {w:.3f}" for s, w in mixture["weights"].items())
    stages = "; ".join(f"{st['adds'].rsplit('/', 1)[-1]} joins: a = {st['a']:.3f}, b = {st['b']:.3f}, distilled "
                       f"loss {st['start']['score']:.4f} at the default weights -> {st['chosen']['score']:.4f}"
                       for st in mixture["stages"])
    last = mixture["stages"][-1]
    return "\n".join([
        "# mfgit demo results", "", results["about"], "",
        f"Seed {results['seed']}{' (--quick)' if results['quick'] else ''}. Test records: {sizes_txt}. "
        "The task marked * is the late site's. Accuracy of the argmax class; AUC of the positive class; "
        "computed with scikit-learn; macro = mean over tasks.", "",
        *lines, "",
        f"Asynchronous integration: `main` after merging the late site {check['late_site']} into the linear "
        f"composite ({check['mode']}) vs the one-shot linear merge of all sites (`composite/oneshot-check`): "
        f"max |ΔW| difference {check['max_abs_diff']:.3g}; identical adapter object: {check['identical_adapter']}.",
        "",
        f"MedForge-Fusion (`composite/fusion`): {fusion['how']}; {fusion['optimiser']['name']}, budget "
        f"{fusion['budget']}, bounds {fusion['bounds']}, L1 {fusion['l1']}; distilled loss "
        f"{fusion['start']['score']:.4f} at the start weights -> {fusion['chosen']['score']:.4f}.", "",
        f"MedForge-Mixture (`composite/mixture`): {mixture['how']}; {last['optimiser']['name']}, budget "
        f"{last['budget']} per stage, bounds {last['bounds']}, L1 {last['l1']}; stages: {stages}; weights {ws}.",
        "",
        targets_text(results).replace("\n  ", "\n- ").replace("Targets:", "## Targets\n"), "",
    ])


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
    """Grouped bars: one group per task (macro last), one bar per model; accuracy and AUC panels."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    cols = _columns(results)
    rows = results["rows"]
    fig, axes = plt.subplots(2, 1, figsize=(max(9, 1.9 * len(cols) + 3) + 4, 8), sharex=True)
    width = 0.8 / len(rows)
    xs = np.arange(len(cols))
    cmap = plt.get_cmap("tab20")
    for ax, metric, title in zip(axes, ("acc", "auc"), ("accuracy", "ROC AUC")):
        for i, row in enumerate(rows):
            vals = [row["metrics"][k][metric] for k, _ in cols]
            vals = [0.0 if v is None or math.isnan(v) else v for v in vals]
            hatch = "//" if row["kind"] in ("fusion", "mixture") else None
            ax.bar(xs + (i - (len(rows) - 1) / 2) * width, vals, width, label=row["name"], color=cmap(i % cmap.N),
                   hatch=hatch, edgecolor="white" if hatch else None, linewidth=0)
        ax.set_ylim(0.0, 1.0)
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(xs, [label for _k, label in cols])
    axes[0].set_title("mfgit demo: zero-shot base, site adapters and composites on every task's test split")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right", frameon=False)
    fig.text(0.01, 0.005, "all-MiniLM-L6-v2 + LoRA on small public clinical tables: a workflow demonstration, "
             "not a clinical model. * = late site's task.", fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 0.74, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(results: dict[str, Any], work: Path) -> list[str]:
    md = work / "results.md"
    md.write_text(table_markdown(results), encoding="utf-8")
    png = work / "results.png"
    write_plot(results, png)
    write_json(results, work / "results.json")
    return [str(work / "results.json"), str(md), str(png)]


def repeat_stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per row and test set (every task, then macro): mean and spread (half the range) of accuracy and AUC
    over seeded runs, and how many runs met each target."""
    import numpy as np

    first = runs[0]
    rows = []
    for i, row in enumerate(first["rows"]):
        cells = {}
        for key in first["test_sets"]:
            cells[key] = {}
            for metric in ("acc", "auc"):
                v = np.array([r["rows"][i]["metrics"][key][metric] for r in runs], dtype=float)
                v = v[~np.isnan(v)]  # an AUC is undefined on a split of one class
                cells[key][metric] = ({"mean": float(v.mean()), "spread": float((v.max() - v.min()) / 2),
                                       "n": int(len(v))} if len(v) else None)
        rows.append({"name": row["name"], "kind": row["kind"], "metrics": cells})
    met = [{"target": t["target"], "met": sum(1 for r in runs if r["targets"][j]["met"]), "runs": len(runs)}
           for j, t in enumerate(first["targets"])]
    return {"seeds": [r["seed"] for r in runs], "quick": first["quick"], "test_sets": first["test_sets"],
            "site_tasks": first["site_tasks"], "late_site": first["late_site"], "rows": rows, "targets": met}


def _pm(cell: dict[str, float] | None, runs: int) -> str:
    """mean±spread; over fewer runs than there were (a value undefined in some), it says over how many."""
    if cell is None:
        return "n/a"
    text = f"{cell['mean']:.3f}±{cell['spread']:.3f}"
    return text if cell["n"] == runs else f"{text} ({cell['n']}/{runs})"


def repeat_summary(runs: list[dict[str, Any]]) -> str:
    """The demo's table over seeded runs: every cell is mean ± spread (half the range), then the targets
    with how many runs met each."""
    stats = repeat_stats(runs)
    cols = _columns(stats)
    name_w = max(len("model"), *(len(r["name"]) for r in stats["rows"]))
    cell_w = 2 * len("0.000±0.000") + 1
    lines = [f"Over {len(runs)} seeds ({', '.join(str(s) for s in stats['seeds'])}): accuracy and AUC per test set, "
             "mean ± half the range",
             (" " * name_w + "".join(f"  {label:<{cell_w}}" for _k, label in cols)).rstrip(),
             f"{'model':<{name_w}}" + "".join(f"  {'acc':<12}{'AUC':<{cell_w - 12}}" for _ in cols).rstrip()]
    lines.append("-" * len(lines[-1]))
    for row in stats["rows"]:
        cells = "".join(f"  {_pm(row['metrics'][k]['acc'], len(runs))} {_pm(row['metrics'][k]['auc'], len(runs)):<11}"
                        for k, _ in cols)
        lines.append(f"{row['name']:<{name_w}}{cells}".rstrip())
    lines.append("Targets met:")
    lines += [f"  {t['met']}/{t['runs']}  {t['target']}" for t in stats["targets"]]
    return "\n".join(lines)


def repeat_markdown(runs: list[dict[str, Any]]) -> str:
    stats = repeat_stats(runs)
    cols = _columns(stats)
    header = ["model"] + [f"{label} {m}" for _k, label in cols for m in ("acc", "AUC")]
    lines = ["# mfgit demo over several seeds", "",
             f"Seeds {', '.join(str(s) for s in stats['seeds'])}{' (--quick)' if stats['quick'] else ''}: every cell "
             "is the mean ± half the range over the runs (each run's own table is in seed-K/results.md).", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (2 * len(cols))) + "|"]
    for row in stats["rows"]:
        lines.append("| " + " | ".join([row["name"]] + [_pm(row["metrics"][k][m], len(runs)) for k, _ in cols
                                                        for m in ("acc", "auc")]) + " |")
    lines += ["", "## Targets met", ""] + [f"- {t['met']}/{t['runs']}: {t['target']}" for t in stats["targets"]]
    return "\n".join(lines) + "\n"


def write_repeat(runs: list[dict[str, Any]], root: Path) -> list[str]:
    """repeat.md and repeat.json (the statistics) in the directory that holds the seed-K runs."""
    (root / "repeat.md").write_text(repeat_markdown(runs), encoding="utf-8")
    write_json(repeat_stats(runs), root / "repeat.json")
    return [str(root / "repeat.md"), str(root / "repeat.json")]


def next_steps(work: Path, initial: list[str], late: str, *, lineage_page: bool = False) -> str:
    coord = work / "coordinator"
    commands = [
        ("mfgit log --graph", "main: the composite, then the late site integrated into it"),
        ("mfgit show HEAD", "the integrated composite and its merge provenance"),
        ("mfgit show --json HEAD", "the full recipe: strategy, leaves, weights, seed"),
        (f"mfgit show origin/sites/{initial[0]}", "a site commit: author, site, task, samples, epochs, lr, val_auc"),
        ("mfgit lineage main", "the sites inside main, with their effective weights"),
        ("mfgit diff main composite/oneshot-check", "late integration == one-shot merge: identical"),
        ("mfgit branch -a", "composite/* here, origin/sites/* from the hub"),
        ("mfgit checkout HEAD --to composite/", "the composite as a PEFT adapter directory"),
        ("mfgit verify --reproduce main", "re-run every merge from its recorded recipe"),
        ("mfgit show --json composite/fusion", "Fusion's search: optimiser, every weight vector tried, its score"),
        ("mfgit show composite/mixture", "the mixture's members with their searched weights"),
        ("mfgit log --graph composite/mixture", "the mixture's stages: one site joining each, the late site last"),
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
         f"m = Repository.open('{coord}').load_adapter(load_base(), 'main'); print(m)\""),
    ]
    if lineage_page:
        lines.append(f"Open {work / 'lineage.html'} in a browser: who contributed what to main, with weights.")
    return "\n".join(lines)
