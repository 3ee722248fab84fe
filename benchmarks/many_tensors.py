"""Many small tensors: the cost per tensor of commit, re-commit, checkout and fsck.

    python -m benchmarks many_tensors [--quick]
    python -m benchmarks.many_tensors --profile [--modules N]   # cProfile of one in-process commit

An adapter of 100,000 LoRA modules (200,000 tensors of 64 bf16 values, r=2;
`--quick`: 10,000 modules) is where per-object costs show: every tensor is
an object file, so the time per tensor of the store and of the commit
pipeline, not the bytes, sets the pace. Timed as a user runs them (the
`mfgit` CLI, one process per command, interpreter start-up included):
`mfgit commit` into a fresh repository, the re-commit of the unchanged
directory (`--allow-empty`, answered by the stat cache), `mfgit checkout`
into a new directory, and `mfgit fsck` (without --read-data). The baseline
is `cp -r` of the same adapter directory followed by os.fsync of every copied
file and directory (benchmarks.common.copy_and_fsync), measured in the same
run. The adapter directory holds two files, so the ratios say what one file
per tensor costs against one file per adapter.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Context,
    bench_env,
    copy_and_fsync,
    fmt_s,
    fmt_table,
    median,
    rmtree,
    run_cmd,
    settle,
    timed_cpu,
    warm,
)

MODULES_FULL = 100_000
MODULES_QUICK = 10_000
RANK, DIM = 2, 32


def make_many_tensor_adapter(path: Path, modules: int, *, seed: int = 0) -> dict[str, Any]:
    """A PEFT LoRA adapter directory of `modules` modules (2 bf16 tensors each), written directly.

    The safetensors file is laid out as the library lays it out (names sorted,
    data in header order, the header padded to 8 bytes); values are Gaussian.
    """
    import numpy as np

    path.mkdir(parents=True)
    names: list[tuple[str, list[int]]] = []
    for i in range(modules):
        m = f"base_model.model.model.layers.{i // 100}.experts.{i % 100}.proj"
        names += [(f"{m}.lora_A.weight", [RANK, DIM]), (f"{m}.lora_B.weight", [DIM, RANK])]
    names.sort()
    nbytes = RANK * DIM * 2
    values = (np.random.default_rng(seed).standard_normal(len(names) * RANK * DIM, dtype=np.float32) * 0.02)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # truncation to bf16
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    for k, (name, shape) in enumerate(names):
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [k * nbytes, (k + 1) * nbytes]}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path / "adapter_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        f.write(bf16.tobytes())
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": 2 * RANK, "target_modules": ["proj"],
              "base_model_name_or_path": "many-experts-test-model", "task_type": "CAUSAL_LM"}
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2))
    old = time.time() - 10  # older than the stat cache's racy window
    for f in path.iterdir():
        os.utime(f, (old, old))
    return {"modules": modules, "tensors": len(names), "bytes": (path / "adapter_model.safetensors").stat().st_size}


def _timed(fn) -> tuple[float, float]:
    settle()
    wall, cpu, _ = timed_cpu(fn)
    return wall, cpu


def run(ctx: Context) -> dict[str, Any]:
    env = bench_env(ctx.work / "home")
    modules = MODULES_QUICK if ctx.quick else MODULES_FULL
    repeats = ctx.repeats if ctx.quick else 1  # a full commit takes tens of seconds
    src = ctx.work / "adapter"
    print(f"many_tensors: making an adapter of {modules} modules in {src} ...", flush=True)
    info = make_many_tensor_adapter(src, modules)
    n = info["tensors"]
    steps: dict[str, list[tuple[float, float]]] = {k: [] for k in ("cp", "commit", "recommit", "checkout", "fsck")}
    for i in range(repeats):
        warm([src])
        steps["cp"].append(_timed(lambda: copy_and_fsync(src, ctx.work / f"copy-{i}")))
        repo = ctx.work / f"repo-{i}"
        run_cmd(["mfgit", "init", str(repo)], env=env)
        warm([src])
        steps["commit"].append(_timed(lambda: run_cmd(["mfgit", "commit", str(src), "-m", "many"], cwd=repo, env=env)))
        steps["recommit"].append(_timed(lambda: run_cmd(["mfgit", "commit", str(src), "-m", "again", "--allow-empty"],
                                                        cwd=repo, env=env)))
        steps["checkout"].append(_timed(lambda: run_cmd(["mfgit", "checkout", "HEAD", "--to", str(ctx.work / f"out-{i}")],
                                                        cwd=repo, env=env)))
        steps["fsck"].append(_timed(lambda: run_cmd(["mfgit", "fsck"], cwd=repo, env=env)))
        objects = sum(len(files) for _, _, files in os.walk(repo / ".mfgit" / "objects"))
    cp = median([w for w, _ in steps["cp"]])
    rows, raw = [], {}
    for name, label in (("cp", "cp -r + fsync (baseline)"), ("commit", "mfgit commit (new repository)"),
                        ("recommit", "mfgit commit --allow-empty (stat cache)"),
                        ("checkout", "mfgit checkout HEAD --to DIR"), ("fsck", "mfgit fsck")):
        wall = median([w for w, _ in steps[name]])
        cpu = median([c for _, c in steps[name]])
        raw[name] = {"wall_s": [w for w, _ in steps[name]], "cpu_s": [c for _, c in steps[name]],
                     "median_s": wall, "us_per_tensor": wall / n * 1e6, "ratio_vs_cp": wall / cp}
        rows.append([label, fmt_s(wall), fmt_s(cpu), f"{wall / n * 1e6:.0f} us", f"{wall / cp:.0f}x"])
    table = {
        "title": (f"{n} tensors ({modules} LoRA modules, bf16 r={RANK}, {info['bytes'] / 1e6:.1f} MB file, "
                  f"{objects} object files); median of {repeats}"),
        "columns": ["step", "wall", "CPU", "per tensor", "vs cp -r + fsync"],
        "rows": rows,
    }
    print()
    print(fmt_table(table["columns"], table["rows"], table["title"]))
    return {
        "section": "many_tensors",
        "mode": "quick" if ctx.quick else "full",
        "repeats": repeats,
        "method": {
            "adapter": f"{modules} modules x 2 bf16 tensors of {RANK * DIM} values, written directly in the "
                       "safetensors library's layout",
            "timing": "each step is the `mfgit` CLI process, end to end; `sync` before each; the adapter read "
                      "once before the copy and the commit",
            "baseline": "`cp -r SRC DST` (GNU coreutils) then os.fsync of every copied file and directory",
            "per_tensor": "wall time of the step / number of tensors",
        },
        "tables": [table],
        "raw": {"adapter": info, "object_files": objects, "steps": raw},
    }


def profile(modules: int, work: Path, top: int) -> None:
    """cProfile of one in-process commit, with the store's worker calls run on the main thread."""
    import cProfile
    import pstats

    import mfgit.parallel
    import mfgit.repo.importer
    from mfgit.api.repository import Repository

    rmtree(work)
    work.mkdir(parents=True)
    src = work / "adapter"
    make_many_tensor_adapter(src, modules)
    os.environ.setdefault("MFGIT_AUTHOR_NAME", "bench")
    os.environ.setdefault("MFGIT_AUTHOR_EMAIL", "bench@example.org")
    repo = Repository.init(work / "repo")
    # cProfile sees one thread: run the per-tensor work serially so it is counted.
    serial = lambda fn, items: [fn(x) for x in items]  # noqa: E731
    mfgit.repo.importer.parallel_map = serial
    mfgit.parallel.parallel_map = serial
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(repo.commit, src, "profiled")
    wall = time.perf_counter() - t0
    print(f"{2 * modules} tensors, one thread: {wall:.2f} s, {wall / (2 * modules) * 1e6:.0f} us per tensor")
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)
    rmtree(work)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m benchmarks.many_tensors")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one in-process commit")
    ap.add_argument("--modules", type=int, default=MODULES_QUICK)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    if not args.profile:
        sys.exit("run the section with: python -m benchmarks many_tensors [--quick]; or pass --profile")
    from benchmarks.common import WORK_ROOT

    profile(args.modules, WORK_ROOT / "many_tensors-profile", args.top)
