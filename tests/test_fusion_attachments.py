"""MedForge-Fusion from the sites' attachments: `merge --search weights --data attachments:distilled --score prompts`.

Real PEFT LoRA adapters of a tiny CLIP model built from a config (vision
q_proj/v_proj and the visual projection adapted), one per site, each
committed through the `mfgit` command with its task spec (`task`, with
pre-tokenised prompts: the tiny model has no tokenizer) and its distilled
set (`distilled`: pixel_values and labels), pushed to a hub. The coordinator
clones the hub and integrates one site into the composite with the built-in
loader and scorer, through the command, as MedForge integrates sites one at
a time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("nevergrad")
os.environ["HF_HUB_OFFLINE"] = "1"  # PEFT looks the tiny model up on the Hub when saving; there is none

from tests.conftest import Cli, isolated_env  # noqa: E402

CLIPMOD = textwrap.dedent('''
    import torch
    from transformers import CLIPConfig, CLIPModel

    NAME = "tiny-clip-test"

    def config():
        return CLIPConfig(
            text_config=dict(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=16, bos_token_id=1, eos_token_id=3,
                             pad_token_id=0),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=16, patch_size=8),
            projection_dim=16)

    def base():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = CLIPModel(config())
        model.name_or_path = NAME
        for p in model.parameters():
            p.requires_grad_(False)
        return model.eval()
''')

TARGETS = r".*vision_model.*\.(q_proj|v_proj)|visual_projection"
# site → (task, prompt token ids per class)
SITES = {"a": ("breast", [[1, 5, 9, 3], [1, 7, 11, 3]]),
         "b": ("lung", [[1, 13, 3], [1, 17, 19, 21, 3]]),
         "c": ("breast", [[1, 5, 9, 3], [1, 7, 11, 3]])}
L1 = 0.05


def _clipmod(root: Path):
    path = root / "clipmod.py"
    path.write_text(CLIPMOD, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("clipmod_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return path, mod


def make_site(root: Path, mod, site: str, seed: int) -> dict[str, Path]:
    """A real PEFT LoRA of the tiny CLIP (random factors, seeded) with its task spec and distilled set."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    task, ids = SITES[site]
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0)
    cfg.base_model_name_or_path = mod.NAME
    model = get_peft_model(mod.base(), cfg)
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if ".lora_A." in name or ".lora_B." in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.3
    out = root / f"site-{site}"
    model.save_pretrained(str(out / "adapter"))
    spec = {"task": task, "classes": ["benign", "malignant"],
            "prompts": [[f"benign {task} tissue"], [f"malignant {task} tumour"]], "metric": "accuracy",
            "prompt_inputs": {"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids]}}
    (out / "task.json").write_text(json.dumps(spec), encoding="utf-8")
    n = 12
    save_file({"pixel_values": torch.randn((n, 3, 16, 16), generator=gen),
               "labels": torch.randint(0, 2, (n,), generator=gen, dtype=torch.int64)},
              str(out / "distilled.safetensors"))
    return {"adapter": out / "adapter", "task": out / "task.json", "distilled": out / "distilled.safetensors"}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def site_repo(cli: Cli, root: Path, hub: Path, site: str, files: dict[str, Path], private: bool = False) -> Path:
    home = root / f"repo-{site}"
    cli.ok("init", home, "--site", site, "-b", f"sites/{site}")
    attach = "--attach-private" if private else "--attach"
    cli.ok("commit", files["adapter"], "-m", f"site {site}", "--meta", "samples=12", "--attach",
           f"task={files['task']}", attach, f"distilled={files['distilled']}", cwd=home)
    cli.ok("remote", "add", "origin", hub, cwd=home)
    cli.ok("push", "origin", f"sites/{site}", "-q", cwd=home)
    return home


@pytest.fixture(scope="module")
def fusion(tmp_path_factory):
    """Three sites on a hub; a coordinator whose main holds sites a and b, then integrates c by the search."""
    root = tmp_path_factory.mktemp("fusion")
    cli = Cli(root / "home", root, isolated_env(root / "home"))
    clip_path, mod = _clipmod(root)
    hub = root / "hub.mfgit"
    cli.ok("init", "--bare", hub)
    files = {s: make_site(root, mod, s, seed=10 + i) for i, s in enumerate(SITES)}
    for s in SITES:
        site_repo(cli, root, hub, s, files[s])
    coord = root / "coord"
    cli.ok("clone", hub, coord, "-q")
    cli.ok("switch", "--orphan", "main", cwd=coord)
    cli.ok("merge", "origin/sites/a", "origin/sites/b", "-m", "composite of a and b", cwd=coord)
    base = f"{clip_path}:base"
    made = cli.json("merge", "main", "origin/sites/c", "--search", "weights", "--data", "attachments:distilled",
                    "--score", "prompts", "--l1", str(L1), "--budget", "40", "--base", base, "--json", cwd=coord)
    return {"root": root, "cli": cli, "mod": mod, "hub": hub, "coord": coord, "files": files, "base": base,
            "made": made}


def test_the_search_records_every_attachment_it_read_by_digest(fusion):
    search = fusion["made"]["provenance"]["search"]
    assert search["scorer"]["score"] == "prompts" and search["scorer"]["data"] == "attachments:distilled"
    leaves = {lf["site"]: lf["commit"] for lf in fusion["made"]["provenance"]["leaves"]}
    assert sorted(leaves) == ["a", "b", "c"]
    got = sorted((a["site"], a["name"], a["digest"], a["commit"]) for a in search["attachments"])
    want = sorted((s, name, sha(fusion["files"][s][name]), leaves[s]) for s in SITES for name in ("distilled", "task"))
    assert got == want
    assert search["layout"]["commits"] == [leaves[s] for s in sorted(leaves)]


def test_the_chosen_weights_score_no_worse_than_uniform_weights_on_the_same_objective(fusion):
    """The uniform composite is scored here, in-process, with the built-in loader and scorer."""
    from mfgit.api.prompts import PromptScore
    from mfgit.api.repository import Repository
    from mfgit.api.sitedata import load_site_data

    cli, coord = fusion["cli"], fusion["coord"]
    search = fusion["made"]["provenance"]["search"]
    cli.ok("switch", "--orphan", "uniform", cwd=coord)
    cli.ok("merge", "origin/sites/a", "origin/sites/b", "origin/sites/c", "-m", "uniform", cwd=coord)
    repo = Repository.open(coord)
    sites, _reads = load_site_data(repo, fusion["made"]["provenance"]["leaves"], "distilled")
    values = PromptScore()(repo.load_adapter(fusion["mod"].base(), "uniform").eval(), sites)
    uniform = values["score"] + L1 * 1.0  # three weights of 1/3
    assert search["start"]["weights"] == pytest.approx([1 / 3] * 3)
    assert search["start"]["score"] == pytest.approx(values["score"], abs=1e-5)
    assert search["chosen"]["objective"] <= uniform + 1e-6
    assert search["scored"] > 10 and {"breast/cross_entropy", "lung/cross_entropy"} <= set(
        search["evaluations"][0]["values"])
    cli.ok("switch", "main", cwd=coord)


def test_verify_reproduce_rereads_the_attachments_and_passes(fusion):
    report = fusion["cli"].json("verify", "main", "--reproduce", "--json", cwd=fusion["coord"])
    assert report["ok"], report["failures"]
    assert any(m["ok"] and m["identical"] for m in report["reproduce"]["merges"])


def test_a_private_distilled_set_stops_the_merge_and_verify_in_one_line(fusion):
    cli, root, coord = fusion["cli"], fusion["root"], fusion["coord"]
    files = make_site(root, fusion["mod"], "c", seed=99)  # a new version of site c, its distilled set private
    home = root / "repo-c"
    cli.ok("commit", files["adapter"], "-m", "site c, v2", "--attach", f"task={files['task']}",
           "--attach-private", f"distilled={files['distilled']}", cwd=home)
    cli.ok("push", "origin", "sites/c", "-q", cwd=home)
    cli.ok("fetch", "origin", "-q", cwd=coord)
    search = ["--search", "weights", "--data", "attachments:distilled", "--score", "prompts", "--budget", "2",
              "--base", fusion["base"]]
    line = cli.fails("merge", "main", "origin/sites/c", *search, cwd=coord, code=1)
    assert "attachment 'distilled' of commit" in line and "is private to its site (c)" in line, line

    # At the site the bytes are there: its own search runs; a clone cannot re-read them.
    cli.ok("switch", "--orphan", "fusion-c", cwd=home)
    cli.ok("merge", "sites/c", *search, cwd=home)
    cli.ok("push", "origin", "fusion-c", "-q", cwd=home)
    cli.ok("fetch", "origin", "-q", cwd=coord)
    res = cli("verify", "origin/fusion-c", "--reproduce", "--json", cwd=coord)
    assert res.returncode != 0
    failures = json.loads(res.stdout)["failures"]
    assert [f["check"] for f in failures] == ["reproduce"]
    assert "is private to its site (c)" in failures[0]["reason"] and "\n" not in failures[0]["reason"]
    text = cli("verify", "origin/fusion-c", "--reproduce", cwd=coord)
    assert sum("private to its site" in ln for ln in (text.stdout + text.stderr).splitlines()) == 1
