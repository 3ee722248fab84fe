"""Merge benchmark: mfgit's merge engine vs PEFT ``add_weighted_adapter`` vs mergekit.

Three real PEFT LoRA adapters (r=16, α=32, every linear module of a Llama-like
model built from a ``LlamaConfig``: hidden 2048, intermediate 5632, 4 layers,
28 adapted modules; ``--quick``: hidden 1024, intermediate 2816, 2 layers) are
merged side by side, on the CPU, in one run:

* ``svd`` (rank 16): mfgit's factor-space truncation vs PEFT
  ``combination_type="svd", svd_rank=16`` — time, and the relative Frobenius
  error of each against the exact weighted sum M = Σ wᵢsᵢBᵢAᵢ and against its
  best rank-16 approximation M₁₆ (computed here in float64 from QR of the
  factors). Target: mfgit ≥ 100× faster with equal or smaller error.
* ``ties`` (density 0.2, rank 16): mfgit vs PEFT ``ties_svd`` — time (target
  ≥ 10×), and the error of each against the dense TIES result T (PEFT's own
  ``merge_utils.ties`` on the dense ΔWᵢ, the paper's formula); PEFT's ``ties_svd``
  is the exact truncated SVD of T, so its error is the rank-16 optimum.
* PEFT ``linear`` and ``ties`` (A and B averaged separately) against the correct
  results (M, the exact sum that mfgit ``linear --rank sum`` returns, and T).
* mfgit end to end: ``mfgit commit`` of the three adapter directories and
  ``mfgit merge`` through the real console script (wall time, peak RSS).
* mergekit (its own virtual environment under benchmarks/_work/mk): the same
  TIES merge, which mergekit can only do on full models — ``merge_and_unload``
  of each adapter into a full model (safetensors), ``mergekit-yaml`` with
  ``merge_method: ties``, then ``mergekit-extract-lora`` back to rank 16 — wall
  time, peak RSS and disk of the whole pipeline, and the error of its result
  against T. Skipped with a reason when mergekit is not installed or fails.

Weights are 1.0 for every input: task arithmetic with λ = 1 for ``svd``/
``linear``, and for TIES the paper's formula in all three tools (PEFT divides
by the count of agreeing inputs and mergekit ``normalize: true`` by the sum of
their weights, which agree with mfgit's weighted mean only for equal weights
of 1). Timings are ``time.perf_counter`` wall times; mfgit's engine is warmed
up once and the median of a few repeats is reported; PEFT's SVD merges take
minutes and are run once.

Run: ``python -m benchmarks.merge [--quick]`` or ``python -m benchmarks merge``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

NAME = "merge"
DESCRIPTION = "merge engine vs PEFT add_weighted_adapter (svd, ties_svd, linear, ties) and mergekit (TIES via full models)"

PACKAGE_DIR = Path(__file__).resolve().parent
WORK_ROOT = PACKAGE_DIR / "_work"
MK_VENV = WORK_ROOT / "mk"  # mergekit's own environment: python -m venv benchmarks/_work/mk && .../pip install mergekit

TARGETS = {"svd_speedup": 100.0, "ties_speedup": 10.0}
RANK = 16
ALPHA = 32
DENSITY = 0.2
WEIGHTS = (1.0, 1.0, 1.0)
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

from benchmarks.common import fmt_table


# --- small helpers --------------------------------------------------------------------------------


def _s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def _x(r: float | None) -> str:
    return "-" if r is None else f"{r:,.1f}x"


def _e(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def _excess(err: float, opt: float) -> str:
    """How far an error is above the optimum one, relatively: 'error/optimum - 1 = +1.2e-07'."""
    if not opt:
        return "-"
    return f"error/optimum - 1 = {err / opt - 1:+.1e}"


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e6:,.0f} MB"


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def _median_time(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> tuple[float, list[float], Any]:
    if warmup:
        fn()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times)), times, out


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run_measured(args: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
                 log: Path | None = None, timeout: float = 3600) -> dict[str, Any]:
    """Run a command; wall time and peak RSS of its whole process tree (psutil, polled every 20 ms)."""
    import psutil

    log = log or Path(os.devnull)
    with open(log, "w") as out:
        t0 = time.perf_counter()
        p = psutil.Popen(list(map(str, args)), env=env, cwd=str(cwd) if cwd else None, stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        while True:
            try:
                procs = [p] + p.children(recursive=True)
                rss = 0
                for q in procs:
                    try:
                        rss += q.memory_info().rss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
                peak = max(peak, rss)
            except psutil.NoSuchProcess:
                pass
            try:
                rc = p.wait(timeout=0.02)
                break
            except psutil.TimeoutExpired:
                if time.perf_counter() - t0 > timeout:
                    p.kill()
                    rc = p.wait()
                    break
        wall = time.perf_counter() - t0
    return {"args": [str(a) for a in args], "rc": rc, "wall_s": wall, "peak_rss": peak, "log": str(log)}


def _tail(path: str | Path, n: int = 6) -> str:
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in lines[-n:])


# --- the model and the adapters ----------------------------------------------------------------------


def model_spec(quick: bool) -> dict[str, int]:
    if quick:
        return {"hidden": 1024, "intermediate": 2816, "layers": 2, "heads": 8, "vocab": 512}
    return {"hidden": 2048, "intermediate": 5632, "layers": 4, "heads": 16, "vocab": 512}


def build_base(spec: dict[str, int]):
    """A Llama-like causal LM from a LlamaConfig (deterministic weights; global RNG untouched)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=spec["vocab"], hidden_size=spec["hidden"], intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"], num_key_value_heads=spec["heads"],
        max_position_embeddings=256, tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.config.name_or_path = "mfgit-bench-llama"
    model.name_or_path = "mfgit-bench-llama"
    model.eval()
    return model


