"""The dense reference `delta_weights` agrees with PEFT's own forward pass.

Applying ΔW by hand to the base weights must give the same outputs as
`PeftModel.from_pretrained(base, dir)`; otherwise every merge test that
compares against `delta_weights` would be checking against a wrong answer.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from tests.adapters import (
    delta_weights,
    make_lora_adapter,
    make_minilm_adapter,
    minilm_model,
    module_key,
    tiny_llama,
)

ATOL = 1e-5


def _input_ids(vocab: int = 128) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    return torch.randint(0, vocab, (2, 16), generator=gen)


def _apply_by_hand(model, deltas: dict[str, torch.Tensor]):
    """Add each ΔW to the base module's weight, in float64 then cast back."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, delta in deltas.items():
            weight = modules[module_key(name)].weight
            assert weight.shape == delta.shape, (name, weight.shape, delta.shape)
            weight.copy_((weight.to(torch.float64) + delta).to(weight.dtype))
    return model


def _peft_model(make_base, adapter_dir):
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(make_base(), str(adapter_dir))
    return model.eval()


def _llama_logits(model):
    return model(input_ids=_input_ids()).logits


def _assert_reference_matches_peft(adapter_dir, make_base=tiny_llama, run=_llama_logits):
    deltas = delta_weights(adapter_dir)
    assert deltas and all(d.dtype == torch.float64 for d in deltas.values())
    with torch.no_grad():
        base_out = run(make_base())
        hand_out = run(_apply_by_hand(make_base(), deltas))
    peft_model = _peft_model(make_base, adapter_dir)
    with torch.no_grad():
        peft_out = run(peft_model)
    # The adapter really changes the model (PEFT's zero-init B would not) ...
    assert (peft_out - base_out).abs().max().item() > 1e-3
    # ... and the dense reference reproduces exactly that change.
    torch.testing.assert_close(hand_out, peft_out, atol=ATOL, rtol=0)
    # The logits only see ΔW through a small model; compare ΔW itself with
    # PEFT's own get_delta_weight too (float32 there), tightly.
    lora_layers = {
        name: module for name, module in peft_model.named_modules() if hasattr(module, "get_delta_weight")
    }
    assert sorted(lora_layers) == sorted(deltas)
    with torch.no_grad():
        for name, module in lora_layers.items():
            theirs = module.get_delta_weight("default").to(torch.float64)
            torch.testing.assert_close(deltas[name], theirs, rtol=1e-5, atol=1e-9)
    return deltas


def test_tiny_llama_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = tiny_llama(seed=3), tiny_llama(seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (na, ta), (nb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(ta, tb)
    c = tiny_llama(seed=4)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_adapter_files_are_what_peft_writes(tmp_path):
    out = make_lora_adapter(tmp_path / "a", seed=1)
    assert (out / "adapter_config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-llama-test"
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]


def test_adapters_are_deterministic_per_seed(tmp_path):
    a = delta_weights(make_lora_adapter(tmp_path / "a", seed=5))
    b = delta_weights(make_lora_adapter(tmp_path / "b", seed=5))
    c = delta_weights(make_lora_adapter(tmp_path / "c", seed=6))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in a)


def test_bf16_adapter_is_saved_in_bf16(tmp_path):
    from safetensors.torch import load_file

    out = make_lora_adapter(tmp_path / "a", dtype=torch.bfloat16)
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert tensors and all(t.dtype == torch.bfloat16 for t in tensors.values())


def test_plain_adapter_delta_matches_peft_forward(tmp_path):
    deltas = _assert_reference_matches_peft(make_lora_adapter(tmp_path / "a", seed=1))
    assert len(deltas) == 4  # q_proj and v_proj in 2 layers


def test_rslora_adapter_delta_matches_peft_forward(tmp_path):
    out = make_lora_adapter(tmp_path / "a", seed=2, r=16, lora_alpha=8, use_rslora=True)
    deltas = _assert_reference_matches_peft(out)
    # rsLoRA scaling is alpha / sqrt(r), not alpha / r.
    plain = delta_weights(make_lora_adapter(tmp_path / "b", seed=2, r=16, lora_alpha=8))
    name = next(iter(deltas))
    torch.testing.assert_close(deltas[name], plain[name] * 4.0)


def test_rank_and_alpha_pattern_adapter_delta_matches_peft_forward(tmp_path):
    out = make_lora_adapter(
        tmp_path / "a",
        seed=3,
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
        # a plain suffix, a full dotted path, and a regex
        rank_pattern={"k_proj": 2, "model.layers.1.self_attn.o_proj": 4},
        alpha_pattern={r"layers\.0\.self_attn\.(q|v)_proj": 5, "o_proj": 32},
    )
    deltas = _assert_reference_matches_peft(out)
    key = "base_model.model.model.layers.{}.self_attn.{}"
    assert torch.linalg.matrix_rank(deltas[key.format(0, "k_proj")]).item() == 2
    assert torch.linalg.matrix_rank(deltas[key.format(1, "o_proj")]).item() == 4
    assert torch.linalg.matrix_rank(deltas[key.format(0, "o_proj")]).item() == 8


def test_rslora_with_patterns_delta_matches_peft_forward(tmp_path):
    out = make_lora_adapter(
        tmp_path / "a", seed=4, use_rslora=True, rank_pattern={"v_proj": 4}, alpha_pattern={"q_proj": 3}
    )
    _assert_reference_matches_peft(out)


def test_pattern_order_in_saved_config_decides_like_peft_loading(tmp_path):
    # PEFT takes the FIRST matching pattern key, and writes adapter_config.json
    # with sorted keys. Created as {"v_proj": 3, "layers.1...v_proj": 40},
    # layer 1's v_proj trains with alpha 3; the saved file lists the longer key
    # first, so PEFT loads it with alpha 40. The reference follows the file.
    out = make_lora_adapter(
        tmp_path / "a", seed=5, alpha_pattern={"v_proj": 3, "model.layers.1.self_attn.v_proj": 40}
    )
    saved = json.loads((out / "adapter_config.json").read_text())["alpha_pattern"]
    assert list(saved) == ["model.layers.1.self_attn.v_proj", "v_proj"]
    _assert_reference_matches_peft(out)


def test_inconsistent_rank_pattern_is_refused(tmp_path):
    # Same ordering effect on ranks: the saved file no longer describes the
    # tensors (PEFT itself fails to load it), and delta_weights says so.
    out = make_lora_adapter(tmp_path / "a", rank_pattern={"q_proj": 4, "model.layers.1.self_attn.q_proj": 2})
    with pytest.raises(ValueError, match="rank 2"):
        delta_weights(out)


def test_embedding_adapter_delta_matches_peft_forward(tmp_path):
    out = make_lora_adapter(tmp_path / "a", seed=6, target_modules=("embed_tokens", "q_proj"))
    deltas = _assert_reference_matches_peft(out)
    assert deltas["base_model.model.model.embed_tokens"].shape == (128, 64)


def test_minilm_adapter_delta_matches_peft_forward(tmp_path):
    base = minilm_model()
    out = make_minilm_adapter(tmp_path / "m", seed=7)
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102]])

    def run(model):
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state

    import copy

    deltas = _assert_reference_matches_peft(out, make_base=lambda: copy.deepcopy(base), run=run)
    assert len(deltas) == 12  # query and value in 6 layers
