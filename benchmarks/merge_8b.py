"""Merge at Llama-3-8B scale: three r=16 adapters of real 8B shapes, on the CPU, side by side.

The adapters (benchmarks/shapes.py: hidden 4096, intermediate 14336, 32
layers, k/v out 1024, r=16 on q, k, v, o, gate, up, down; bf16; 84 MB each)
are generated without the model, committed with ``mfgit commit`` and merged
through the real console script:

* ``mfgit merge -s ties --density 0.2 --rank 16``: TIES on the dense ΔWᵢ of
  every module (out×in per input), re-factorised to rank 16;
* ``mfgit merge -s core_ties --density 0.2 --rank 16``: the same TIES steps on
  the Core Space cores (48×48 per module), no dense matrix formed;
* PEFT ``add_weighted_adapter(combination_type="ties_svd")`` on the adapters
  loaded into a PEFT model of ``--peft-layers`` layers of the same shapes
  (``LlamaConfig``, weights left uninitialised on the meta device is not
  possible for PEFT, so the layers are real): its time per layer and the
  extrapolation to 32 layers;
* mergekit: its TIES works on full models, so it needs each adapter merged
  into a full copy of the base (16 GB per bf16 8B copy; four inputs and the
  output); the figure given is that arithmetic against this machine's memory
  and disk, not a run.

Wall time and peak RSS (the process tree, psutil) of each CLI step. Targets:
core-space TIES ≤ 30 s, dense TIES ≤ 10 min with peak RSS ≤ 4 GiB.

Run: ``python -m benchmarks merge_8b [--quick]`` (``--quick``: 2 layers).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Context, fmt_table
from benchmarks.merge import _bench_env, _tail, run_measured
from benchmarks.shapes import LLAMA3_8B, Shape, write_adapter

DENSITY = 0.2
RANK = 16
GIB = 1 << 30


def _cli(work: Path, shape: Shape) -> dict[str, Any]:
    mfgit = str(Path(sys.executable).with_name("mfgit"))
    env = _bench_env(work / "home")
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    repo = work / "repo"
    out: dict[str, Any] = {"gen_s": 0.0, "commit_s": 0.0}

    def sh(*args, tag: str) -> dict[str, Any]:
        r = run_measured([mfgit, *args], env=env, cwd=repo if repo.exists() else work, log=work / f"{tag}.log")
        if r["rc"] != 0:
            raise RuntimeError(f"mfgit {' '.join(map(str, args))} exited {r['rc']}: {_tail(r['log'])}")
        return r

    sh("init", str(repo), tag="init")
    for site in range(3):
        t0 = time.perf_counter()
        d = work / f"site{site}"
        out["adapter_bytes"] = write_adapter(d, shape, site)
        out["gen_s"] += time.perf_counter() - t0
        sh("switch", "--orphan", f"sites/s{site}", tag="switch")
        out["commit_s"] += sh("commit", str(d), "-m", f"site {site}", tag=f"commit{site}")["wall_s"]
        shutil.rmtree(d)
    sites = [f"sites/s{i}" for i in range(3)]
    for strategy in ("core_ties", "ties"):
        sh("switch", "--orphan", f"main-{strategy}", tag="switch")
        r = sh("merge", *sites, "-s", strategy, "--density", str(DENSITY), "--weights", "1,1,1", "--rank", str(RANK),
               "--device", "cpu", "-m", strategy, tag=f"merge-{strategy}")
        out[strategy] = {"wall_s": r["wall_s"], "peak_rss": r["peak_rss"]}
    return out


def _peft_ties_svd(shape: Shape) -> dict[str, Any]:
    """PEFT's ties_svd over three adapters on a model of `shape` (few layers): seconds per layer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmarks.shapes import factors

    cfg = LlamaConfig(hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128, torch_dtype="bfloat16")
    with torch.device("cpu"):
        base = LlamaForCausalLM(cfg).to(torch.bfloat16)
    lcfg = dict(r=RANK, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, LoraConfig(**lcfg), adapter_name="a0")
    for i in (1, 2):
        model.add_adapter(f"a{i}", LoraConfig(**lcfg))
    state = model.state_dict()
    for i in range(3):
        for name, t in factors(shape, i):
            key = name.replace("base_model.model.", "base_model.model.", 1).replace(".weight", f".a{i}.weight")
            state[key].copy_(t)
    t0 = time.perf_counter()
    model.add_weighted_adapter(["a0", "a1", "a2"], [1.0, 1.0, 1.0], "m", combination_type="ties_svd",
                               svd_rank=RANK, density=DENSITY)
    dt = time.perf_counter() - t0
    return {"layers": shape.layers, "wall_s": dt, "per_layer_s": dt / shape.layers}