def add_adapters(base, n: int = 3):
    """Wrap `base` in a PeftModel holding n LoRA adapters a0..a{n-1} with trained-looking weights.

    lora_A ~ N(0, 1/in)·c (c log-normal around 1), lora_B ~ N(0, s²) with s
    log-uniform in [5e-4, 5e-3] per tensor: B ≠ 0, as after training.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    def cfg():
        return LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TARGET_MODULES), lora_dropout=0.0,
                          bias="none", task_type="CAUSAL_LM")

    model = get_peft_model(base, cfg(), adapter_name="a0")
    for i in range(1, n):
        model.add_adapter(f"a{i}", cfg())
    with torch.no_grad():
        for i in range(n):
            g = torch.Generator().manual_seed(1000 + i)
            for name, mod in sorted(model.named_modules(), key=lambda kv: kv[0]):
                if not isinstance(mod, LoraLayer) or f"a{i}" not in mod.lora_A:
                    continue
                A = mod.lora_A[f"a{i}"].weight
                B = mod.lora_B[f"a{i}"].weight
                a_scale = (1.0 / A.shape[1]) ** 0.5 * math.exp(0.15 * float(torch.randn(1, generator=g)))
                b_scale = 10 ** float(torch.empty(1).uniform_(-3.3, -2.3, generator=g))
                A.copy_(torch.randn(A.shape, generator=g) * a_scale)
                B.copy_(torch.randn(B.shape, generator=g) * b_scale)
    model.eval()
    return model


def save_adapters(model, root: Path, n: int) -> list[Path]:
    names = [f"a{i}" for i in range(n)]
    model.save_pretrained(str(root), selected_adapters=names, safe_serialization=True)
    dirs = []
    for name in names:
        d = root / name if (root / name / "adapter_config.json").exists() else root
        dirs.append(d)
    return dirs


def lora_factors(model, adapter: str) -> dict[str, tuple[Any, Any, float]]:
    """module name (as saved, without .lora_A.weight) -> (B, A, scaling) of one adapter of a PeftModel."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer) and adapter in mod.lora_A:
            out[name] = (mod.lora_B[adapter].weight.detach(), mod.lora_A[adapter].weight.detach(),
                         float(mod.scaling[adapter]))
    return out


def factors_from_tensors(tensors: dict[str, Any], config: dict[str, Any]) -> dict[str, tuple[Any, Any, float]]:
    """(B, A, scaling) per module from a saved-adapter state dict and its config (rank_pattern aware)."""
    from mfgit.formats import peft as peftfmt

    out = {}
    for name, t in tensors.items():
        if name.endswith(".lora_A.weight"):
            mod = name[: -len(".lora_A.weight")]
            A = t
            B = tensors[mod + ".lora_B.weight"]
            _r, _alpha, scaling = peftfmt.module_scaling(config, mod, int(A.shape[0]))
            out[mod] = (B, A, scaling)
    return out


def _canon(name: str) -> str:
    """A module's key independent of the tool's prefix: 'layers.0.self_attn.q_proj'."""
    i = name.find("layers.")
    return name[i:] if i >= 0 else name


# --- exact references and errors (float64) -------------------------------------------------------------


def _gram_norm2(Bs: Sequence[Any], As: Sequence[Any]) -> float:
    """‖Σⱼ Bⱼ Aⱼ‖²_F = ‖C D‖²_F, C = [B…], D = [A…], from the factors (float64, never dense).

    Through QR of C and Dᵀ: ‖C D‖_F = ‖R_C R_Dᵀ‖_F. Differences of nearly equal
    products (an error of 1e-8) cancel inside the small product, not in a sum of squares.
    """
    import torch

    C = torch.cat([b.double() for b in Bs], dim=1)
    D = torch.cat([a.double() for a in As], dim=0)
    Rc = torch.linalg.qr(C, mode="r")[1]
    Rd = torch.linalg.qr(D.T, mode="r")[1]
    return float(torch.linalg.matrix_norm(Rc @ Rd.T) ** 2)


