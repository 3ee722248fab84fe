"""`mfgit demo`: the MedForge workflow, for real, on a laptop CPU in about a minute.

What happens (every step through mfgit's public Python API, so that what
is left on disk can be explored with ordinary ``mfgit`` commands):

1. a shared hub: a bare repository ``WORKDIR/hub.mfgit`` (or the S3 URL in
   ``MFGIT_DEMO_REMOTE``);
2. a small foundation model (:mod:`mfgit.demo.model`) is pre-trained on a
   public 20 % of the Wisconsin breast-cancer data bundled with scikit-learn
   (:mod:`mfgit.demo.data`) and saved as ``WORKDIR/base/`` (config.json +
   model.safetensors);
3. N hospitals, each with its own repository ``WORKDIR/sites/<name>/`` and a
   non-IID share of the rest of the data, train a LoRA adapter with PEFT on
   their own data only, commit it on ``sites/<name>`` with provenance
   metadata and push it to the hub;
4. the coordinator (``WORKDIR/coordinator/``) fetches and merges the sites
   with several strategies (linear weighted by samples, TIES, SVD at rank 8),
   one commit each on ``composite/<strategy>``, ``main`` = the linear one;
5. one more hospital arrives late, pushes, and the coordinator integrates
   it into ``main`` asynchronously; the result is checked against the
   one-shot merge of all sites; then a *tuned* composite of all sites
   (``composite/tuned``): the per-site weights of the linear merge searched
   with nevergrad's NGOpt on the coordinator's own public validation split
   (site data never leaves a site; docs/search-and-eval.md);
6. every model is evaluated on every site's held-out test set (scikit-learn
   metrics), and the table is printed and written to ``results.{json,md,png}``.

A tiny model on a small tabular data set: a demonstration of the workflow,
not a clinical model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mfgit.errors import DemoError

SITE_NAMES = ["amsterdam", "boston", "chennai", "dakar", "edinburgh", "fukuoka", "geneva", "houston", "izmir"]
MIN_SITES, MAX_SITES = 2, len(SITE_NAMES) - 1

PRETRAIN = {"epochs": 20, "lr": 3e-3, "batch_size": 32}
LORA = {"r": 8, "lora_alpha": 16, "epochs": 25, "lr": 5e-3, "batch_size": 32}
TIES_DENSITY = 0.2  # the TIES paper's k = 20 %
SVD_RANK = 8
# The tuned composite: per-site weights searched like MedForge/LoraHub (NGOpt, 40 steps, bounds ±1.5,
# L1 0.05), scored on the coordinator's own public validation split — never on a site's data.
TUNE = {"budget": 40, "bounds": (-1.5, 1.5), "l1": 0.05}

ABOUT = ("A tiny transformer (about 19 k parameters; the 30 features of a sample are its tokens) on the "
         "Wisconsin Diagnostic Breast Cancer data bundled with scikit-learn (569 samples, 30 features): "
         "a demonstration of the workflow, not a clinical model.")


def _site_names(n: int) -> tuple[list[str], str]:
    if not MIN_SITES <= n <= MAX_SITES:
        raise DemoError(f"--sites {n} is out of range (give {MIN_SITES} to {MAX_SITES} sites)")
    return SITE_NAMES[:n], SITE_NAMES[n]


def _hub_url(workdir: Path) -> tuple[str, dict[str, str]]:
    url = os.environ.get("MFGIT_DEMO_REMOTE", "")
    if url.startswith("s3://"):
        opts = {}
        if os.environ.get("MFGIT_DEMO_S3_ENDPOINT"):
            opts["endpoint"] = os.environ["MFGIT_DEMO_S3_ENDPOINT"]
        return url, opts
    return str(workdir / "hub.mfgit"), {}


def run_demo(workdir: str | os.PathLike = "mfgit-demo", sites: int = 3, seed: int = 0,
             progress: Callable[[str], Any] | None = print) -> dict[str, Any]:
    """Run the whole workflow into `workdir` (which must be empty or absent); return the results.

    Reproducible: the same `seed` gives the same data splits, weights,
    adapters (the same adapter ids) and numbers. Runs on one CPU thread;
    the caller's torch thread count and RNG state are restored afterwards.
    """
    say = progress or (lambda _msg: None)
    initial, late = _site_names(sites)
    work = Path(workdir).absolute()
    if work.exists() and (not work.is_dir() or any(work.iterdir())):
        raise DemoError(f"{work} exists and is not empty (remove it, or name another directory: mfgit demo DIR)")
    # Nothing here may reach the network (PEFT would only look at the Hub for
    # embedding layers, which the demo does not adapt; this makes sure).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small is fastest, and reproducible, on one thread
    try:
        with torch.random.fork_rng(devices=[]):
            return _run(work, initial, late, seed, say)
    finally:
        torch.set_num_threads(threads)


def _run(work: Path, initial: list[str], late: str, seed: int, say: Callable[[str], Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from mfgit.api.repository import Repository
    from mfgit.demo import report
    from mfgit.demo.data import load_demo_data
    from mfgit.demo.model import LORA_TARGETS, MODEL_NAME, build_base, load_base, save_base
    from mfgit.demo.train import metrics, predict_proba, train

    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t: float) -> None:
        timings[name] = round(time.perf_counter() - t, 3)

    say("mfgit demo: the MedForge multi-site workflow, for real, on this CPU")
    say(f"  {ABOUT}")
    say(f"  work directory: {work}")
    work.mkdir(parents=True, exist_ok=True)

    # 1. the shared hub ---------------------------------------------------------------------
    hub_url, hub_opts = _hub_url(work)
    if hub_url.startswith("s3://"):
        say(f"[1/6] hub: {hub_url} (S3)")
    else:
        Repository.init(hub_url, bare=True)
        say(f"[1/6] hub: bare repository {hub_url}")

    # 2. data and the foundation model ----------------------------------------------------
    t = time.perf_counter()
    data = load_demo_data([*initial, late], seed=seed)
    pub = data.public
    base = build_base(seed=seed)
    loss = train(base, pub.x_train, pub.y_train, epochs=PRETRAIN["epochs"], lr=PRETRAIN["lr"],
                 batch_size=PRETRAIN["batch_size"], seed=seed)
    pub_metrics = metrics(pub.y_test, predict_proba(base, pub.x_test))
    base_dir = work / "base"
    pretraining = {"data": "public 20% of sklearn load_breast_cancer", "samples": len(pub.y_train),
                   **PRETRAIN, "seed": seed, "final_loss": round(loss, 6),
                   "val_acc": pub_metrics["acc"], "val_auc": pub_metrics["auc"]}
    save_base(base, base_dir, extra={
        "normalizer": {"mean": data.mean.tolist(), "std": data.std.tolist(), "features": data.feature_names},
        "pretraining": pretraining,
        "description": ABOUT,
    })
    lap("pretrain", t)
    say(f"[2/6] foundation model pre-trained on {len(pub.y_train)} public samples "
        f"({PRETRAIN['epochs']} epochs): validation acc {pub_metrics['acc']:.3f}, AUC {pub_metrics['auc']:.3f} "
        f"-> {base_dir}")
    for s in data.sites:
        sm = s.summary()
        say(f"      site {s.name:<10} train {sm['train']:>3}  test {sm['test']:>3}  "
            f"malignant {sm['malignant_fraction']:.0%}{'  (arrives late)' if s.name == late else ''}")

    splits = {s.name: s for s in data.sites}

    def site_round(name: str, index: int) -> dict[str, Any]:
        """One hospital: init, train a LoRA on its own data, commit with provenance, push."""
        from peft import LoraConfig, get_peft_model

        split = splits[name]
        repo = Repository.init(work / "sites" / name, site=name)
        repo.config.set("user.name", f"{name.capitalize()} hospital ML team")
        repo.config.set("user.email", f"ml@{name}.hospital.example")
        repo.remote_add("origin", hub_url, **hub_opts)
        repo.switch(f"sites/{name}", orphan=True)
        site_seed = seed * 1000 + 101 + index
        torch.manual_seed(site_seed)  # PEFT initialises lora_A from the global RNG
        cfg = LoraConfig(target_modules=list(LORA_TARGETS), r=LORA["r"], lora_alpha=LORA["lora_alpha"],
                         lora_dropout=0.0)
        cfg.base_model_name_or_path = MODEL_NAME
        model = get_peft_model(load_base(base_dir), cfg)
        train(model, split.x_train, split.y_train, epochs=LORA["epochs"], lr=LORA["lr"],
              batch_size=LORA["batch_size"], seed=site_seed)
        # val_*: on the site's own held-out split (its column in the final table)
        val = metrics(split.y_test, predict_proba(model, split.x_test))
        out = work / "sites" / name / "adapter"
        model.save_pretrained(str(out), save_embedding_layers=False)
        _sort_target_modules(out / "adapter_config.json")
        meta = {"samples": len(split.y_train), "epochs": LORA["epochs"], "lr": LORA["lr"],
                "seed": site_seed, "val_acc": round(val["acc"], 6), "val_auc": round(val["auc"], 6),
                "malignant_fraction": round(float(split.y_train.mean()), 6),
                "data": "sklearn load_breast_cancer, site share"}
        info = repo.commit(out, f"{name}: LoRA r={LORA['r']} on {meta['samples']} local samples", meta=meta)
        repo.push("origin", [f"sites/{name}"])
        return {"site": name, "commit": info.id, "adapter": info.commit.adapter, "meta": meta}

    # 3. the sites ----------------------------------------------------------------------------
    t = time.perf_counter()
    site_commits: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(initial):
        site_commits[name] = site_round(name, i)
        m = site_commits[name]["meta"]
        say(f"[3/6] site {name}: trained LoRA r={LORA['r']} on {m['samples']} samples "
            f"(val acc {m['val_acc']:.3f}, AUC {m['val_auc']:.3f}); committed "
            f"{site_commits[name]['commit'][:10]} on sites/{name}, pushed to the hub")
    lap("sites", t)

    # 4. the coordinator: fetch and merge -------------------------------------------------------
    t = time.perf_counter()
    coord = Repository.init(work / "coordinator")
    coord.config.set("user.name", "MedForge coordinator")
    coord.config.set("user.email", "coordinator@medforge.example")
    coord.remote_add("origin", hub_url, **hub_opts)
    coord.fetch("origin")
    revs = [f"origin/sites/{n}" for n in initial]
    merges: dict[str, Any] = {}
    # main is unborn: the first merge creates it
    # rank "sum": the exact weighted sum (rank 8 per site, concatenated), no truncation
    merges["linear"] = coord.merge(revs, strategy="linear", weights_from="samples", rank="sum",
                                   message=f"Composite of {len(initial)} sites: linear, weighted by samples")
    coord.create_branch("composite/linear", "main")
    coord.switch("composite/ties", orphan=True)
    merges["ties"] = coord.merge(revs, strategy="ties", weights_from="samples", density=TIES_DENSITY,
                                 rank=LORA["r"],
                                 message=f"Composite of {len(initial)} sites: TIES (density {TIES_DENSITY}, rank {LORA['r']})")
    coord.switch("composite/svd", orphan=True)
    merges["svd"] = coord.merge(revs, strategy="svd", weights_from="samples", rank=SVD_RANK,
                                message=f"Composite of {len(initial)} sites: SVD to rank {SVD_RANK}")
    coord.switch("main")
    coord.push("origin", ["main", "composite/linear", "composite/ties", "composite/svd"])
    lap("merge", t)
    for k, rep in merges.items():
        e = rep.provenance["kept_energy"]
        say(f"[4/6] coordinator: merged {len(initial)} sites with {k:<6} -> {rep.commit[:10]} "
            f"(kept energy min {e['min']:.3f}){'  = main' if k == 'linear' else ''}")

    # 5. a late site, integrated asynchronously -------------------------------------------------
    t = time.perf_counter()
    site_commits[late] = site_round(late, len(initial))
    m = site_commits[late]["meta"]
    say(f"[5/6] site {late} arrives late: trained on {m['samples']} samples (val acc {m['val_acc']:.3f}, "
        f"AUC {m['val_auc']:.3f}), pushed {site_commits[late]['commit'][:10]} on sites/{late}")
    coord.fetch("origin")
    integrated = coord.merge([f"origin/sites/{late}"], message=f"Integrate late site {late} into the composite")
    mode = integrated.provenance["integration"]["mode"]
    coord.switch("composite/oneshot-check", orphan=True)
    oneshot = coord.merge([*revs, f"origin/sites/{late}"], strategy="linear", weights_from="samples", rank="sum",
                          message=f"Check: one-shot linear merge of all {len(initial) + 1} sites")
    coord.switch("main")
    check = delta_difference(coord, integrated.commit, oneshot.commit)
    coord.push("origin", ["main", "composite/oneshot-check"])
    lap("late_site", t)
    say(f"      coordinator: integrated {late} into main ({mode}) -> {integrated.commit[:10]}; "
        f"max |dW| difference to the one-shot merge of all {len(initial) + 1} sites: {check['max_abs_diff']:.3g} "
        f"(largest |dW| entry {check['max_abs_delta']:.3g}; identical adapter: {check['identical_adapter']})")

    # 5b. a tuned composite: the per-site weights searched on data the coordinator has -------------
    t = time.perf_counter()
    coord.switch("composite/tuned", orphan=True)
    tuned = coord.merge([*revs, f"origin/sites/{late}"], strategy="linear", weights_from="samples", rank="sum",
                        search="weights", score=public_loss, base=load_base(base_dir), data=(pub.x_test, pub.y_test),
                        budget=TUNE["budget"], bounds=TUNE["bounds"], l1=TUNE["l1"], seed=seed,
                        message=(f"Tuned composite of {len(initial) + 1} sites: linear, weights searched on the "
                                 f"public validation split"))
    coord.switch("main")
    coord.push("origin", ["composite/tuned"])
    lap("tune", t)
    search = tuned.provenance["search"]
    tuned_info = {
        "commit": tuned.commit, "branch": "composite/tuned", "adapter": tuned.adapter,
        "how": (f"per-site weights searched by {search['optimiser']['name']} ({search['optimiser']['selected']}) "
                f"on the coordinator's public validation split ({len(pub.y_test)} samples, cross-entropy); "
                "no site data leaves a site"),
        "optimiser": search["optimiser"], "budget": search["budget"], "bounds": search["bounds"],
        "l1": search["l1"], "seed": search["seed"], "scored": search["scored"],
        "start": search["start"], "chosen": search["chosen"],
        "weights": {inp["label"]: inp["weight"] for inp in tuned.provenance["inputs"]},
    }
    ws = ", ".join(f"{lbl.rsplit('/', 1)[-1]} {w:.3f}" for lbl, w in tuned_info["weights"].items())
    say(f"      coordinator: tuned composite -> {tuned.commit[:10]} on composite/tuned: {tuned_info['how']}; "
        f"{search['scored']} weight vectors scored in {search['seconds']:.1f} s, public loss "
        f"{search['start']['score']:.4f} (weights by samples) -> {search['chosen']['score']:.4f}; weights {ws}")

    # 6. evaluation --------------------------------------------------------------------------------
    t = time.perf_counter()
    all_sites = [*initial, late]
    rows: list[dict[str, Any]] = [{"name": "base model", "kind": "base", "rev": None, "commit": None}]
    for name in all_sites:
        rows.append({"name": f"site {name}" + (" (late)" if name == late else ""), "kind": "site",
                     "rev": f"origin/sites/{name}", "commit": site_commits[name]["commit"]})
    for k in ("linear", "ties", "svd"):
        rows.append({"name": f"composite {k} ({len(initial)} sites)", "kind": "composite",
                     "rev": f"composite/{k}", "commit": merges[k].commit, "strategy": k})
    rows.append({"name": f"main: linear + {late} ({len(all_sites)} sites)", "kind": "integrated",
                 "rev": "main", "commit": integrated.commit, "strategy": "linear"})
    rows.append({"name": f"tuned: linear, searched on public split ({len(all_sites)} sites)", "kind": "tuned",
                 "rev": "composite/tuned", "commit": tuned.commit, "strategy": "linear"})
    say(f"[6/6] evaluating {len(rows)} models on {len(all_sites)} held-out test sets (each loaded from the "
        f"coordinator's repository onto a fresh base model with PEFT)")
    x_all = np.concatenate([splits[n].x_test for n in all_sites])
    y_all = np.concatenate([splits[n].y_test for n in all_sites])
    for row in rows:
        model = load_base(base_dir)
        if row["rev"] is not None:
            model = coord.load_adapter(model, row["rev"])
        scores = {n: metrics(splits[n].y_test, predict_proba(model, splits[n].x_test)) for n in all_sites}
        scores["overall"] = metrics(y_all, predict_proba(model, x_all))
        row["metrics"] = scores
    lap("evaluate", t)

    results: dict[str, Any] = {
        "about": ABOUT,
        "seed": seed,
        "workdir": str(work),
        "hub": hub_url,
        "model": {"name": MODEL_NAME, "path": str(base_dir), "lora": {**LORA, "target_modules": list(LORA_TARGETS)},
                  "pretraining": pretraining},
        "data": data.describe(),
        "sites": initial,
        "late_site": late,
        "test_sets": [*all_sites, "overall"],
        "test_sizes": {**{n: len(splits[n].y_test) for n in all_sites}, "overall": len(y_all)},
        "site_commits": site_commits,
        "merges": {k: {"commit": v.commit, "branch": f"composite/{k}", "adapter": v.adapter,
                       "kept_energy": v.provenance["kept_energy"]} for k, v in merges.items()},
        "async_integration": {"late_site": late, "integrated": integrated.commit, "mode": mode,
                              "oneshot": oneshot.commit, **check},
        "tuned": tuned_info,
        "rows": rows,
    }
    table = report.table_text(results)
    say("")
    say(table)
    t = time.perf_counter()
    files = report.write_all(results, work)
    lineage_page = _lineage_page(coord, work / "lineage.html")
    if lineage_page:
        files.append(lineage_page)
    lap("report", t)
    timings["total"] = round(time.perf_counter() - t_start, 3)
    results["timings_s"] = timings
    report.write_json(results, work / "results.json")
    say("")
    say(f"Wrote {', '.join(str(Path(f).relative_to(work)) for f in files)} in {work}")
    say(f"Done in {timings['total']:.1f} s. Numbers are from this run (seed {seed}); the table is tiny-sample "
        f"statistics of a toy model ({results['test_sizes']['overall']} test samples in all).")
    say("")
    say(report.next_steps(work, initial, late, lineage_page=bool(lineage_page)))
    return results


def public_loss(model, data) -> float:
    """The tuned composite's score: cross-entropy on the public validation split (lower is better)."""
    import torch
    from torch.nn import functional as F

    x, y = data
    with torch.no_grad():
        return float(F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)))


