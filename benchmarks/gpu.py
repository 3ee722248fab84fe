"""GPU benchmark: mfgit's merge engine on CUDA over 8B- and 70B-scale models' linear modules.

Three rank-16 LoRA adapters with Llama-3-8B shapes (32 layers, hidden 4096,
intermediate 14336, k/v 1024: 224 modules) and Llama-3-70B shapes (80 layers,
hidden 8192, intermediate 28672: 560 modules) come from the generator in
``benchmarks/shapes.py`` that the CPU benchmark ``merge_8b`` uses (bf16, no
model needed), and are merged by ``mfgit.merge.engine.merge_adapters`` on
``cuda`` with ``ties`` (density 0.2, dense ΔW), ``core_ties`` (the same in
Core Space), ``svd`` and ``dare_ties`` (drop rate 0.9), all at output rank 16:

* total seconds per merge (CUDA-synchronised wall time, after a warm-up merge
  of one layer), per-module time, peak GPU memory (``max_memory_allocated``);
* CPU-vs-GPU agreement on a few modules: the dense merged ΔW before the
  re-factorisation (captured from ``factorize_dense``) — its zero pattern,
  i.e. the trim / drop masks, must be identical because the random numbers are
  drawn on the CPU — and the max abs difference of the final rank-16 ΔW = B·A.

TF32: the run turns ``torch.backends.cuda.matmul.allow_tf32`` *on* beforehand,
as a user might have, to show that the engine's own guard (``merge_module``
switches it off for each module and restores it) keeps GPU results at fp32
accuracy; the setting is restored at the end.

Without CUDA it prints a skip line and returns ``{"skipped": "no CUDA device"}``.
Run: ``python -m benchmarks.gpu [--quick] [--shape 8b|70b|all]`` (quick: 4 layers of each).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks.common import fmt_table
from benchmarks.shapes import LLAMA3_8B, LLAMA3_70B, in_memory

NAME = "gpu"
DESCRIPTION = "merge engine on CUDA: ties / core_ties / svd / dare_ties over three r=16 adapters of Llama-3-8B and -70B shapes"

RANK = 16
SHAPES = {"8b": LLAMA3_8B, "70b": LLAMA3_70B}
STRATEGIES = (("ties", {"density": 0.2}), ("core_ties", {"density": 0.2}), ("svd", {}), ("dare_ties", {"drop_rate": 0.9}))
WEIGHTS = (1.0, 1.0, 1.0)
TARGET_TOTAL_S = {"8b": 10.0, "70b": 60.0}  # per merge, one H100-class GPU
AGREEMENT_MODULES = ("layers.0.self_attn.q_proj", "layers.0.mlp.gate_proj", "layers.{last}.mlp.down_proj")



def _inputs(adapters, weights):
    from mfgit.merge.engine import MergeInput

    return [MergeInput(label=f"site{i}", id=f"{i + 1:064x}", adapter=a, weight=float(w))
            for i, (a, w) in enumerate(zip(adapters, weights))]


def _subset(adapters, layers: set[int]):
    """The same adapters restricted to some layers (for the warm-up)."""
    from mfgit.objects.model import Adapter

    out = []
    for a in adapters:
        mods = {m: v for m, v in a.modules.items() if int(m.split("layers.")[1].split(".")[0]) in layers}
        names = {v["lora_A"] for v in mods.values()} | {v["lora_B"] for v in mods.values()}
        out.append(Adapter(config=a.config, base_model=a.base_model, tensors={k: v for k, v in a.tensors.items() if k in names},
                           modules=mods))
    return out


def _recipe(strategy: str, params: dict[str, Any], device: str):
    from mfgit.merge.engine import Recipe
    from mfgit.merge.lowrank import RankPolicy

    return Recipe(strategy, params, seed=0, policy=RankPolicy.parse(RANK, None), device=device).resolved()


def merge_timed(adapters, store, strategy, params, device: str) -> dict[str, Any]:
    """One full merge on `device`: synchronised wall time and peak device memory."""
    import torch

    from mfgit.merge.engine import merge_adapters

    def load(tid, dev):
        return store[tid].to(dev, non_blocking=False)

    inputs = _inputs(adapters, WEIGHTS)
    recipe = _recipe(strategy, params, device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = merge_adapters(inputs, recipe, load)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else None
    kept = [s["kept_energy"] for s in out.modules.values()]
    return {"total_s": dt, "per_module_ms": 1000 * dt / len(out.modules), "modules": len(out.modules),
            "peak_gpu_bytes": peak, "kept_energy_min": min(kept), "kept_energy_mean": sum(kept) / len(kept),
            "device_name": out.device_name}


def agreement(adapters, store, strategy, params, device: str, modules: Sequence[str]) -> dict[str, Any]:
    """CPU vs `device` on a few modules: dense merged ΔW (masks, values) and the final rank-16 ΔW."""
    import torch

    from mfgit.formats import peft as peftfmt
    from mfgit.merge import strategies as S
    from mfgit.merge.engine import module_seed
    from mfgit.merge.strategies import Factor, merge_module

    recipe = _recipe(strategy, params, device)
    captured: list[Any] = []
    original = S.factorize_dense

    def capture(W, rank, energy=None):
        captured.append(W.detach().to("cpu", copy=True))
        return original(W, rank, energy)

    rows = []
    S.factorize_dense = capture
    try:
        for short in modules:
            module = "base_model.model.model." + short
            res = {}
            for dev in ("cpu", device):
                facs = []
                for a in adapters:
                    m = a.modules[module]
                    A = store[a.tensors[m["lora_A"]]["id"]].to(dev).to(torch.float32)
                    B = store[a.tensors[m["lora_B"]]["id"]].to(dev).to(torch.float32)
                    _r, _al, scaling = peftfmt.module_scaling(a.config, module, m["r"])
                    facs.append(Factor(B=B * scaling, A=A))

                def rng(i: int, _module=module) -> torch.Generator:
                    g = torch.Generator(device="cpu")
                    g.manual_seed(module_seed(recipe.seed, recipe.strategy, _module, f"{i + 1:064x}"))
                    return g

                captured.clear()
                r = merge_module(strategy, facs, list(WEIGHTS), recipe.params, rng, recipe.policy)
                dense = captured[0] if captured else None
                res[dev] = (dense, (r.B.double().cpu() @ r.A.double().cpu()), r.kept_energy)
            (d_cpu, w_cpu, k_cpu), (d_dev, w_dev, k_dev) = res["cpu"], res[device]
            row = {"module": short, "kept_energy_cpu": k_cpu, "kept_energy_dev": k_dev,
                   "final_max_abs_diff": float((w_cpu - w_dev).abs().max()),
                   "final_max_abs": float(w_cpu.abs().max()),
                   "final_rel_fro_diff": float((w_cpu - w_dev).norm() / max(w_cpu.norm(), 1e-30))}
            if d_cpu is not None and d_dev is not None:
                z_cpu, z_dev = d_cpu == 0, d_dev == 0
                row.update({
                    "mask_mismatches": int((z_cpu != z_dev).sum()),
                    "mask_elements": int(z_cpu.numel()),
                    "kept_fraction": float((~z_cpu).float().mean()),
                    "dense_max_abs_diff": float((d_cpu.double() - d_dev.double()).abs().max()),
                    "dense_max_abs": float(d_cpu.abs().max()),
                })
            rows.append(row)
    finally:
        S.factorize_dense = original
    return {"modules": rows}


def run(quick: Any = False, device: str = "cuda", layers: int | None = None,
        shapes: Sequence[str] = ("8b", "70b")) -> dict[str, Any]:
    """Measure each shape, print the tables, return the numbers (or {"skipped": reason})."""
    import torch

    if hasattr(quick, "quick"):  # a benchmarks.common.Context
        quick = bool(quick.quick)
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu: skipped: no CUDA device")
        return {"skipped": "no CUDA device"}
    return {"name": NAME, "quick": bool(quick), "shapes": {key: _run_shape(key, quick, device, layers) for key in shapes}}


def _run_shape(key: str, quick: bool, device: str, layers: int | None) -> dict[str, Any]:
    import torch

    shape = SHAPES[key]
    shape = shape.with_layers(layers or (4 if quick else shape.layers))
    adapters, store, nbytes = in_memory(shape)
    per_layer = len(shape.modules())
    n_mod = shape.layers * per_layer
    target = TARGET_TOTAL_S[key]
    res: dict[str, Any] = {"shape": shape.name, "layers": shape.layers, "modules": n_mod, "rank": RANK,
                           "adapter_bytes": nbytes, "dtype": "BF16", "device": device, "target_total_s": target}
    cuda = device.startswith("cuda")
    if cuda:
        res["device_name"] = torch.cuda.get_device_name(0)
        res["torch"] = torch.__version__
        res["cuda"] = torch.version.cuda
    mm = torch.backends.cuda.matmul
    tf32_before = None
    try:
        if cuda:
            try:
                tf32_before = mm.allow_tf32
                mm.allow_tf32 = True  # what a user may have set; the engine must not use it
            except RuntimeError:
                tf32_before = None
        print(f"== gpu: {shape.name}: {len(adapters)} adapters r={RANK}, {shape.layers} layers x {per_layer} modules "
              f"({n_mod}), bf16, {nbytes[0] / 1e6:.0f} MB each; device {res.get('device_name', device)}"
              f"{'; TF32 left ON globally' if cuda else ''}")
        warm = _subset(adapters, {0})
        merges = {}
        for strategy, params in STRATEGIES:
            merge_timed(warm, store, strategy, params, device)  # warm-up: kernels, cuBLAS/cuSOLVER handles
            merges[strategy] = merge_timed(adapters, store, strategy, params, device)
        res["merges"] = merges
        mods = [m.format(last=shape.layers - 1) for m in AGREEMENT_MODULES]
        res["agreement"] = {s: agreement(adapters, store, s, p, device, mods) for s, p in STRATEGIES}
        if cuda:
            res["tf32_restored"] = (tf32_before is None) or (mm.allow_tf32 is True)
    finally:
        if cuda and tf32_before is not None:
            mm.allow_tf32 = tf32_before
    res["targets_met"] = {f"{s}_under_{target:g}s": m["total_s"] < target for s, m in res["merges"].items()}
    _print(res)
    return res


def _print(res: dict[str, Any]) -> None:
    rows = []
    for s, m in res["merges"].items():
        rows.append([s, f"{m['total_s']:.2f} s", f"{m['per_module_ms']:.1f} ms",
                     "-" if m["peak_gpu_bytes"] is None else f"{m['peak_gpu_bytes'] / 2**20:,.0f} MiB",
                     f"{m['kept_energy_mean']:.3f}", "yes" if m["total_s"] < res["target_total_s"] else "NO"])
    print()
    print(fmt_table(["strategy", "total", "per module", "peak GPU memory", "kept energy (mean)", f"< {res['target_total_s']:g} s"],
                    rows, title=f"{res['shape']}: merge of 3 adapters, {res['modules']} modules, rank 16, on {res.get('device_name', res['device'])} "
                                f"(synchronised wall time, after a one-layer warm-up)"))
    rows = []
    for s, a in res["agreement"].items():
        for r in a["modules"]:
            rows.append([s, r["module"],
                         "-" if "mask_mismatches" not in r else f"{r['mask_mismatches']} / {r['mask_elements']:,}",
                         "-" if "dense_max_abs_diff" not in r else f"{r['dense_max_abs_diff']:.1e} (of {r['dense_max_abs']:.1e})",
                         f"{r['final_max_abs_diff']:.1e} (of {r['final_max_abs']:.1e})", f"{r['final_rel_fro_diff']:.1e}"])
    print()
    print(fmt_table(["strategy", "module", "mask mismatches", "dense ΔW max |diff|", "rank-16 ΔW max |diff|", "rel. Frobenius diff"],
                    rows, title="CPU vs GPU on a few modules (masks: zero pattern of the dense merged ΔW before re-factorisation)"))
    if "tf32_restored" in res:
        print(f"TF32 was on globally during the run; engine results above are fp32 (guard in merge_module); "
              f"setting restored: {res['tf32_restored']}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=DESCRIPTION)
    ap.add_argument("--quick", action="store_true", help="4 layers instead of 32")
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # 'cpu' only to smoke-test this script
    ap.add_argument("--layers", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--shape", choices=[*SHAPES, "all"], default="all", help="model shapes to merge (default: all)")
    ap.add_argument("--json", metavar="PATH", help="also write the returned numbers as JSON")
    args = ap.parse_args(argv)
    shapes = list(SHAPES) if args.shape == "all" else [args.shape]
    res = run(args.quick, device=args.device, layers=args.layers, shapes=shapes)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
