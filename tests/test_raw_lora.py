"""Raw LoRA state dicts (a training script's torch.save of the `lora` entries) commit as PEFT adapters.

The model of such a script is MedForge's `train_lora.py`: CLIP's vision
tower with LoRA r=16, alpha=16, dropout 0.1 on q_proj / v_proj and on
visual_projection, saved as `torch.save({k: v for k, v in state_dict().items()
if "lora" in k})` — names such as `vision_model...q_proj.lora_A.default.weight`,
no adapter_config.json. What is checked: the commit, checked out, is a PEFT
directory that `PeftModel.from_pretrained` loads onto the base model with
the outputs of applying the raw state dict by hand; and every bad input is
one line with its exit code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from mfgit.cli.errors import BAD_INPUT, USAGE
from mfgit.errors import BadLoraConfig, InvalidRawLora, LoraRankMismatch
from mfgit.formats import rawlora
from tests.adapters import minilm_model

BASE = "openai/clip-vit-base-patch16"
LORA = "r=16,alpha=16,dropout=0.1"
# The vision tower's q_proj / v_proj and the image projection, not the text tower's.
MEDFORGE_TARGETS = r".*vision_model.*\.(q_proj|v_proj)|visual_projection"


def tiny_clip(seed: int = 0):
    """A deterministic tiny CLIPModel (hidden 32, 2 layers, 32×32 images in 8×8 patches)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=99, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    return model.eval()


def medforge_lora(model, *, use_dora: bool = False, r: int = 16, targets=MEDFORGE_TARGETS):
    """`model` with PEFT LoRA as MedForge applies it (get_peft_model mutates `model` in place)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=16, lora_dropout=0.1, target_modules=targets, use_dora=use_dora)
    return get_peft_model(model, config)


def trained_raw_state(model, *, seed: int = 1, **lora) -> dict[str, torch.Tensor]:
    """The `lora` entries of the model's state dict after "training" (seeded values; PEFT zeroes lora_B)."""
    medforge_lora(model, **lora)
    gen = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        if "lora" in name:
            param.data = 1.0 + torch.randn(param.shape, generator=gen) * 0.05 if "magnitude" in name \
                else torch.randn(param.shape, generator=gen) * 0.05
    state = {k: v.clone() for k, v in model.state_dict().items() if "lora" in k}
    assert any(".lora_A.default.weight" in k for k in state)
    return state


def applied_by_hand(base, raw: dict[str, torch.Tensor], **lora):
    """What the training script does to use its file: the same LoRA, then load_state_dict(strict=False)."""
    peft_model = medforge_lora(base, **lora)
    result = base.load_state_dict(raw, strict=False)
    assert not result.unexpected_keys
    return peft_model.eval()


def loaded_by_peft(base, adapter_dir: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def clip_outputs(model) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    pixels = torch.randn(2, 3, 32, 32, generator=gen)
    ids = torch.randint(2, 99, (3, 8), generator=gen)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels)
    return {"image_embeds": out.image_embeds, "logits_per_image": out.logits_per_image}


def commit_and_checkout(cli, repo_dir: Path, source: Path, *args: str) -> Path:
    cli.ok("commit", source, "-m", "site LoRA", *args, cwd=repo_dir)
    out = repo_dir.parent / "checked-out"
    cli.ok("checkout", "HEAD", "--to", out, cwd=repo_dir)
    return out


# --- round trips through PEFT --------------------------------------------------------------------