def best_rank(B: Any, A: Any, k: int) -> tuple[Any, Any]:
    """Best rank-k approximation of B @ A (Eckart–Young) in float64, from QR of the factors."""
    import torch

    Qb, Rb = torch.linalg.qr(B.double())
    Qa, Ra = torch.linalg.qr(A.double().T)
    u, s, vh = torch.linalg.svd(Rb @ Ra.T)
    return (Qb @ u[:, :k]) * s[:k], vh[:k] @ Qa.T


def svd_errors(inputs: dict[str, list[tuple[Any, Any, float]]], weights: Sequence[float],
               results: dict[str, dict[str, tuple[Any, Any, float]]]) -> dict[str, dict[str, float]]:
    """Relative Frobenius errors (all modules together) of low-rank results vs M = Σ wᵢsᵢBᵢAᵢ and vs M₁₆."""
    import torch

    acc = {name: {"vs_sum": 0.0, "vs_best": 0.0} for name in results}
    norm_m = norm_m16 = opt = 0.0
    for mod, facs in inputs.items():
        Bs = [w * s * b.double() for (b, _a, s), w in zip(facs, weights)]
        As = [a.double() for (_b, a, _s) in facs]
        B = torch.cat(Bs, dim=1)
        A = torch.cat(As, dim=0)
        B16, A16 = best_rank(B, A, RANK)
        m2 = _gram_norm2([B], [A])
        m16 = _gram_norm2([B16], [A16])
        norm_m += m2
        norm_m16 += m16
        opt += max(0.0, m2 - m16)  # ‖M − M₁₆‖² = ‖M‖² − ‖M₁₆‖² (orthogonal)
        for name, res in results.items():
            rb, ra, rs = res[mod]
            Xb = rs * rb.double()
            Xa = ra.double()
            acc[name]["vs_sum"] += _gram_norm2([Xb, -B], [Xa, A])
            acc[name]["vs_best"] += _gram_norm2([Xb, -B16], [Xa, A16])
    out = {name: {"vs_sum": math.sqrt(v["vs_sum"] / norm_m), "vs_best": math.sqrt(v["vs_best"] / norm_m16)}
           for name, v in acc.items()}
    out["_optimum"] = {"vs_sum": math.sqrt(opt / norm_m), "vs_best": 0.0}
    return out


def dense_ties_reference(facs: list[tuple[Any, Any, float]], weights: Sequence[float]) -> Any:
    """T: PEFT's merge_utils.ties (the paper's TIES) on the dense ΔWᵢ = sᵢBᵢAᵢ (fp32), weights as given."""
    import torch
    from peft.utils.merge_utils import ties

    deltas = [s * (b.float() @ a.float()) for b, a, s in facs]
    return ties(deltas, torch.tensor(list(weights), dtype=torch.float32), DENSITY, "total")


def ties_errors(inputs: dict[str, list[tuple[Any, Any, float]]], weights: Sequence[float],
                results: dict[str, dict[str, tuple[Any, Any, float]]]) -> dict[str, float]:
    """Relative Frobenius error (all modules together) of each result against the dense TIES result T."""
    acc = {name: 0.0 for name in results}
    norm_t = 0.0
    for mod, facs in inputs.items():
        T = dense_ties_reference(facs, weights).double()
        norm_t += float((T * T).sum())
        for name, res in results.items():
            if mod not in res:
                acc[name] = float("nan")
                continue
            rb, ra, rs = res[mod]
            D = T - rs * (rb.double() @ ra.double())
            acc[name] += float((D * D).sum())
        del T
    return {name: math.sqrt(v / norm_t) for name, v in acc.items()}


# --- mfgit's engine, in memory --------------------------------------------------------------------------


def engine_inputs(dirs: Sequence[Path], weights: Sequence[float]):
    """MergeInputs for mfgit's engine from adapter directories, and the tensor loader."""
    import torch
    from safetensors.torch import load_file

    from mfgit.formats import peft as peftfmt
    from mfgit.merge.engine import MergeInput
    from mfgit.objects.model import Adapter

    names = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
    store: dict[str, Any] = {}
    inputs = []
    for i, (d, w) in enumerate(zip(dirs, weights)):
        cfg = peftfmt.normalise_config(json.loads((d / "adapter_config.json").read_text()))
        state = load_file(str(d / "adapter_model.safetensors"))
        tensors = {}
        for name, t in sorted(state.items()):
            tid = f"{i}:{name}"
            store[tid] = t
            tensors[name] = {"id": tid, "dtype": names[t.dtype], "shape": list(t.shape)}
        modules = peftfmt.lora_modules({k: (v["dtype"], tuple(v["shape"])) for k, v in tensors.items()}, str(d))
        adapter = Adapter(config=cfg, base_model={"name": cfg.get("base_model_name_or_path"), "revision": cfg.get("revision")},
                          tensors=tensors, modules=modules)
        inputs.append(MergeInput(label=f"site{i}", id=f"{i + 1:064x}", adapter=adapter, weight=float(w)))

    def load(tid: str, device):
        return store[tid].to(device)

    return inputs, load


