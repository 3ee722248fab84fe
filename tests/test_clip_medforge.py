"""MedForge's model end to end: site LoRAs of a tiny CLIP, mixed and merged through the real CLI.

The tiny CLIP is built from a CLIPConfig (tests/test_raw_lora.py); each site
commits a MedForge-style raw `.pt` of its vision LoRA (q_proj / v_proj and
visual_projection) with its task description attached. What is checked:

- a `mfgit mix` of three sites, loaded with `load_mixture` and CLIP's
  image-text logits, is Σⱼ wⱼ·softmax(logits of member j) with each member
  loaded on its own by PEFT;
- a DoRA site commits and checks out bit for bit, and its linear merge with a
  plain LoRA site at full rank is the dense W + Σ wᵢ ΔWᵢ, DoRA's ΔW being what
  PEFT's own merge_and_unload gives; without --base-weights the merge is one
  line with exit code 8.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.adapters import delta_weights
from tests.conftest import Cli
from tests.test_raw_lora import BASE, LORA, applied_by_hand, medforge_lora, tiny_clip, trained_raw_state

MERGE = 8  # mfgit/cli/errors.py
WEIGHTS = [0.5, 0.3, 0.2]


def _features(out) -> torch.Tensor:
    """get_*_features' projected embeddings (a tensor, or the pooler output of newer transformers)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_logits(model, pixel_values, input_ids):
    """CLIP's image-text logits: logit_scale · cos(image features, text features)."""
    image = _features(model.get_image_features(pixel_values=pixel_values))
    text = _features(model.get_text_features(input_ids=input_ids))
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return model.logit_scale.exp() * image @ text.T


def _inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    return {"pixel_values": torch.randn(4, 3, 32, 32, generator=gen),
            "input_ids": torch.randint(2, 99, (3, 8), generator=gen)}


@pytest.fixture(scope="module")
def clip_world(tmp_path_factory):
    """The base CLIP's weights on disk, three sites' raw .pt files with task.json, a DoRA adapter directory."""
    root = tmp_path_factory.mktemp("clip")
    base = tiny_clip()
    base.save_pretrained(str(root / "base"), safe_serialization=True)
    sites = []
    for i, name in enumerate(("breakhis", "lc25000", "kather")):
        site = root / name
        site.mkdir()
        pt = site / f"res_{name}_vitb16_it5ipc_lora.pt"
        torch.save(trained_raw_state(tiny_clip(), seed=1 + i), pt)
        task = site / "task.json"
        task.write_text(json.dumps({"dataset": name, "classes": ["benign", "malignant"], "ipc": 5}))
        sites.append({"name": name, "pt": pt, "task": task})
    # A DoRA site saved by PEFT itself: trained factors and magnitudes, then save_pretrained.
    raw = trained_raw_state(tiny_clip(), seed=7, use_dora=True)
    dora = applied_by_hand(tiny_clip(), raw, use_dora=True)
    # A config-built model has no hub name; MedForge's CLIP is loaded by this one.
    dora.peft_config["default"].base_model_name_or_path = BASE
    dora.save_pretrained(str(root / "dora"))
    return {"root": root, "base_dir": root / "base", "sites": sites, "dora": root / "dora",
            "base_state": {k: v.detach().clone() for k, v in base.state_dict().items()}}


@pytest.fixture(scope="module")
def clip_repo(clip_world, tmp_path_factory):
    """A repository with branches sites/<name> (raw .pt commits, task attached) and sites/dora."""
    home = tmp_path_factory.mktemp("clip-home")
    cli = Cli(home, home)
    repo = home / "repo"
    cli.ok("init", repo)
    c = cli.at(repo)
    for site in clip_world["sites"]:
        c.ok("switch", "--orphan", f"sites/{site['name']}")
        c.ok("config", "site", site["name"])
        c.ok("commit", site["pt"], "-m", f"site {site['name']}", "--allow-pickle", "--lora", LORA, "--base", BASE,
             "--attach", f"task={site['task']}")
    c.ok("config", "site", "coordinator")
    return c


def test_site_commits_carry_their_task_and_check_out_as_peft_adapters(clip_repo: Cli, clip_world, tmp_path):
    for site in clip_world["sites"]:
        out = tmp_path / site["name"]
        clip_repo.ok("checkout", f"sites/{site['name']}", "--to", out, "--with-attachments")
        config = json.loads((out / "adapter_config.json").read_text())
        assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (16, 16, BASE)
        assert (out / "attachments" / "task").read_bytes() == site["task"].read_bytes()
        task = clip_repo.ok("attachments", f"sites/{site['name']}", "task").stdout
        assert json.loads(task)["dataset"] == site["name"]


def test_clip_mixture_is_the_weighted_sum_of_member_softmaxes(clip_repo: Cli, clip_world, tmp_path, mfgit_env):
    from peft import PeftModel

    from mfgit import Repository

    clip_repo.ok("switch", "--orphan", "composite/mixture")
    names = [f"sites/{s['name']}" for s in clip_world["sites"]]
    clip_repo.ok("mix", *names, "--weights", ",".join(map(str, WEIGHTS)), "-m", "CLIP mixture")
    repo = Repository.open(clip_repo.cwd)
    c = repo.read_commit(repo.resolve("composite/mixture"))
    assert [w for _, w in c.mixture_members()] == WEIGHTS

    inputs = _inputs()
    module = repo.load_mixture(tiny_clip(), "composite/mixture", logits=clip_logits)
    with torch.no_grad():
        got = module(**inputs)
    assert got.shape == (4, 3)

    members = []
    for name in names:
        out = tmp_path / name.replace("/", "-")
        clip_repo.ok("checkout", name, "--to", out)
        model = PeftModel.from_pretrained(tiny_clip(), str(out)).eval()
        with torch.no_grad():
            members.append(torch.softmax(clip_logits(model, **inputs).float(), dim=-1))
    want = sum(w * p for w, p in zip(WEIGHTS, members))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # The members differ: no single member's softmax is the mixture.
    assert all(not torch.allclose(p, want, atol=1e-3) for p in members)
    # And the sites' LoRAs matter: the base model alone gives other probabilities.
    with torch.no_grad():
        plain = torch.softmax(clip_logits(tiny_clip(), **inputs), dim=-1)
    assert not torch.allclose(plain, want, atol=1e-3)


