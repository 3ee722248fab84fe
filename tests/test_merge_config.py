"""A merged adapter's config makes PEFT load exactly the modules its manifest holds.

Regression: the output config copied the first input's and only unioned
list-valued target_modules, so two MiniLM adapters on ".*\\.query" and
".*\\.value" merged into a config that PEFT loaded 6 of 12 modules from —
with no warning, exit 0 and kept energy 1.0; the same with
layers_to_transform=[0, 1] on one input.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.adapters import minilm_model

STRATEGIES = [
    ("linear", ["--weights", "1,1", "--rank", "sum"]),
    ("task_arithmetic", ["--weights", "1,1"]),
    ("svd", ["--rank", "8"]),
    ("ties", ["--density", "0.5", "--rank", "8"]),
    ("dare_linear", ["--drop-rate", "0.5", "--rank", "8"]),
    ("tsv", ["--rank", "8"]),
]
SELECTORS = {
    "regexes": (dict(target_modules=r".*\.query"), dict(target_modules=r".*\.value")),
    "layers": (dict(target_modules=("query", "value"), layers_to_transform=[0, 1]), dict(target_modules=("query",))),
}


def _lora_layers(model) -> set[str]:
    return {name for name, mod in model.named_modules() if hasattr(mod, "lora_A") and "default" in mod.lora_A}


@pytest.fixture(scope="module")
def base():
    return minilm_model()


@pytest.fixture(scope="module")
def sites(tmp_path_factory, adapter_store):
    """One repository with sites/<selectors>-a and -b for every selector variant (built once)."""
    from mfgit.api.repository import Repository
    from tests.conftest import build_adapter

    root = tmp_path_factory.mktemp("merge-config")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MFGIT_AUTHOR_NAME", "Test Author")
        mp.setenv("MFGIT_AUTHOR_EMAIL", "author@example.org")
        repo = Repository.init(root / "repo")
        for name, (first, second) in SELECTORS.items():
            for site, kw, seed in (("a", first, 1), ("b", second, 2)):
                repo.switch(f"sites/{name}-{site}", orphan=True)
                repo.commit(build_adapter(adapter_store, "minilm", seed=seed, **kw), f"{name} {site}")
    return root / "repo"


@pytest.mark.slow
@pytest.mark.parametrize("selectors", sorted(SELECTORS))
@pytest.mark.parametrize("strategy,options", STRATEGIES, ids=[s for s, _ in STRATEGIES])
def test_merged_adapter_loads_every_manifest_module_in_peft(cli, sites, tmp_path, base, selectors, strategy, options):
    from peft import PeftModel
    from safetensors.torch import load_file

    branch = f"merged/{selectors}-{strategy}"
    cli.ok("switch", "--orphan", branch, cwd=sites)
    cli.ok("merge", f"sites/{selectors}-a", f"sites/{selectors}-b", "-s", strategy, *options, cwd=sites)
    manifest = cli.json("show", "HEAD", "--json", cwd=sites)["adapter"]
    out = tmp_path / "merged"
    cli.ok("checkout", "HEAD", "--to", out, cwd=sites)
    config = json.loads((out / "adapter_config.json").read_text())
    model = PeftModel.from_pretrained(base, str(out))
    try:
        loaded = _lora_layers(model)
        assert len(loaded) == manifest["modules"], (config.get("target_modules"), sorted(loaded))
        # and every loaded factor is the stored one (nothing silently left at PEFT's init)
        state = model.state_dict()
        for name, t in load_file(str(out / "adapter_model.safetensors")).items():
            key = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight")
            assert torch.equal(state[key], t), name
    finally:
        model.unload()


def test_same_selectors_are_kept_as_they_are(cli, repo_dir, adapter_dir, tmp_path):
    cli.ok("switch", "--orphan", "sites/a", cwd=repo_dir)
    cli.ok("commit", adapter_dir("a", kind="minilm", seed=1), "-m", "a", cwd=repo_dir)
    cli.ok("switch", "--orphan", "sites/b", cwd=repo_dir)
    cli.ok("commit", adapter_dir("b", kind="minilm", seed=2), "-m", "b", cwd=repo_dir)
    cli.ok("switch", "--orphan", "main", cwd=repo_dir)
    cli.ok("merge", "sites/a", "sites/b", cwd=repo_dir)
    out = tmp_path / "merged"
    cli.ok("checkout", "HEAD", "--to", out, cwd=repo_dir)
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"] == ["query", "value"]
