"""Shared helpers for the benchmark sections: timing, processes, disk, adapters, machine."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
WORK_ROOT = PACKAGE_DIR / "_work"  # git-ignored (/benchmarks/_work/ in .gitignore)
MB = 1_000_000


# -- context ---------------------------------------------------------------------------


@dataclass
class Context:
    """What a section's run() gets: mode, its scratch directory, environment."""

    quick: bool
    work: Path  # scratch directory of this section, on the disk being measured
    env: dict[str, str] = field(default_factory=dict)  # environment for subprocesses

    @property
    def repeats(self) -> int:
        """How many times to run a cheap timed step (median reported)."""
        return 2 if self.quick else 3


def bench_env(home: Path) -> dict[str, str]:
    """Environment for the tools we time: a private HOME so no user config leaks in."""
    env = dict(os.environ)
    home.mkdir(parents=True, exist_ok=True)
    env.update({
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.org",
        "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.org",
        "MFGIT_AUTHOR_NAME": "bench", "MFGIT_AUTHOR_EMAIL": "bench@example.org",
        "DVC_NO_ANALYTICS": "1", "DVC_NO_UPDATER": "1",
    })
    # The mfgit under test: the one this interpreter imports, via its console script.
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


# -- timing ----------------------------------------------------------------------------


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _cpu_now() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed_cpu(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process's threads and of its waited-for children, result).

    CPU time is less sensitive than wall time to other work on the machine.
    """
    c0 = _cpu_now()
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    return wall, _cpu_now() - c0, out


def repeat_timed(fn: Callable[[], Any], n: int, *, setup: Callable[[], Any] | None = None,
                 teardown: Callable[[], Any] | None = None) -> list[float]:
    """Run `fn` n times, `setup` (untimed) before each and `teardown` (untimed) after; the times."""
    out = []
    for _ in range(n):
        if setup is not None:
            setup()
        dt, _ = timed(fn)
        out.append(dt)
        if teardown is not None:
            teardown()
    return out


# -- processes and files -------------------------------------------------------------------


def run_cmd(args: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command; raise RuntimeError with its output if it fails. Returns stdout."""
    p = subprocess.run(list(args), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def tool_version(args: Sequence[str], env: dict[str, str] | None = None) -> str | None:
    """First line of `TOOL --version`, or None if the tool is not installed or fails."""
    if shutil.which(args[0], path=(env or os.environ).get("PATH")) is None:
        return None
    try:
        p = subprocess.run(list(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    lines = p.stdout.strip().splitlines()
    return lines[0].strip() if lines else ""


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def warm(paths: Iterable[Path]) -> int:
    """Read files fully (into the page cache) so every timed side starts from the same cache state."""
    total = 0
    for root in paths:
        for p in ([root] if root.is_file() else files_under(root)):
            with open(p, "rb") as f:
                while chunk := f.read(1 << 24):
                    total += len(chunk)
    return total


def settle() -> None:
    """Flush dirty pages of earlier steps so they are not written back inside the next timed step."""
    os.sync()


def fsync_tree(path: Path) -> None:
    """fsync every file under `path`, then every directory (deepest first)."""
    dirs = [path] + sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for p in files_under(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for d in dirs:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def copy_and_fsync(src: Path, dst: Path) -> None:
    """The plain baseline: `cp -r SRC DST` (GNU cp, subprocess), then os.fsync of each copied file and directory."""
    run_cmd(["cp", "-r", str(src), str(dst)])
    fsync_tree(dst)


def dir_size(path: Path) -> dict[str, int]:
    """Apparent bytes (sum of st_size) and allocated bytes (st_blocks, like du) under `path`; hard links once."""
    seen: set[tuple[int, int]] = set()
    apparent = allocated = files = 0
    if not path.exists():
        return {"apparent": 0, "allocated": 0, "files": 0}
    for root, dirs, names in os.walk(path):
        for n in names + dirs:
            st = os.lstat(os.path.join(root, n))
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            allocated += st.st_blocks * 512
            if n in names:
                apparent += st.st_size
                files += 1
    return {"apparent": apparent, "allocated": allocated, "files": files}


def rmtree(path: Path) -> None:
    if path.exists():
        # object files are written read-only; make them removable
        for root, dirs, _ in os.walk(path):
            for d in dirs:
                try:
                    os.chmod(os.path.join(root, d), 0o755)
                except OSError:
                    pass
        shutil.rmtree(path, ignore_errors=True)


# -- adapters ----------------------------------------------------------------------------------

# A Llama-7B-like decoder: every linear of each layer carries a LoRA pair.
HIDDEN = 4096
INTERMEDIATE = 11008
MODULES = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),  # (in_features, out_features)
    "self_attn.k_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (HIDDEN, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (HIDDEN, INTERMEDIATE),
    "mlp.up_proj": (HIDDEN, INTERMEDIATE),
    "mlp.down_proj": (INTERMEDIATE, HIDDEN),
}
_DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def rank_for(target_bytes: int, n_layers: int, dtype: str) -> int:
    """The LoRA rank that makes an adapter of `n_layers` layers about `target_bytes` big."""
    per_rank = n_layers * sum(i + o for i, o in MODULES.values()) * _DTYPE_BYTES[dtype]
    return max(1, round(target_bytes / per_rank))


def make_adapter(path: Path, target_bytes: int, *, dtype: str = "bf16", n_layers: int = 32,
                 layer_seeds: Sequence[int] | None = None, seed: int = 0) -> dict[str, Any]:
    """Write a PEFT LoRA adapter directory of about `target_bytes` at `path`.

    Weights look trained: lora_A ~ N(0, 1/in_features) and lora_B ~ N(0, s^2)
    with s log-uniform in [5e-4, 5e-3], each tensor with its own scale (a
    freshly initialised adapter would have B == 0, which compresses to
    nothing and would flatter every tool). Layer i's tensors depend only on
    ``layer_seeds[i]`` (default ``seed*1000 + i``), so changing one seed
    re-randomises exactly that layer. Written directly with safetensors'
    save_file in PEFT's layout and naming.
    """
    import torch
    from safetensors.torch import save_file

    tdtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    r = rank_for(target_bytes, n_layers, dtype)
    seeds = list(layer_seeds) if layer_seeds is not None else [seed * 1000 + i for i in range(n_layers)]
    if len(seeds) != n_layers:
        raise ValueError("one seed per layer")
    tensors = {}
    for i in range(n_layers):
        g = torch.Generator().manual_seed(seeds[i])
        for mod, (fin, fout) in MODULES.items():
            name = f"base_model.model.model.layers.{i}.{mod}"
            a_scale = (1.0 / fin) ** 0.5 * float(torch.empty(1).log_normal_(0.0, 0.15, generator=g))
            b_scale = 10 ** float(torch.empty(1).uniform_(-3.3, -2.3, generator=g))
            tensors[f"{name}.lora_A.weight"] = (torch.randn(r, fin, generator=g) * a_scale).to(tdtype)
            tensors[f"{name}.lora_B.weight"] = (torch.randn(fout, r, generator=g) * b_scale).to(tdtype)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "meta-llama/Llama-2-7b-hf",
        "r": r,
        "lora_alpha": 2 * r,
        "lora_dropout": 0.05,
        "bias": "none",
        "target_modules": sorted({m.split(".")[-1] for m in MODULES}),
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
        "init_lora_weights": True,
        "revision": None,
    }
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    size = (path / "adapter_model.safetensors").stat().st_size
    return {"dtype": dtype, "r": r, "layers": n_layers, "tensors": len(tensors),
            "safetensors_bytes": size, "dir_bytes": dir_size(path)["apparent"]}


# -- machine -------------------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _disk_of(path: Path) -> dict[str, Any]:
    path.mkdir(parents=True, exist_ok=True)
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    out: dict[str, Any] = {"path": str(path)}
    mountinfo = _read("/proc/self/mountinfo") or ""
    best = None
    for line in mountinfo.splitlines():
        parts = line.split()
        if len(parts) < 10 or parts[2] != f"{major}:{minor}":
            continue
        mnt = parts[4]
        if str(path).startswith(mnt) and (best is None or len(mnt) > len(best[0])):
            rest = line.split(" - ", 1)[1].split()
            best = (mnt, rest[0], rest[1])
    if best:
        out.update({"mount": best[0], "fstype": best[1], "device": best[2]})
    sysdev = f"/sys/dev/block/{major}:{minor}"
    for q in (f"{sysdev}/queue", f"{sysdev}/../queue"):
        rot = _read(f"{q}/rotational")
        if rot is not None:
            out["rotational"] = rot == "1"
            break
    for m in (f"{sysdev}/device/model", f"{sysdev}/../device/model"):
        model = _read(m)
        if model:
            out["model"] = model
            break
    try:
        du = shutil.disk_usage(path)
        out["size_gb"] = round(du.total / 1e9, 1)
        out["free_gb"] = round(du.free / 1e9, 1)
    except OSError:
        pass
    return out


def _mfgit_revision() -> str | None:
    try:
        sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no", "--", "mfgit"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=30).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def machine_info(work: Path = WORK_ROOT) -> dict[str, Any]:
    from importlib import metadata

    cpu = None
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = None
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem = round(int(line.split()[1]) * 1024 / 2**30, 1)
    os_name = None
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            os_name = line.split("=", 1)[1].strip('"')

    def ver(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    try:
        cores_usable = len(os.sched_getaffinity(0))
    except AttributeError:
        cores_usable = os.cpu_count()
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": cores_usable,
        "ram_gib": mem,
        "disk": _disk_of(work),
        "os": f"{os_name or platform.system()} (kernel {platform.release()}, {platform.machine()})",
        "python": platform.python_version(),
        "torch": ver("torch"),
        "numpy": ver("numpy"),
        "safetensors": ver("safetensors"),
        "zstandard": ver("zstandard"),
        "mfgit": ver("mfgit"),
        "mfgit_revision": _mfgit_revision(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        # other work on the machine makes timings noisy: record how busy it was
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def describe_machine(m: dict[str, Any]) -> str:
    d = m.get("disk", {})
    disk = f"{d.get('device', '?')} ({d.get('fstype', '?')}, {d.get('size_gb', '?')} GB"
    if "rotational" in d:
        disk += ", kernel says rotational" if d["rotational"] else ", non-rotational"
    if d.get("model"):
        disk += f", {d['model']}"
    disk += ")"
    return (f"CPU {m.get('cpu')}, {m.get('cores')} cores ({m.get('cores_usable')} usable), "
            f"RAM {m.get('ram_gib')} GiB, disk {disk}, {m.get('os')}, Python {m.get('python')}, "
            f"torch {m.get('torch')}, mfgit {m.get('mfgit')}"
            f"{' @ ' + m['mfgit_revision'] if m.get('mfgit_revision') else ''}, {m.get('date')}"
            + (f", load average {m['loadavg_at_start']} -> {m['loadavg_at_end']} (1/5/15 min) at start -> end"
               if m.get("loadavg_at_start") and m.get("loadavg_at_end") else "")
            + (f"; mfgit modules {m['mfgit_bytecode']}" if m.get("mfgit_bytecode") else ""))


# -- output -----------------------------------------------------------------------------------------


def fmt_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = []
    if title:
        lines.append(title)
    sep = "  "
    lines.append(sep.join(c.ljust(w) for c, w in zip(cells[0], widths)).rstrip())
    lines.append(sep.join("-" * w for w in widths))
    for r in cells[1:]:
        lines.append(sep.join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def md_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def esc(v: Any) -> str:
        return ("" if v is None else str(v)).replace("|", "\\|")

    out = ["| " + " | ".join(esc(c) for c in columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    out += ["| " + " | ".join(esc(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def fmt_mb(x: float | None) -> str:
    return "-" if x is None else f"{x / MB:.1f} MB"