def _vision_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dense weights of the vision modules the sites adapt, float64, by base-model state-dict key."""
    return {k: v.double() for k, v in state.items()
            if k.endswith(".weight") and (("vision_model" in k and ("q_proj" in k or "v_proj" in k))
                                          or k == "visual_projection.weight")}


@pytest.fixture(scope="module")
def dora_repo(clip_repo: Cli, clip_world):
    clip_repo.ok("switch", "--orphan", "sites/dora")
    clip_repo.ok("commit", clip_world["dora"], "-m", "DoRA site")
    return clip_repo


def test_clip_dora_site_commits_and_checks_out_bit_exact(dora_repo: Cli, clip_world, tmp_path):
    src = clip_world["dora"]
    assert json.loads((src / "adapter_config.json").read_text())["use_dora"] is True
    out = tmp_path / "dora-out"
    dora_repo.ok("checkout", "sites/dora", "--to", out)
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        assert (out / f).read_bytes() == (src / f).read_bytes(), f


def _lora_part(adapter: Path) -> dict[str, torch.Tensor]:
    """s·B·A of each module of a DoRA adapter (its magnitudes left out), float64, by base-model weight key."""
    from safetensors.torch import load_file

    config = json.loads((adapter / "adapter_config.json").read_text())
    s = config["lora_alpha"] / config["r"]
    t = load_file(str(adapter / "adapter_model.safetensors"))
    return {k.removeprefix("base_model.model.").replace(".lora_A", ""):
            s * (t[k.replace("lora_A", "lora_B")].double() @ t[k].double())
            for k in t if k.endswith(".lora_A.weight")}


def test_clip_dora_and_lora_merge_at_full_rank_is_the_dense_weighted_sum(dora_repo: Cli, clip_world, tmp_path):
    from peft import PeftModel

    plain_site = clip_world["sites"][0]["name"]
    plain_dir = tmp_path / "plain"
    dora_repo.ok("checkout", f"sites/{plain_site}", "--to", plain_dir)

    dora_repo.ok("switch", "--orphan", "composite/dora-lora")
    w = (0.6, 0.4)
    # Full rank: 32 = min(out, in) of the largest adapted module, so the factorisation is exact.
    prov = dora_repo.json("merge", "sites/dora", f"sites/{plain_site}", "-s", "linear", "--weights",
                          f"{w[0]},{w[1]}", "--base-weights", clip_world["base_dir"], "--rank", "32",
                          "-m", "DoRA + LoRA", "--json")["provenance"]
    assert len(prov["dora"]["modules"]) == 5 and prov["kept_energy"]["min"] == pytest.approx(1.0, abs=1e-6)
    merged_dir = tmp_path / "merged"
    dora_repo.ok("checkout", "HEAD", "--to", merged_dir)
    assert json.loads((merged_dir / "adapter_config.json").read_text())["use_dora"] is False

    base = _vision_weights(clip_world["base_state"])
    dora_peft = PeftModel.from_pretrained(tiny_clip(), str(clip_world["dora"]))
    dora_merged = _vision_weights(dora_peft.merge_and_unload().state_dict())
    dora_lora_part = _lora_part(clip_world["dora"])
    plain_delta = {k.removeprefix("base_model.model.") + ".weight": d for k, d in delta_weights(plain_dir).items()}
    assert sorted(plain_delta) == sorted(base) and len(base) == 5
    want = {k: base[k] + w[0] * (dora_merged[k] - base[k]) + w[1] * plain_delta[k] for k in base}

    got = _vision_weights(PeftModel.from_pretrained(tiny_clip(), str(merged_dir)).merge_and_unload().state_dict())
    for k in want:
        assert (got[k] - want[k]).abs().max().item() <= 1e-5, k
        # DoRA's update is not its s·B·A: the reference really uses PEFT's DoRA merge.
        assert ((dora_merged[k] - base[k]) - dora_lora_part[k]).abs().max().item() > 1e-3, k


def test_clip_dora_merge_without_base_weights_is_one_line_exit_8(dora_repo: Cli):
    plain_site = "sites/breakhis"
    dora_repo.ok("switch", "--orphan", "composite/refused")
    line = dora_repo.fails("merge", "sites/dora", plain_site, "-s", "linear", code=MERGE)
    assert "sites/dora is a DoRA adapter" in line and "--base-weights" in line
    assert dora_repo("log", "--json").returncode != 0  # nothing was committed


def test_medforge_lora_targets_only_the_vision_tower():
    """The shared builder adapts the 5 vision modules the merges above compare, not the text tower."""
    model = medforge_lora(tiny_clip())
    adapted = sorted(n for n, _ in model.named_modules() if n.endswith(".lora_A"))
    assert len(adapted) == 5 and not any("text_model" in n for n in adapted)