def mfgit_merge(inputs, load, strategy: str, params: dict[str, Any], rank: Any = RANK):
    from mfgit.merge.engine import Recipe, merge_adapters
    from mfgit.merge.lowrank import RankPolicy

    recipe = Recipe(strategy, params, seed=0, policy=RankPolicy.parse(rank, None), device="cpu").resolved()
    return merge_adapters(inputs, recipe, load)


def mfgit_result_factors(out) -> dict[str, tuple[Any, Any, float]]:
    return factors_from_tensors(out.tensors, out.config)


# --- PEFT ------------------------------------------------------------------------------------------------


def peft_merge(model, kind: str, n: int, **kw) -> tuple[float, dict[str, tuple[Any, Any, float]]]:
    """Time one add_weighted_adapter call; the new adapter's (B, A, scaling) per module; the adapter is deleted."""
    new = f"m_{kind}"
    t0 = time.perf_counter()
    model.add_weighted_adapter([f"a{i}" for i in range(n)], list(WEIGHTS[:n]), new, combination_type=kind, **kw)
    dt = time.perf_counter() - t0
    facs = {k: (b.clone(), a.clone(), s) for k, (b, a, s) in lora_factors(model, new).items()}
    model.delete_adapter(new)
    return dt, facs


# --- mfgit through its CLI ----------------------------------------------------------------------------------


