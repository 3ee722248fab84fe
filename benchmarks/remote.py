"""Remote benchmark: push / clone throughput against plain boto3, the cost of a
second push, and negotiation time against history length.

    python -m benchmarks.remote [--quick]

Everything runs side by side in one run against the SAME SeaweedFS S3 server
(tests/seaweed.py's SeaweedServer, started here on 127.0.0.1 with its data in a
temporary directory), so both sides see the same server, disk and network
stack. Sides are alternated (mfgit, boto3, mfgit, boto3, ...) and the median of
the repetitions is reported.

1. Push and clone of one adapter (~200 MB bf16; --quick ~50 MB, made by
   benchmarks.common.make_adapter) committed into a repository:
   - mfgit: the `mfgit push` / `mfgit clone` CLI processes, end to end
     (interpreter start-up, botocore import, negotiation, SHA-256 checks
     included), and the in-process API (`repo.push`, `remotes.clone`);
   - boto3, written as a user would: the same stored object files (the bytes
     mfgit sends), uploaded with a ThreadPoolExecutor(16) of put_object; and
     downloaded with a ThreadPoolExecutor(16) of get_object, each written to a
     file. Timed in-process (boto3 already imported, client made inside the
     timing) and as a script run with a fresh interpreter, like the CLI.
   MB/s are of the stored bytes; an untimed boto3 round first warms the
   server up. Target: mfgit time <= 1.5x boto3's.
2. A second push of the unchanged branch: objects sent (target 0) and time.
3. One new commit (one layer re-randomised) on top of a history of 10 and of
   1,000 commits (--quick: 10 and 200) of a small adapter: objects pushed and
   fetched, and the negotiation time of push and of fetch (from the --json
   summaries of the `mfgit push` / `mfgit fetch` processes); both histories
   are built first, then the rounds alternate between them (5 each; full: 7);
   medians are reported (and minima, the least disturbed round).
   Target: the time does not grow with the history: long / short <= 1.5.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import (
    MB,
    WORK_ROOT,
    Context,
    bench_env,
    fmt_table,
    make_adapter,
    median,
    rmtree,
    settle,
)

NAME = "remote"

TARGETS = {
    "push_vs_boto3": 1.5,
    "clone_vs_boto3": 1.5,
    "second_push_objects": 0,
    "negotiation_growth": 1.5,
}

BUCKET = "mfgit-bench"
NEGOTIATION_ROUNDS = {True: 5, False: 7}  # quick: full
WORKERS = 16


def _target(name: str, label: str, value: float | None, target: float, unit: str) -> dict[str, Any]:
    return {"name": name, "label": label, "value": value, "target": target, "unit": unit,
            "met": None if value is None else bool(value <= target)}


def _yn(ok: bool) -> str:
    return "yes" if ok else "NO"


# -- the boto3 baseline, as a user would write it ------------------------------------------------

BOTO3_SCRIPT = textwrap.dedent('''
    import os, sys, boto3
    from concurrent.futures import ThreadPoolExecutor
    mode, bucket, prefix, folder = sys.argv[1:5]
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    if mode == "upload":
        files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
        def put(path):
            with open(path, "rb") as f:
                s3.put_object(Bucket=bucket, Key=prefix + "/" + os.path.relpath(path, folder), Body=f.read())
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, files))
    else:
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
                for o in page.get("Contents", [])]
        def get(key):
            path = os.path.join(folder, os.path.relpath(key, prefix))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(get, keys))
''')


def _client(server):
    import boto3

    return boto3.client("s3", endpoint_url=server.endpoint_url, region_name=server.region,
                        aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key)


def boto3_upload(server, folder: Path, prefix: str) -> int:
    """Upload every file under `folder` with 16 threads of put_object; the bytes sent."""
    s3 = _client(server)
    files = [p for p in folder.rglob("*") if p.is_file()]

    def put(path: Path) -> int:
        data = path.read_bytes()
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=data)
        return len(data)

    with ThreadPoolExecutor(WORKERS) as pool:
        return sum(pool.map(put, files))


def boto3_download(server, prefix: str, folder: Path) -> int:
    """Download every object under `prefix` with 16 threads of get_object into files."""
    s3 = _client(server)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
            for o in page.get("Contents", [])]

    def get(key: str) -> int:
        path = folder / key[len(prefix) + 1:]
        path.parent.mkdir(parents=True, exist_ok=True)
        data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        path.write_bytes(data)
        return len(data)

    with ThreadPoolExecutor(WORKERS) as pool:
        return sum(pool.map(get, keys))


# -- helpers -------------------------------------------------------------------------------------


class _Env:
    """The environment of the CLI processes, also applied to this process
    (in-process API calls) while the benchmark runs."""

    def __init__(self, work: Path, server):
        self.vars = bench_env(work / "home")
        self.vars.update({
            "MFGIT_CONFIG_GLOBAL": str(work / "home" / "mfgit.cfg"),
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_ENDPOINT_URL": server.endpoint_url,
            "AWS_DEFAULT_REGION": server.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(work / "home" / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(work / "home" / "no-aws-credentials"),
        })
        self.vars.pop("AWS_PROFILE", None)
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> "_Env":
        for k, v in self.vars.items():
            if k.startswith(("MFGIT_", "AWS_")):
                self._saved[k] = os.environ.get(k)
                os.environ[k] = v
        return self

    def __exit__(self, *exc: Any) -> None:
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def mfgit(self, *args: Any, cwd: Path | None = None) -> tuple[float, str]:
        """Run the mfgit CLI; (wall seconds, stdout)."""
        t0 = time.perf_counter()
        p = subprocess.run(["mfgit", *map(str, args)], cwd=cwd, env=self.vars, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"mfgit {' '.join(map(str, args))} exited {p.returncode}: {p.stderr}")
        return dt, p.stdout

    def script(self, *args: Any) -> float:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", BOTO3_SCRIPT, *map(str, args)], env=self.vars,
                           capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"boto3 script {args[0]} failed: {p.stderr[-2000:]}")
        return dt


def _stored_objects(repo, folder: Path) -> int:
    """Copy every stored object file of `repo` under `folder`, named as on
    the remote (objects/ab/cdef...): the bytes mfgit sends. Returns bytes."""
    total = 0
    for oid in repo.store.iter_ids():
        data = repo.store.read_stored(oid)
        path = folder / "objects" / oid[:2] / oid[2:]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += len(data)
    return total


def _build_history(repo, n: int) -> str:
    """n more commits on the current branch, written in one batch (same adapter)."""
    from mfgit.objects.model import Commit

    branch = f"refs/heads/{repo.head_branch()}"
    start = repo.head()
    base = repo.read_commit(start)
    parent = start
    repo.store.begin_batch()
    try:
        for i in range(n):
            c = Commit(adapter=base.adapter, parents=(parent,), author=base.author, site=base.site,
                       timestamp=f"2026-01-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}Z",
                       message=f"history step {i}", provenance=base.provenance)
            parent = repo.put_commit(c)
    finally:
        repo.store.end_batch()
    repo.refs.update(branch, parent, start, who="bench", message=f"history of {n}")
    return parent


# -- 1 and 2: throughput, second push ---------------------------------------------------------------


def _throughput(server, env: _Env, work: Path, quick: bool, repeats: int) -> dict[str, Any]:
    from mfgit.api import remotes
    from mfgit.api.repository import Repository

    target = (50 if quick else 200) * MB
    src = work / "adapter"
    info = make_adapter(src, target, dtype="bf16")
    repo_dir = work / "site"
    repo = Repository.init(repo_dir, site="bench")
    repo.commit(src, "adapter")
    stored_dir = work / "stored"
    stored = _stored_objects(repo, stored_dir)
    n_objects = sum(1 for _ in repo.store.iter_ids())
    print(f"remote: adapter {info['safetensors_bytes'] / MB:.0f} MB raw, {n_objects} objects, "
          f"{stored / MB:.0f} MB stored", flush=True)

    # Untimed warm-up: the server's first writes allocate its volumes.
    boto3_upload(server, stored_dir, "warmup")
    boto3_download(server, "warmup", work / "warmup")
    rmtree(work / "warmup")
    push_cli, push_api, up_boto, up_script = [], [], [], []
    clone_cli, clone_api, down_boto, down_script = [], [], [], []
    second: list[tuple[float, dict]] = []
    negotiation_first: list[float] = []
    for i in range(repeats):
        # push: mfgit CLI, boto3 in-process, mfgit API, boto3 script (fresh prefixes each time)
        p_cli = f"cli-{uuid.uuid4().hex[:8]}"
        repo.remote_add(p_cli, f"s3://{BUCKET}/{p_cli}")
        settle()
        dt, out = env.mfgit("push", p_cli, "--json", cwd=repo_dir)
        push_cli.append(dt)
        report = json.loads(out)
        assert report["objects"] == n_objects, report
        negotiation_first.append(report["negotiation_seconds"])
        settle()
        t0 = time.perf_counter()
        sent = boto3_upload(server, stored_dir, f"boto-{uuid.uuid4().hex[:8]}")
        up_boto.append(time.perf_counter() - t0)
        assert sent == stored
        p_api = f"api-{uuid.uuid4().hex[:8]}"
        repo.remote_add(p_api, f"s3://{BUCKET}/{p_api}")
        settle()
        t0 = time.perf_counter()
        rep = repo.push(p_api)
        push_api.append(time.perf_counter() - t0)
        assert rep["bytes"] == stored
        settle()
        boto_prefix = f"script-{uuid.uuid4().hex[:8]}"
        up_script.append(env.script("upload", BUCKET, boto_prefix, stored_dir))

        # a second push of the unchanged branch
        dt, out = env.mfgit("push", p_cli, "--json", cwd=repo_dir)
        second.append((dt, json.loads(out)))

        # clone: mfgit CLI, boto3 in-process, mfgit API, boto3 script
        for d in ("clone-cli", "clone-api", "get-boto", "get-script"):
            rmtree(work / d)
        settle()
        dt, _ = env.mfgit("clone", "-q", f"s3://{BUCKET}/{p_cli}", work / "clone-cli")
        clone_cli.append(dt)
        settle()
        t0 = time.perf_counter()
        got = boto3_download(server, p_cli, work / "get-boto")
        down_boto.append(time.perf_counter() - t0)
        assert got >= stored
        settle()
        t0 = time.perf_counter()
        remotes.clone(f"s3://{BUCKET}/{p_api}", work / "clone-api")
        clone_api.append(time.perf_counter() - t0)
        settle()
        down_script.append(env.script("download", BUCKET, p_cli, work / "get-script"))
        print(f"remote: round {i + 1}/{repeats}: push cli {push_cli[-1]:.2f} s / boto3 {up_boto[-1]:.2f} s; "
              f"clone cli {clone_cli[-1]:.2f} s / boto3 {down_boto[-1]:.2f} s", flush=True)
    assert Repository.open(work / "clone-cli").resolve("HEAD") == repo.resolve("HEAD")
    for d in ("clone-cli", "clone-api", "get-boto", "get-script", "stored"):
        rmtree(work / d)

    def block(xs: list[float]) -> dict[str, Any]:
        m = median(xs)
        return {"median_s": m, "all_s": xs, "mb_per_s": stored / MB / m if m else None}

    out = {
        "adapter": info, "objects": n_objects, "stored_bytes": stored,
        "push": {"mfgit_cli": block(push_cli), "mfgit_api": block(push_api),
                 "boto3": block(up_boto), "boto3_script": block(up_script),
                 "negotiation_s": median(negotiation_first)},
        "clone": {"mfgit_cli": block(clone_cli), "mfgit_api": block(clone_api),
                  "boto3": block(down_boto), "boto3_script": block(down_script)},
        "second_push": {"objects": max(r["objects"] for _, r in second), "bytes": max(r["bytes"] for _, r in second),
                        "median_s": median([dt for dt, _ in second]),
                        "negotiation_s": median([r["negotiation_seconds"] for _, r in second])},
    }
    for side in ("push", "clone"):
        o = out[side]
        o["ratio_api_vs_boto3"] = o["mfgit_api"]["median_s"] / o["boto3"]["median_s"]
        o["ratio_cli_vs_boto3_script"] = o["mfgit_cli"]["median_s"] / o["boto3_script"]["median_s"]
        o["ratio_cli_vs_boto3"] = o["mfgit_cli"]["median_s"] / o["boto3"]["median_s"]
    rmtree(repo_dir)
    rmtree(src)
    return out


# -- 3: negotiation against history length ------------------------------------------------------------


def _negotiation(env: _Env, work: Path, lengths: list[int], repeats: int) -> dict[str, Any]:
    """Both histories are set up first; then the rounds alternate between
    them (10, 1000, 10, 1000, ...) so that the machine's other work falls on
    both alike."""
    from mfgit.api.repository import Repository

    setups: dict[int, dict[str, Any]] = {}
    for n in lengths:
        base = work / f"hist-{n}"
        make_adapter(base / "adapter", 2 * MB, dtype="bf16", n_layers=4, layer_seeds=[0, 1, 2, 3])
        a_dir = base / "a"
        a = Repository.init(a_dir, site="a")
        a.commit(base / "adapter", "start")
        t0 = time.perf_counter()
        _build_history(a, n - 1)
        build_s = time.perf_counter() - t0
        a.remote_add("hub", f"s3://{BUCKET}/hist-{n}-{uuid.uuid4().hex[:6]}")
        t0 = time.perf_counter()
        a.push("hub")
        first_push_s = time.perf_counter() - t0
        b_dir = base / "b"
        shutil.copytree(a_dir, b_dir)  # a second site with the same history and remote
        assert len(a.log()) == n
        setups[n] = {"base": base, "a": a, "a_dir": a_dir, "b_dir": b_dir, "build_s": build_s,
                     "first_push_s": first_push_s, "rounds": []}
    for r in range(repeats):
        for n in lengths:
            st = setups[n]
            upd = st["base"] / f"update-{r}"
            make_adapter(upd, 2 * MB, dtype="bf16", n_layers=4, layer_seeds=[100 + r, 1, 2, 3])  # layer 0 changed
            st["a"].commit(upd, f"update {r}")
            settle()
            dt_push, pushed = env.mfgit("push", "hub", "--json", cwd=st["a_dir"])
            dt_fetch, fetched = env.mfgit("fetch", "hub", "--json", cwd=st["b_dir"])
            pushed, fetched = json.loads(pushed), json.loads(fetched)
            st["rounds"].append({"push_objects": pushed["objects"], "push_negotiation_s": pushed["negotiation_seconds"],
                                 "push_s": dt_push, "fetch_objects": fetched["objects"],
                                 "fetch_negotiation_s": fetched["negotiation_seconds"], "fetch_s": dt_fetch})
    out: dict[Any, Any] = {}
    for n in lengths:
        st, rows = setups[n], setups[n]["rounds"]
        out[n] = {
            "commits": n, "build_history_s": st["build_s"], "first_push_s": st["first_push_s"], "rounds": rows,
            "push_objects": max(x["push_objects"] for x in rows),
            "fetch_objects": max(x["fetch_objects"] for x in rows),
            "push_negotiation_s": median([x["push_negotiation_s"] for x in rows]),
            "fetch_negotiation_s": median([x["fetch_negotiation_s"] for x in rows]),
            "push_negotiation_min_s": min(x["push_negotiation_s"] for x in rows),
            "fetch_negotiation_min_s": min(x["fetch_negotiation_s"] for x in rows),
            "push_s": median([x["push_s"] for x in rows]),
            "fetch_s": median([x["fetch_s"] for x in rows]),
        }
        print(f"remote: history {n}: push {out[n]['push_objects']} objects, negotiation "
              f"{out[n]['push_negotiation_s'] * 1000:.1f} ms; fetch {out[n]['fetch_objects']} objects, "
              f"negotiation {out[n]['fetch_negotiation_s'] * 1000:.1f} ms", flush=True)
        rmtree(st["base"])
    short, long_ = out[lengths[0]], out[lengths[-1]]
    out["push_growth"] = long_["push_negotiation_s"] / short["push_negotiation_s"]
    out["fetch_growth"] = long_["fetch_negotiation_s"] / short["fetch_negotiation_s"]
    out["push_growth_min"] = long_["push_negotiation_min_s"] / short["push_negotiation_min_s"]
    out["fetch_growth_min"] = long_["fetch_negotiation_min_s"] / short["fetch_negotiation_min_s"]
    return out


# -- the section ---------------------------------------------------------------------------------------


def run(quick: "bool | Context" = False) -> dict[str, Any]:
    """Run the benchmark; `quick` is a bool or a benchmarks.common.Context."""
    if isinstance(quick, Context):
        ctx = quick
    else:
        work = WORK_ROOT / NAME
        rmtree(work)
        work.mkdir(parents=True)
        ctx = Context(quick=bool(quick), work=work)
    try:
        return _run(ctx)
    finally:
        if not isinstance(quick, Context):
            rmtree(ctx.work)


def _run(ctx: Context) -> dict[str, Any]:
    repo_root = str(Path(__file__).resolve().parent.parent)
    if repo_root not in sys.path:
        sys.path.insert(0, repo_root)
    from tests.seaweed import SeaweedServer

    t_start = time.perf_counter()
    quick = ctx.quick
    repeats = ctx.repeats
    lengths = [10, 200] if quick else [10, 1000]
    # SeaweedFS keeps its data in a temporary directory; put it on the benchmark's disk.
    old_tmp = tempfile.tempdir
    tempfile.tempdir = str(ctx.work)
    try:
        server = SeaweedServer().start()
    finally:
        tempfile.tempdir = old_tmp
    try:
        server.make_bucket(BUCKET)
        with _Env(ctx.work, server) as env:
            print(f"remote: SeaweedFS at {server.endpoint_url} (started in {server.startup_seconds:.1f} s)", flush=True)
            tp = _throughput(server, env, ctx.work, quick, repeats)
            neg = _negotiation(env, ctx.work, lengths, NEGOTIATION_ROUNDS[quick])
        weed_version = _weed_version()
    finally:
        server.stop()
    return _report(ctx, tp, neg, lengths, repeats, weed_version, time.perf_counter() - t_start)


def _weed_version() -> str | None:
    try:
        from tests.seaweed import find_weed

        p = subprocess.run([find_weed(), "version"], capture_output=True, text=True, timeout=30)
        return (p.stdout.strip().splitlines() or [None])[0]
    except Exception:  # noqa: BLE001 - informational only
        return None


def _report(ctx: Context, tp: dict, neg: dict, lengths: list[int], repeats: int, weed: str | None,
            duration: float) -> dict[str, Any]:
    import boto3

    p, c, s2 = tp["push"], tp["clone"], tp["second_push"]
    mb = tp["stored_bytes"] / MB
    short, long_ = neg[lengths[0]], neg[lengths[-1]]
    growth = max(neg["push_growth"], neg["fetch_growth"])
    targets = [
        _target("push_vs_boto3", "push: mfgit API / boto3 put_object x16 (in-process)", p["ratio_api_vs_boto3"],
                TARGETS["push_vs_boto3"], "x"),
        _target("push_cli_vs_boto3_script", "push: `mfgit push` process / boto3 script process",
                p["ratio_cli_vs_boto3_script"], TARGETS["push_vs_boto3"], "x"),
        _target("clone_vs_boto3", "clone: mfgit API / boto3 get_object x16 (in-process)", c["ratio_api_vs_boto3"],
                TARGETS["clone_vs_boto3"], "x"),
        _target("clone_cli_vs_boto3_script", "clone: `mfgit clone` process / boto3 script process",
                c["ratio_cli_vs_boto3_script"], TARGETS["clone_vs_boto3"], "x"),
        _target("second_push_objects", "second push of unchanged data: objects sent", s2["objects"],
                TARGETS["second_push_objects"], "objects"),
        _target("negotiation_growth", f"negotiation time, {lengths[-1]} / {lengths[0]} commits of history (worst of push, fetch)",
                growth, TARGETS["negotiation_growth"], "x"),
    ]

    def row(label: str, side: dict, key: str, base: str | None, target: float | None) -> list[Any]:
        b = side[key]
        ratio = b["median_s"] / side[base]["median_s"] if base else None
        return [label, f"{b['median_s']:.2f} s", f"{b['mb_per_s']:.0f} MB/s",
                "" if ratio is None else f"{ratio:.2f}x", "" if target is None or ratio is None else f"<= {target}x",
                "" if target is None or ratio is None else _yn(ratio <= target)]

    t_tp = {
        "title": (f"Push and clone of a {tp['adapter']['safetensors_bytes'] / MB:.0f} MB bf16 adapter "
                  f"({tp['objects']} objects, {mb:.0f} MB stored) to/from SeaweedFS on 127.0.0.1; "
                  f"median of {repeats}; MB/s of stored bytes"),
        "columns": ["step", "time", "throughput", "vs baseline", "target", "met"],
        "rows": [
            row("push: mfgit API (repo.push)", p, "mfgit_api", "boto3", TARGETS["push_vs_boto3"]),
            row("push: boto3 put_object x16 (in-process, baseline)", p, "boto3", None, None),
            row("push: `mfgit push` (CLI process)", p, "mfgit_cli", "boto3_script", TARGETS["push_vs_boto3"]),
            row("push: boto3 script (python process, baseline)", p, "boto3_script", None, None),
            row("clone: mfgit API (remotes.clone)", c, "mfgit_api", "boto3", TARGETS["clone_vs_boto3"]),
            row("clone: boto3 get_object x16 (in-process, baseline)", c, "boto3", None, None),
            row("clone: `mfgit clone` (CLI process)", c, "mfgit_cli", "boto3_script", TARGETS["clone_vs_boto3"]),
            row("clone: boto3 script (python process, baseline)", c, "boto3_script", None, None),
            ["second push, unchanged (CLI process)", f"{s2['median_s']:.2f} s", f"{s2['objects']} objects sent",
             "", "0 objects", _yn(s2["objects"] == 0)],
        ],
    }
    t_neg = {
        "title": ("One new commit (1 of 4 layers re-randomised, ~2 MB bf16 adapter) on top of a long history; "
                  f"`mfgit push` / `mfgit fetch` --json, median of {len(short['rounds'])} (rounds alternate between the histories)"),
        "columns": ["history", "push objects", "push negotiation", "push total", "fetch objects",
                    "fetch negotiation", "fetch total"],
        "rows": [[f"{n} commits", neg[n]["push_objects"], f"{neg[n]['push_negotiation_s'] * 1000:.1f} ms",
                  f"{neg[n]['push_s']:.2f} s", neg[n]["fetch_objects"],
                  f"{neg[n]['fetch_negotiation_s'] * 1000:.1f} ms", f"{neg[n]['fetch_s']:.2f} s"]
                 for n in lengths] + [[f"ratio {lengths[-1]}/{lengths[0]}",
                                       f"{long_['push_objects'] / max(1, short['push_objects']):.2f}x",
                                       f"{neg['push_growth']:.2f}x", "",
                                       f"{long_['fetch_objects'] / max(1, short['fetch_objects']):.2f}x",
                                       f"{neg['fetch_growth']:.2f}x", ""],
                                      ["ratio of minima", "", f"{neg['push_growth_min']:.2f}x", "", "",
                                       f"{neg['fetch_growth_min']:.2f}x", ""]],
    }
    t_targets = {
        "title": "Targets",
        "columns": ["measure", "value", "target", "met"],
        "rows": [[t["label"], f"{t['value']:.2f}" if isinstance(t["value"], float) else t["value"],
                  f"<= {t['target']}", _yn(bool(t["met"]))] for t in targets],
    }
    tables = [t_tp, t_neg]
    for t in tables + [t_targets]:
        print()
        print(fmt_table(t["columns"], t["rows"], t["title"]))
    print()
    return {
        "section": NAME,
        "mode": "quick" if ctx.quick else "full",
        "repeats": repeats,
        "duration_s": duration,
        "method": {
            "server": "one SeaweedFS `weed server` (master, volume, filer, S3 gateway) on 127.0.0.1, data on the "
                      "benchmark's disk, started by the benchmark (tests/seaweed.py); both sides use it",
            "baseline": "boto3 as a user would write it: ThreadPoolExecutor(16) of put_object over the same stored "
                        "object files mfgit sends (read from disk), and of get_object written to files (no fsync); "
                        "in-process (client created inside the timing) and as a `python -c` script",
            "mfgit": "`mfgit push/clone` CLI processes end to end, and the in-process API; mfgit verifies the "
                     "SHA-256 of every received object and syncs the store to disk before refs move",
            "order": "sides alternated within each round, fresh S3 prefixes and directories each time, `sync` "
                     "before every timed step; medians reported",
            "negotiation": "negotiation_seconds from the --json summaries: push = remote format check, ref read, "
                           "remote ref listing, walk to the remote's commits and existence checks; fetch = format "
                           "check, ref listing, walk down to local commits",
        },
        "tools": {"boto3": boto3.__version__, "seaweedfs": weed},
        "targets": targets,
        "tables": tables,
        "raw": {"throughput": tp, "negotiation": {str(k): v for k, v in neg.items()}},
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m benchmarks.remote", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="~50 MB adapter, histories of 10 and 200 commits")
    ap.add_argument("--json", metavar="PATH", help="also write the result dict to PATH")
    args = ap.parse_args(argv)
    res = run(args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str) + "\n")
    met = all(t["met"] for t in res["targets"])
    print(f"remote: done in {res['duration_s']:.0f} s; all targets met: {met}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