def test_medforge_pt_checks_out_as_a_peft_adapter_with_the_outputs_of_the_raw_state(cli, repo_dir, tmp_path):
    raw = trained_raw_state(tiny_clip())
    pt = tmp_path / "res_breakhis_vitb16_it5ipc_lora.pt"
    torch.save(raw, pt)
    out = commit_and_checkout(cli, repo_dir, pt, "--lora", LORA, "--base", BASE, "--allow-pickle")

    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (16, 16, 0.1)
    assert config["base_model_name_or_path"] == BASE and config["use_dora"] is False
    assert config["target_modules"] == sorted(
        [f"vision_model.encoder.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
        + ["visual_projection"])

    by_peft = loaded_by_peft(tiny_clip(), out)
    # Only the modules the file adapts: the text tower's q_proj / v_proj stay plain.
    adapted = sorted(n for n, _ in by_peft.named_modules() if n.endswith(".lora_A"))
    assert len(adapted) == 5 and not any("text_model" in n for n in adapted)
    expected = clip_outputs(applied_by_hand(tiny_clip(), raw))
    got = clip_outputs(by_peft)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    # The adapter matters: without it the outputs differ.
    assert not torch.allclose(clip_outputs(tiny_clip())["image_embeds"], expected["image_embeds"])

    prov = cli.json("show", "--json", cwd=repo_dir)["commit"]["provenance"]
    assert prov["source"]["layout"] == "raw-state-dict" and prov["source"]["format"] == "pickle"
    assert prov["source"]["adapter_name"] == "default" and prov["base_model"]["name"] == BASE


def test_dora_state_dict_is_committed_with_use_dora_and_loads_with_the_same_outputs(cli, repo_dir, tmp_path):
    raw = trained_raw_state(tiny_clip(), use_dora=True)
    assert any(".lora_magnitude_vector.default.weight" in k for k in raw)
    st = tmp_path / "dora_lora.safetensors"
    from safetensors.torch import save_file

    save_file(raw, str(st))
    out = commit_and_checkout(cli, repo_dir, st, "--lora", LORA, "--base", BASE)
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True
    expected = clip_outputs(applied_by_hand(tiny_clip(), raw, use_dora=True))
    got = clip_outputs(loaded_by_peft(tiny_clip(), out))
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_minilm_safetensors_state_dict_loads_with_the_outputs_of_the_raw_state(cli, repo_dir, tmp_path):
    from safetensors.torch import save_file

    targets = ["query", "value"]
    raw = trained_raw_state(minilm_model(), r=8, targets=targets)
    st = tmp_path / "minilm_lora.safetensors"
    save_file(raw, str(st))
    out = commit_and_checkout(cli, repo_dir, st, "--lora", "r=8,alpha=16", "--base",
                              "sentence-transformers/all-MiniLM-L6-v2")
    config = json.loads((out / "adapter_config.json").read_text())
    assert len(config["target_modules"]) == 12 and config["target_modules"][0] == "encoder.layer.0.attention.self.query"

    ids = torch.randint(0, 30522, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = applied_by_hand(minilm_model(), raw, r=8, targets=targets)(input_ids=ids, attention_mask=mask)
        got = loaded_by_peft(minilm_model(), out)(input_ids=ids, attention_mask=mask)
    assert torch.equal(got.last_hidden_state, expected.last_hidden_state)


def _deltas(peft_model) -> dict[str, torch.Tensor]:
    """scaling · B·A of every LoRA layer, by module name inside the base model."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, mod in peft_model.named_modules():
        if isinstance(mod, LoraLayer) and "default" in mod.lora_A:
            b, a = mod.lora_B["default"].weight.double(), mod.lora_A["default"].weight.double()
            out[name.removeprefix("base_model.model.")] = mod.scaling["default"] * (b @ a)
    return out


def test_two_sites_raw_state_dicts_merge_into_a_composite_peft_loads(cli, repo_dir, tmp_path):
    """The MedForge round: two sites commit their .pt files; a linear merge is the weighted sum of updates."""
    deltas = []
    for site, seed in (("a", 1), ("b", 2)):
        raw = trained_raw_state(tiny_clip(), seed=seed)
        pt = tmp_path / f"res_{site}_vitb16_it5ipc_lora.pt"
        torch.save(raw, pt)
        cli.ok("switch", "--orphan", f"sites/{site}", cwd=repo_dir)
        cli.ok("commit", pt, "-m", f"site {site}", "--lora", LORA, "--base", BASE, "--allow-pickle", cwd=repo_dir)
        deltas.append(_deltas(applied_by_hand(tiny_clip(), raw)))
    cli.ok("switch", "--orphan", "main", cwd=repo_dir)
    cli.ok("merge", "sites/a", "sites/b", "-s", "linear", "--weights", "0.5,0.5", "-m", "round 1", cwd=repo_dir)
    out = repo_dir.parent / "composite"
    cli.ok("checkout", "HEAD", "--to", out, cwd=repo_dir)
    merged = _deltas(loaded_by_peft(tiny_clip(), out))
    assert sorted(merged) == sorted(deltas[0]) and len(merged) == 5
    for name, got in merged.items():
        want = 0.5 * deltas[0][name] + 0.5 * deltas[1][name]
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7), name


def test_python_api_commits_a_raw_state_dict_with_a_config_mapping(repo_dir, tmp_path):
    from mfgit import Repository

    raw = trained_raw_state(tiny_clip())
    pt = tmp_path / "res_lc25000_vitb16_it10ipc_lora.pt"
    torch.save(raw, pt)
    repo = Repository.open(repo_dir)
    info = repo.commit(pt, "site LoRA", lora={"r": 16, "alpha": 16, "dropout": 0.1}, base_model=BASE,
                       allow_pickle=True)
    adapter = repo.read_adapter(info.commit.adapter)
    assert adapter.config["r"] == 16 and adapter.base_model["name"] == BASE
    assert all(name.startswith("base_model.model.") and ".default." not in name for name in adapter.tensors)
    assert len(adapter.modules) == 5


def test_lora_config_file_gives_the_config_and_its_targets_are_checked(cli, repo_dir, tmp_path):
    from safetensors.torch import save_file

    st = tmp_path / "lora.safetensors"
    save_file(trained_raw_state(tiny_clip()), str(st))
    good = tmp_path / "lora.yaml"
    good.write_text("r: 16\nalpha: 16\ndropout: 0.1\ntargets: [q_proj, v_proj, visual_projection]\n"
                    f"base_model: {BASE}\n")
    out = commit_and_checkout(cli, repo_dir, st, "--lora-config", good)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == BASE

    narrow = tmp_path / "narrow.json"
    narrow.write_text(json.dumps({"r": 16, "alpha": 16, "targets": ["q_proj", "v_proj"]}))
    line = cli.fails("commit", st, "-m", "x", "--lora-config", narrow, "--allow-empty", cwd=repo_dir, code=BAD_INPUT)
    assert "visual_projection is not one of the targets given" in line


# --- pickles ------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates `marker`: a checkpoint that runs code when a plain pickle loads it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_runs_even_with_allow_pickle(cli, repo_dir, tmp_path):
    evil = tmp_path / "res_breakhis_vitb16_it5ipc_lora.pt"
    marker = tmp_path / "PWNED"
    torch.save({"vision_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight": _Payload(marker)}, evil)
    # The payload is live: an unrestricted load would run it.
    probe_file, probe = tmp_path / "probe.pt", tmp_path / "probe-ran"
    torch.save({"x": _Payload(probe)}, probe_file)
    torch.load(probe_file, weights_only=False)
    assert probe.exists()

    line = cli.fails("commit", evil, "-m", "x", "--lora", LORA, cwd=repo_dir, code=BAD_INPUT)
    assert "pickle" in line and "--allow-pickle" in line
    line = cli.fails("commit", evil, "-m", "x", "--lora", LORA, "--allow-pickle", cwd=repo_dir, code=BAD_INPUT)
    assert "weights_only=True" in line
    assert not marker.exists()
    assert cli("log", cwd=repo_dir).returncode != 0  # nothing was committed


# --- one line for each mistake ------------------------------------------------------------------


@pytest.fixture
def raw_pt(tmp_path: Path) -> Path:
    pt = tmp_path / "res_breakhis_vitb16_it5ipc_lora.pt"
    torch.save(trained_raw_state(tiny_clip()), pt)
    return pt


def test_wrong_r_is_one_line_naming_the_rank_of_the_file(cli, repo_dir, raw_pt):
    line = cli.fails("commit", raw_pt, "-m", "x", "--lora", "r=8,alpha=16", "--allow-pickle", cwd=repo_dir,
                     code=BAD_INPUT)
    assert "r is 8 but module vision_model.encoder.layers.0.self_attn.q_proj has rank 16" in line
    assert "pass --lora r=16" in line


def test_a_state_dict_without_lora_is_one_line_asking_for_it(cli, repo_dir, raw_pt):
    line = cli.fails("commit", raw_pt, "-m", "x", cwd=repo_dir, code=USAGE)
    assert "raw LoRA state dict without adapter_config.json" in line and "--lora r=R,alpha=A" in line


def test_a_file_without_lora_tensors_is_one_line(cli, repo_dir, tmp_path):
    from safetensors.torch import save_file

    st = tmp_path / "model.safetensors"
    save_file({"vision_model.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(4, 4)}, str(st))
    line = cli.fails("commit", st, "-m", "x", "--lora", LORA, cwd=repo_dir, code=BAD_INPUT)
    assert "no LoRA tensors" in line


def test_full_state_dict_entries_beside_lora_ones_are_refused(cli, repo_dir, tmp_path):
    from safetensors.torch import save_file

    st = tmp_path / "mixed.safetensors"
    raw = trained_raw_state(tiny_clip())
    raw["vision_model.post_layernorm.weight"] = torch.ones(32)
    save_file(raw, str(st))
    line = cli.fails("commit", st, "-m", "x", "--lora", LORA, cwd=repo_dir, code=BAD_INPUT)
    assert "'vision_model.post_layernorm.weight' is not a LoRA tensor" in line


@pytest.mark.parametrize("option, words", [
    ("r=16", "alpha is missing"),
    ("alpha=16", "r is missing"),
    ("r=16,alpha=16,dropout=2", "dropout must be from 0 to 1"),
    ("r=16,alpha=16,size=3", "unknown key 'size'"),
    ("r=sixteen,alpha=16", "r must be an integer"),
    ("r=16,alpha=16,r=8", "r is given twice"),
])
def test_a_bad_lora_option_is_one_line(cli, repo_dir, raw_pt, option, words):
    line = cli.fails("commit", raw_pt, "-m", "x", "--lora", option, "--allow-pickle", cwd=repo_dir, code=USAGE)
    assert line.startswith("mfgit: --lora: ") and words in line


def test_lora_for_a_peft_directory_is_one_line(cli, repo_dir, adapter_dir):
    line = cli.fails("commit", adapter_dir("a"), "-m", "x", "--lora", LORA, cwd=repo_dir, code=USAGE)
    assert "is a directory" in line


# --- names, without torch or a repository ---------------------------------------------------------


OPTIONS = rawlora.LoraOptions(r=4, lora_alpha=8)


def _plan(names: dict[str, tuple[int, ...]], options=OPTIONS) -> rawlora.RawLora:
    return rawlora.plan(Path("x.pt"), {k: ("F32", v) for k, v in names.items()}, options, pickled=True)


def test_adapter_names_and_the_peft_prefix_are_normalised():
    raw = _plan({"m.q.lora_A.site_a.weight": (4, 8), "m.q.lora_B.site_a.weight": (8, 4),
                 "base_model.model.m.k.lora_A.weight": (4, 8), "base_model.model.m.k.lora_B.weight": (8, 4)})
    assert raw.names == {
        "m.q.lora_A.site_a.weight": "base_model.model.m.q.lora_A.weight",
        "m.q.lora_B.site_a.weight": "base_model.model.m.q.lora_B.weight",
        "base_model.model.m.k.lora_A.weight": "base_model.model.m.k.lora_A.weight",
        "base_model.model.m.k.lora_B.weight": "base_model.model.m.k.lora_B.weight",
    }
    assert raw.adapter_name == "site_a" and raw.config["target_modules"] == ["m.k", "m.q"]


def test_dora_magnitude_and_embedding_factors_get_peft_names():
    raw = _plan({"m.q.lora_A.default.weight": (4, 8), "m.q.lora_B.default.weight": (8, 4),
                 "m.q.lora_magnitude_vector.default.weight": (8,),
                 "emb.lora_embedding_A.default": (4, 10), "emb.lora_embedding_B.default": (6, 4)})
    assert raw.names["m.q.lora_magnitude_vector.default.weight"] == "base_model.model.m.q.lora_magnitude_vector"
    assert raw.names["emb.lora_embedding_A.default"] == "base_model.model.emb.lora_embedding_A"
    assert raw.config["use_dora"] is True


def test_two_adapters_in_one_file_are_refused():
    with pytest.raises(InvalidRawLora, match="holds the adapters a, b"):
        _plan({"m.lora_A.a.weight": (4, 8), "m.lora_B.a.weight": (8, 4),
               "n.lora_A.b.weight": (4, 8), "n.lora_B.b.weight": (8, 4)})


def test_a_name_given_twice_after_normalising_is_refused():
    with pytest.raises(InvalidRawLora, match="are the same tensor"):
        _plan({"m.lora_A.default.weight": (4, 8), "base_model.model.m.lora_A.default.weight": (4, 8)})


def test_rank_is_checked_against_r_before_anything_is_stored():
    with pytest.raises(LoraRankMismatch) as e:
        _plan({"m.lora_A.default.weight": (2, 8), "m.lora_B.default.weight": (8, 2)})
    assert (e.value.given, e.value.found, e.value.module) == (4, 2, "m")


def test_options_keep_integers_and_refuse_what_peft_cannot_use():
    opts = rawlora.lora_options(rawlora.parse_lora_option("r=16, alpha=16, dropout=0.1, rslora=true"))
    assert (opts.r, opts.lora_alpha, opts.lora_dropout, opts.use_rslora) == (16, 16, 0.1, True)
    assert isinstance(opts.lora_alpha, int)
    for bad in ({"r": 0, "alpha": 1}, {"r": 4, "alpha": float("nan")}, {"r": True, "alpha": 1},
                {"r": 4, "alpha": 1, "targets": []}):
        with pytest.raises(BadLoraConfig):
            rawlora.lora_options(bad)


def test_reading_names_imports_no_torch_for_safetensors(tmp_path):
    """A .safetensors raw state dict is read by mfgit's own parser: planning it needs no torch."""
    import subprocess
    import sys

    from safetensors.torch import save_file

    st = tmp_path / "a.safetensors"
    save_file({"m.lora_A.default.weight": torch.zeros(4, 8), "m.lora_B.default.weight": torch.zeros(8, 4)}, str(st))
    code = ("import sys; from mfgit.formats import rawlora as r; "
            f"p = r.inspect_raw_file({str(st)!r}, r.LoraOptions(r=4, lora_alpha=8)); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(sorted(p.names.values()))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert res.returncode == 0, res.stderr
    assert "base_model.model.m.lora_A.weight" in res.stdout


def test_a_module_with_lora_a_only_is_refused_before_anything_is_stored():
    with pytest.raises(InvalidRawLora, match="module base_model.model.m has no lora_B tensor"):
        _plan({"m.lora_A.default.weight": (4, 8)})
    with pytest.raises(InvalidRawLora, match="module m has lora_magnitude_vector but no lora_A"):
        _plan({"m.lora_magnitude_vector.default.weight": (8,)})


def test_the_weights_file_of_a_peft_directory_points_at_the_directory(cli, repo_dir, adapter_dir):
    a = adapter_dir("a")
    line = cli.fails("commit", a / "adapter_model.safetensors", "-m", "x", cwd=repo_dir, code=BAD_INPUT)
    assert "weights file of a PEFT adapter directory; commit the directory" in line