def _bench_env(home: Path) -> dict[str, str]:
    try:
        from benchmarks.common import bench_env  # type: ignore

        env = bench_env(home)
    except Exception:
        env = dict(os.environ)
        home.mkdir(parents=True, exist_ok=True)
        env.update({"HOME": str(home), "MFGIT_AUTHOR_NAME": "bench", "MFGIT_AUTHOR_EMAIL": "bench@example.org"})
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env = {k: v for k, v in env.items() if not (k.startswith("MFGIT_") and k not in ("MFGIT_AUTHOR_NAME", "MFGIT_AUTHOR_EMAIL"))}
    env.update({"MFGIT_CONFIG_GLOBAL": str(home / "mfgit-global.cfg"), "MFGIT_AUTHOR_NAME": "bench",
                "MFGIT_AUTHOR_EMAIL": "bench@example.org", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return env


def cli_end_to_end(dirs: Sequence[Path], work: Path) -> dict[str, Any]:
    mfgit = str(Path(sys.executable).with_name("mfgit"))
    if not Path(mfgit).exists():
        return {"skipped": f"no mfgit console script next to {sys.executable}"}
    root = work / "cli"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    env = _bench_env(root / "home")
    repo = root / "repo"

    def sh(*args, cwd=repo, measured=False, tag="cmd"):
        if measured:
            r = run_measured([mfgit, *args], env=env, cwd=cwd, log=root / f"{tag}.log")
            if r["rc"] != 0:
                raise RuntimeError(f"mfgit {' '.join(map(str, args))} exited {r['rc']}: {_tail(r['log'])}")
            return r
        p = subprocess.run([mfgit, *map(str, args)], env=env, cwd=str(cwd), capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"mfgit {' '.join(map(str, args))} exited {p.returncode}: {p.stderr.strip()[-500:]}")
        return p

    sh("init", "repo", cwd=root)
    commits = []
    for i, d in enumerate(dirs):
        sh("switch", "--orphan", f"sites/s{i}")
        sh("config", "site", f"s{i}")
        commits.append(sh("commit", str(d), "-m", f"site {i}", measured=True, tag=f"commit{i}"))
    sh("config", "site", "coordinator")
    out: dict[str, Any] = {"commit_s": sum(c["wall_s"] for c in commits),
                           "commit_peak_rss": max(c["peak_rss"] for c in commits)}
    sites = [f"sites/s{i}" for i in range(len(dirs))]
    weights = ",".join(str(w) for w in WEIGHTS[: len(dirs)])
    for strategy, extra in (("ties", ["--density", str(DENSITY)]), ("svd", [])):
        sh("switch", "--orphan", f"main-{strategy}")
        r = sh("merge", *sites, "-s", strategy, *extra, "--weights", weights, "--rank", str(RANK), "--device", "cpu",
               "-m", f"bench {strategy}", measured=True, tag=f"merge-{strategy}")
        out[f"merge_{strategy}_s"] = r["wall_s"]
        out[f"merge_{strategy}_peak_rss"] = r["peak_rss"]
    out["repo_bytes"] = _dir_bytes(repo)
    return out


# --- mergekit ---------------------------------------------------------------------------------------------


_MERGE_AND_UNLOAD = """\
import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base_dir, adapter_dir, out_dir = sys.argv[1:4]
base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
model.save_pretrained(out_dir, safe_serialization=True)
"""


def mergekit_pipeline(base, dirs: Sequence[Path], work: Path, quick: bool) -> dict[str, Any]:
    """TIES through full models: merge_and_unload ×n, mergekit-yaml, mergekit-extract-lora (rank 16)."""
    py = MK_VENV / "bin" / "python"
    yaml_bin = MK_VENV / "bin" / "mergekit-yaml"
    extract_bin = MK_VENV / "bin" / "mergekit-extract-lora"
    if not (py.exists() and yaml_bin.exists() and extract_bin.exists()):
        return {"skipped": f"mergekit is not installed in {MK_VENV} (python -m venv {MK_VENV} && "
                           f"{MK_VENV}/bin/pip install mergekit torch==2.13.0)"}
    try:
        version = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('mergekit'))"],
                                 capture_output=True, text=True, timeout=120).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        version = "?"
    root = work / "mergekit"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    env = dict(os.environ)
    env.update({"HOME": str(root / "home"), "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    env.pop("PYTHONPATH", None)
    (root / "home").mkdir()
    base_dir = root / "base"
    base.save_pretrained(str(base_dir), safe_serialization=True)  # what every user has: not timed
    script = root / "merge_and_unload.py"
    script.write_text(_MERGE_AND_UNLOAD)
    steps: list[dict[str, Any]] = []

    def step(label: str, args: Sequence[Any]) -> dict[str, Any]:
        r = run_measured(args, env=env, cwd=root, log=root / f"{label}.log")
        r["label"] = label
        steps.append(r)
        if r["rc"] != 0:
            raise RuntimeError(f"{label} exited {r['rc']}: {_tail(r['log'])}")
        return r

    fulls = []
    try:
        for i, d in enumerate(dirs):
            out = root / f"full{i}"
            step(f"merge_and_unload a{i}", [py, script, base_dir, d, out])
            fulls.append(out)
        models = "\n".join(f"  - model: {p}\n    parameters: {{density: {DENSITY}, weight: {w}}}"
                           for p, w in zip(fulls, WEIGHTS))
        cfg = root / "ties.yml"
        cfg.write_text(f"merge_method: ties\nbase_model: {base_dir}\nmodels:\n{models}\n"
                       f"parameters:\n  normalize: true\ndtype: float32\n")
        merged = root / "merged"
        step("mergekit-yaml (ties)", [yaml_bin, cfg, merged, "--no-copy-tokenizer", "--random-seed", "0"])
        lora = root / "lora"
        step("mergekit-extract-lora (rank 16)", [extract_bin, "--model", merged, "--base-model", base_dir,
                                                  "--out-path", lora, "--max-rank", str(RANK), "--skip-undecomposable"])
    except RuntimeError as e:
        return {"skipped": f"mergekit {version} failed: {e}", "version": version, "steps": steps}
    intermediate = sum(_dir_bytes(p) for p in fulls) + _dir_bytes(merged)
    res: dict[str, Any] = {
        "version": version,
        "steps": [{"label": s["label"], "wall_s": s["wall_s"], "peak_rss": s["peak_rss"]} for s in steps],
        "total_s": sum(s["wall_s"] for s in steps),
        "peak_rss": max(s["peak_rss"] for s in steps),
        "disk_bytes": intermediate + _dir_bytes(lora),
        "lora_dir": str(lora),
    }
    return res


def load_lora_dir(path: Path) -> dict[str, tuple[Any, Any, float]]:
    from safetensors.torch import load_file

    config = json.loads((path / "adapter_config.json").read_text())
    tensors = load_file(str(path / "adapter_model.safetensors"))
    return factors_from_tensors(tensors, config)


# --- the run -----------------------------------------------------------------------------------------------


def _ctx(arg: Any) -> tuple[bool, Path]:
    """run() takes a bool (quick) or a benchmarks.common.Context (quick, work)."""
    if hasattr(arg, "quick"):
        work = Path(getattr(arg, "work", WORK_ROOT / NAME))
        return bool(arg.quick), work
    return bool(arg), WORK_ROOT / NAME


def run(quick: Any = False) -> dict[str, Any]:
    """Measure, print the tables, return the raw numbers, ratios and whether each target is met."""
    import torch

    quick, work = _ctx(quick)
    work = work / ("quick" if quick else "full")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    spec = model_spec(quick)
    n = len(WEIGHTS)
    repeats = 3
    result: dict[str, Any] = {"name": NAME, "quick": quick, "model": spec, "rank": RANK, "lora_alpha": ALPHA,
                              "density": DENSITY, "weights": list(WEIGHTS), "threads": torch.get_num_threads(),
                              "loadavg_start": _load(), "targets": dict(TARGETS)}
    print(f"== merge: {n} PEFT LoRA adapters r={RANK} (alpha {ALPHA}) on a Llama-like model, hidden {spec['hidden']}, "
          f"intermediate {spec['intermediate']}, {spec['layers']} layers, all 7 linear modules per layer "
          f"({7 * spec['layers']} modules); CPU, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {result['loadavg_start']}")

    t0 = time.perf_counter()
    base = build_base(spec)
    mk_base = build_base(spec)  # an untouched copy for mergekit (get_peft_model wraps `base` in place)
    model = add_adapters(base, n)
    dirs = save_adapters(model, work / "adapters", n)
    inputs_f = {m: [] for m in lora_factors(model, "a0")}
    for i in range(n):
        for m, f in lora_factors(model, f"a{i}").items():
            inputs_f[m].append(f)
    canon_inputs = {_canon(m): v for m, v in inputs_f.items()}
    n_modules = len(canon_inputs)
    result["modules"] = n_modules
    result["setup_s"] = time.perf_counter() - t0

    # -- mfgit engine -------------------------------------------------------------------------------------
    inputs, load = engine_inputs(dirs, WEIGHTS)
    eng: dict[str, Any] = {}
    outs: dict[str, Any] = {}
    for label, strategy, params, rank in (("svd", "svd", {}, RANK), ("ties", "ties", {"density": DENSITY}, RANK),
                                          ("linear_sum", "linear", {}, "sum")):
        med, times, out = _median_time(lambda: mfgit_merge(inputs, load, strategy, params, rank), repeats)
        eng[label] = {"median_s": med, "times_s": times, "per_module_ms": 1000 * med / n_modules,
                      "kept_energy_min": min(s["kept_energy"] for s in out.modules.values()),
                      "kept_energy_mean": sum(s["kept_energy"] for s in out.modules.values()) / len(out.modules)}
        outs[label] = {_canon(k): v for k, v in mfgit_result_factors(out).items()}
    result["mfgit_engine"] = eng

    # -- PEFT ---------------------------------------------------------------------------------------------
    peft: dict[str, Any] = {}
    pres: dict[str, Any] = {}
    for kind, kw in (("linear", {}), ("ties", {"density": DENSITY}), ("cat", {})):
        times = []
        for _ in range(repeats):
            dt, facs = peft_merge(model, kind, n, **kw)
            times.append(dt)
        peft[kind] = {"median_s": float(statistics.median(times)), "times_s": times}
        pres[kind] = {_canon(k): v for k, v in facs.items()}
    print(f"   PEFT svd and ties_svd: one run each (a full SVD per module; minutes) ... load {_load()}", flush=True)
    for kind, kw in (("svd", {"svd_rank": RANK}), ("ties_svd", {"svd_rank": RANK, "density": DENSITY})):
        dt, facs = peft_merge(model, kind, n, **kw)
        peft[kind] = {"median_s": dt, "times_s": [dt]}
        pres[kind] = {_canon(k): v for k, v in facs.items()}
    result["peft"] = peft

    # -- errors ---------------------------------------------------------------------------------------------
    svd_err = svd_errors(canon_inputs, WEIGHTS, {"mfgit svd": outs["svd"], "PEFT svd": pres["svd"],
                                                 "mfgit linear --rank sum": outs["linear_sum"],
                                                 "PEFT linear": pres["linear"], "PEFT cat": pres["cat"]})
    result["errors_vs_sum"] = svd_err

    # -- mfgit CLI end to end ----------------------------------------------------------------------------------
    try:
        cli = cli_end_to_end(dirs, work)
    except Exception as e:  # report, do not hide
        cli = {"skipped": f"failed: {e}"}
    result["mfgit_cli"] = cli

    # -- mergekit ---------------------------------------------------------------------------------------------
    mk = mergekit_pipeline(mk_base, dirs, work, quick)
    del mk_base
    mk_facs = None
    if "skipped" not in mk:
        try:
            mk_facs = {_canon(k): v for k, v in load_lora_dir(Path(mk["lora_dir"])).items()}
        except Exception as e:
            mk["error_note"] = f"could not read its LoRA: {e}"
    result["mergekit"] = mk

    ties_res = {"mfgit ties": outs["ties"], "PEFT ties_svd": pres["ties_svd"], "PEFT ties": pres["ties"]}
    if mk_facs:
        ties_res["mergekit ties + extract-lora"] = {k: v for k, v in mk_facs.items() if k in canon_inputs}
    result["errors_vs_dense_ties"] = ties_errors(canon_inputs, WEIGHTS, ties_res)
    result["loadavg_end"] = _load()

    # -- ratios and targets -----------------------------------------------------------------------------------
    svd_speedup = peft["svd"]["median_s"] / eng["svd"]["median_s"]
    ties_speedup = peft["ties_svd"]["median_s"] / eng["ties"]["median_s"]
    e_m, e_p = svd_err["mfgit svd"], svd_err["PEFT svd"]
    svd_err_ok = (e_m["vs_sum"] <= e_p["vs_sum"] * (1 + 1e-4) + 1e-7) and (e_m["vs_best"] <= e_p["vs_best"] * (1 + 1e-2) + 1e-6)
    result["ratios"] = {"svd_speedup": svd_speedup, "ties_speedup": ties_speedup}
    if "skipped" not in mk and "skipped" not in cli:
        result["ratios"]["mergekit_pipeline_vs_mfgit_cli_merge"] = mk["total_s"] / cli["merge_ties_s"]
        result["ratios"]["mergekit_pipeline_vs_mfgit_commit_plus_merge"] = mk["total_s"] / (cli["commit_s"] + cli["merge_ties_s"])
        result["ratios"]["mergekit_peak_rss_vs_mfgit_merge"] = mk["peak_rss"] / max(1, cli["merge_ties_peak_rss"])
    result["targets_met"] = {
        "svd_speedup": svd_speedup >= TARGETS["svd_speedup"],
        "svd_error_equal_or_smaller": bool(svd_err_ok),
        "ties_speedup": ties_speedup >= TARGETS["ties_speedup"],
    }

    tables, notes = _tables(result)
    result["tables"] = tables
    result["notes"] = notes
    result["mode"] = "quick" if quick else "full"
    result["repeats"] = 3
    # For results.md: each target as {name, label, value, op, target, met}.
    result["thresholds"] = result.pop("targets")
    result["targets"] = [
        {"name": "svd_speedup", "label": "svd merge: PEFT add_weighted_adapter(svd) time / mfgit engine time",
         "value": svd_speedup, "op": ">=", "target": TARGETS["svd_speedup"], "unit": "x", "met": bool(svd_speedup >= TARGETS["svd_speedup"])},
        {"name": "ties_speedup", "label": "ties merge: PEFT ties_svd time / mfgit engine time",
         "value": ties_speedup, "op": ">=", "target": TARGETS["ties_speedup"], "unit": "x", "met": bool(ties_speedup >= TARGETS["ties_speedup"])},
        {"name": "svd_error_equal_or_smaller", "label": "svd merge: error vs the exact sum, mfgit / PEFT svd",
         "value": e_m["vs_sum"] / e_p["vs_sum"] if e_p["vs_sum"] else None, "op": "<=", "target": 1.0, "unit": "x",
         "met": bool(svd_err_ok)},
    ]
    _print(result)
    return result


def _tables(r: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The result as tables ({title, columns, rows}) and notes, for the terminal and results.md."""
    eng, peft, errs, terr = r["mfgit_engine"], r["peft"], r["errors_vs_sum"], r["errors_vs_dense_ties"]
    nm = r["modules"]
    tables: list[dict[str, Any]] = []
    notes: list[str] = []

    def table(columns, rows, title):
        tables.append({"title": title, "columns": columns, "rows": rows})

    table(
        ["merge", "mfgit engine", "PEFT add_weighted_adapter", "speed-up", "target", "met"],
        [
            ["svd rank 16", _s(eng["svd"]["median_s"]), _s(peft["svd"]["median_s"]) + " (svd)",
             _x(r["ratios"]["svd_speedup"]), ">= 100x", "yes" if r["targets_met"]["svd_speedup"] else "NO"],
            ["ties density 0.2, rank 16", _s(eng["ties"]["median_s"]), _s(peft["ties_svd"]["median_s"]) + " (ties_svd)",
             _x(r["ratios"]["ties_speedup"]), ">= 10x", "yes" if r["targets_met"]["ties_speedup"] else "NO"],
            ["linear, exact (rank 48)", _s(eng["linear_sum"]["median_s"]), _s(peft["cat"]["median_s"]) + " (cat)",
             _x(peft["cat"]["median_s"] / eng["linear_sum"]["median_s"]), "", ""],
            ["linear (PEFT: A, B averaged)", "", _s(peft["linear"]["median_s"]) + " (linear)", "", "", ""],
            ["ties (PEFT: A, B separately)", "", _s(peft["ties"]["median_s"]) + " (ties)", "", "", ""],
        ],
        title=f"Time, {nm} modules, CPU ({r['threads']} threads); mfgit: median of 3 after a warm-up "
              f"(per module: svd {eng['svd']['per_module_ms']:.1f} ms, ties {eng['ties']['per_module_ms']:.0f} ms); "
              f"PEFT svd/ties_svd: one run",
    )
    opt = errs["_optimum"]["vs_sum"]
    table(
        ["result", "rel. error vs exact sum M", "rel. error vs best rank-16 M16", "note"],
        [
            ["mfgit svd (rank 16)", _e(errs["mfgit svd"]["vs_sum"]), _e(errs["mfgit svd"]["vs_best"]),
             _excess(errs['mfgit svd']['vs_sum'], opt)],
            ["PEFT svd (rank 16)", _e(errs["PEFT svd"]["vs_sum"]), _e(errs["PEFT svd"]["vs_best"]),
             _excess(errs['PEFT svd']['vs_sum'], opt)],
            ["(rank-16 optimum)", _e(opt), "0", "‖M − M16‖ / ‖M‖"],
            ["mfgit linear --rank sum", _e(errs["mfgit linear --rank sum"]["vs_sum"]), "-", "exact (rank 48)"],
            ["PEFT cat", _e(errs["PEFT cat"]["vs_sum"]), "-", "exact (rank 48)"],
            ["PEFT linear", _e(errs["PEFT linear"]["vs_sum"]), "-", "A and B averaged separately: cross terms"],
        ],
        title="Task arithmetic (weights 1, 1, 1): relative Frobenius error over all modules, float64 references",
    )
    best = terr["PEFT ties_svd"]
    rows = [["mfgit ties (rank 16)", _e(terr["mfgit ties"]),
             f"dense TIES, block Krylov rank-16; {_excess(terr['mfgit ties'], best)}"],
            ["PEFT ties_svd (rank 16)", _e(best), "dense TIES, full SVD: the rank-16 optimum"],
            ["PEFT ties", _e(terr["PEFT ties"]), "TIES applied to A and B separately"]]
    if "mergekit ties + extract-lora" in terr:
        rows.append(["mergekit ties + extract-lora", _e(terr["mergekit ties + extract-lora"]),
                     f"full models, SVD back to rank 16; {_excess(terr['mergekit ties + extract-lora'], best)}"])
    table(["result", "rel. error vs dense TIES T", "note"], rows,
          title="TIES (density 0.2, weights 1, 1, 1): error vs T = PEFT merge_utils.ties on the dense ΔWᵢ "
                f"(a rank-16 result cannot be exact; mfgit kept energy mean {eng['ties']['kept_energy_mean']:.3f})")
    cli, mk = r["mfgit_cli"], r["mergekit"]
    rows = []
    if "skipped" in cli:
        notes.append(f"mfgit CLI: skipped: {cli['skipped']}")
    else:
        rows.append(["mfgit commit x3 (CLI)", _s(cli["commit_s"]), _mb(cli["commit_peak_rss"]), ""])
        rows.append(["mfgit merge -s ties (CLI)", _s(cli["merge_ties_s"]), _mb(cli["merge_ties_peak_rss"]), ""])
        rows.append(["mfgit merge -s svd (CLI)", _s(cli["merge_svd_s"]), _mb(cli["merge_svd_peak_rss"]), ""])
        rows.append(["mfgit repository (3 adapters + 2 merges)", "", "", _mb(cli["repo_bytes"])])
    if "skipped" in mk:
        notes.append(f"mergekit: skipped: {mk['skipped']}")
    else:
        for s in mk["steps"]:
            rows.append([f"mergekit {mk['version']}: {s['label']}", _s(s["wall_s"]), _mb(s["peak_rss"]), ""])
        rows.append(["mergekit pipeline total", _s(mk["total_s"]), _mb(mk["peak_rss"]), _mb(mk["disk_bytes"])])
    if rows:
        title = "End to end (wall time, peak RSS of the process tree, disk)"
        if "skipped" not in mk and "skipped" not in cli:
            title += (f": mergekit pipeline / mfgit merge = {_x(r['ratios']['mergekit_pipeline_vs_mfgit_cli_merge'])} "
                      f"time, {_x(r['ratios']['mergekit_peak_rss_vs_mfgit_merge'])} peak memory")
        table(["step", "wall", "peak RSS", "disk"], rows, title)
    met = r["targets_met"]
    notes.append(f"targets: svd >= 100x faster: {'met' if met['svd_speedup'] else 'NOT met'} "
          f"({_x(r['ratios']['svd_speedup'])}); svd error equal or smaller: "
          f"{'met' if met['svd_error_equal_or_smaller'] else 'NOT met'}; ties >= 10x faster: "
          f"{'met' if met['ties_speedup'] else 'NOT met'} ({_x(r['ratios']['ties_speedup'])}). "
          f"Load average {r['loadavg_start']} -> {r['loadavg_end']}"
          f"{' (shared machine: absolute times are noisy)' if r['loadavg_start'] and r['loadavg_start'][0] > 1.5 * os.cpu_count() / 2 else ''}")
    return tables, notes


def _print(r: dict[str, Any]) -> None:
    tables, notes = _tables(r)
    for t in tables:
        print()
        print(fmt_table(t["columns"], t["rows"], title=t["title"]))
    print()
    for line in notes:
        print(line)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.merge", description=DESCRIPTION)
    ap.add_argument("--quick", action="store_true", help="hidden 1024, 2 layers (a few minutes)")
    ap.add_argument("--json", metavar="PATH", help="also write the returned numbers as JSON")
    args = ap.parse_args(argv)
    res = run(args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