def run(ctx: Context) -> dict[str, Any]:
    shape = LLAMA3_8B.with_layers(2) if ctx.quick else LLAMA3_8B
    work = ctx.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cli = _cli(work, shape)
    peft = _peft_ties_svd(LLAMA3_8B.with_layers(1))
    peft_32 = peft["per_layer_s"] * LLAMA3_8B.layers
    full_copy = LLAMA3_8B.dense_bytes() + 2 * 128256 * LLAMA3_8B.hidden  # adapted linears + embeddings/head (bf16)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    scale = LLAMA3_8B.layers / shape.layers
    core, dense = cli["core_ties"], cli["ties"]
    rows = [
        ["mfgit core_ties (Core Space)", f"{core['wall_s']:.1f} s", f"{core['peak_rss'] / GIB:.2f} GiB", "measured"],
        ["mfgit ties (dense ΔW)", f"{dense['wall_s']:.1f} s", f"{dense['peak_rss'] / GIB:.2f} GiB", "measured"],
        ["PEFT ties_svd", f"{peft_32:.0f} s", "-", f"{peft['per_layer_s']:.1f} s/layer measured on 1 layer, × 32"],
        ["mergekit ties (full models)", "-", f"≥ {5 * full_copy / GIB:.0f} GiB of models",
         f"5 full bf16 copies of {full_copy / GIB:.1f} GiB (base, 3 merged sites, output) vs {mem / GIB:.0f} GiB RAM: not run"],
    ]
    print(fmt_table(["step", "wall", "peak RSS", "how"], rows,
                    title=f"TIES of three r=16 adapters, {shape.name} shapes, {shape.layers} layers"))
    targets = [
        {"name": "core_ties_s", "label": "core-space TIES, 3 adapters (s)", "value": core["wall_s"] * (scale if ctx.quick else 1),
         "target": 30, "unit": "s", "met": core["wall_s"] * scale <= 30},
        {"name": "dense_ties_s", "label": "dense TIES, 3 adapters (s)", "value": dense["wall_s"] * (scale if ctx.quick else 1),
         "target": 600, "unit": "s", "met": dense["wall_s"] * scale <= 600},
        {"name": "dense_ties_rss_gib", "label": "dense TIES peak RSS (GiB)", "value": dense["peak_rss"] / GIB,
         "target": 4, "met": dense["peak_rss"] / GIB <= 4},
        {"name": "peft_vs_core", "label": "PEFT ties_svd (32 layers) / mfgit core_ties", "value": peft_32 / (core["wall_s"] * scale),
         "target": 1, "op": ">=", "met": None},
    ]
    for t in targets:
        print(f"  {t['label']}: {t['value']:.2f} (target {t.get('op', '<=')} {t['target']}) "
              f"{'' if t['met'] is None else ('met' if t['met'] else 'MISSED')}")
    notes = [f"adapter {cli['adapter_bytes'] / 1e6:.0f} MB each; generating took {cli['gen_s']:.1f} s, committing {cli['commit_s']:.1f} s"]
    if ctx.quick:
        notes.append(f"quick mode: {shape.layers} layers; the targets are checked on the × {scale:.0f} extrapolation")
    return {"mode": "quick" if ctx.quick else "full", "repeats": 1, "targets": targets, "tables": [{"title": "TIES at 8B shapes", "columns": ["step", "wall", "peak RSS", "how"],
                                            "rows": rows}], "notes": notes, "cli": cli, "peft": peft}