def delta_difference(repo, rev_a: str, rev_b: str) -> dict[str, Any]:
    """Max |ΔW_a − ΔW_b| over every adapted module (ΔW = scaling · B · A, in float64)."""
    from mfgit.formats import peft as peftfmt

    a = repo.read_adapter(repo.read_commit(repo.resolve(rev_a)).adapter)
    b = repo.read_adapter(repo.read_commit(repo.resolve(rev_b)).adapter)
    a_id = repo.read_commit(repo.resolve(rev_a)).adapter
    b_id = repo.read_commit(repo.resolve(rev_b)).adapter

    def delta(adapter, module: str):
        m = adapter.modules.get(module)
        if m is None:
            return None
        A = repo.load_tensor(adapter.tensors[m["lora_A"]]["id"]).double()
        B = repo.load_tensor(adapter.tensors[m["lora_B"]]["id"]).double()
        _r, _alpha, s = peftfmt.module_scaling(adapter.config, module, m["r"])
        return s * (B @ A)

    worst, biggest = 0.0, 0.0
    modules = sorted(set(a.modules) | set(b.modules))
    for module in modules:
        da, db = delta(a, module), delta(b, module)
        if da is None or db is None:
            present = da if da is not None else db
            worst = max(worst, float(present.abs().max()))
            continue
        worst = max(worst, float((da - db).abs().max()))
        biggest = max(biggest, float(da.abs().max()))
    return {"max_abs_diff": worst, "max_abs_delta": biggest, "modules": len(modules),
            "identical_adapter": a_id == b_id}


def _lineage_page(repo, path: Path) -> str | None:
    """The lineage of main as one HTML page."""
    from mfgit.render.html import lineage_html

    try:
        path.write_text(lineage_html(repo.lineage("main")), encoding="utf-8")
    except Exception:  # noqa: BLE001 - the demo never fails on an optional extra
        return None
    return str(path)


def _sort_target_modules(config_path: Path) -> None:
    """Write PEFT's target_modules in sorted order.

    PEFT keeps target_modules as a set and saves it in set-iteration order,
    which changes with PYTHONHASHSEED from one process to the next; sorted,
    the same training run gives the same adapter id every time.
    """
    import json

    cfg = json.loads(config_path.read_text(encoding="utf-8"))
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
        config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
