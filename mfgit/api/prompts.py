"""The built-in score of a search: ``--score prompts``, prompt classification on each site's own data.

MedForge classifies CLIP-style: a sample's embedding is compared (cosine)
with the embeddings of its task's class prompts, encoded by the same
(adapted) model; the similarities × a temperature are the class logits.
For each site's dataset (`mfgit.api.sitedata.SiteData`, from ``--data
attachments:NAME``) the candidate classifies the samples with that site's
own prompts (its ``task`` attachment); the score is the cross-entropy of
those logits against the labels, averaged over the samples of each task,
then over tasks (two sites of one task pool their samples). Lower is better.

* A CLIP model (one with ``get_text_features``): prompts through
  ``get_text_features``, samples through ``get_image_features(pixel_values)``
  (or ``get_text_features`` for token inputs), logits = ``exp(logit_scale)`` ×
  cosine — the model's own scale.
* A sentence encoder (anything else, e.g. all-MiniLM-L6-v2): mean-pooled
  last hidden states of the prompts and of the samples (``input_ids`` or
  ``inputs_embeds``, with ``attention_mask``), cosine × 20.
* The task spec's ``temperature``, when given, replaces either scale.

Prompt token ids come from the task spec's ``prompt_inputs`` when it has
them (``{"input_ids": [[…], …], "attention_mask": [[…], …]}``, one row per
prompt in the order of ``prompts`` flattened), else from ``tokenizer()`` in
the module of the ``--base`` factory. The spec's ids win because they are
part of the site's signed commit: the score is then a function of
committed bytes only, needs no tokenizer (nor its version) at the
coordinator, and is what the site itself measured with. See
docs/search-and-eval.md ("Built-in data and score").
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any, Callable, Sequence

from mfgit.api.sitedata import TASK, InvalidSiteData
from mfgit.errors import ScoreError

if TYPE_CHECKING:
    import torch

    from mfgit.api.sitedata import SiteData

NAME = "prompts"
ENCODER_TEMPERATURE = 20.0  # MedForge's and the demo's scale for a sentence encoder
BATCH = 64  # samples per forward pass: memory stays bounded on large distilled sets


def mean_pooled(model, **inputs: "torch.Tensor") -> "torch.Tensor":
    """Mean-pooled, L2-normalised embeddings of a transformer encoder (input_ids or inputs_embeds, + attention_mask)."""
    from torch.nn import functional as F

    hidden = model(**inputs).last_hidden_state
    mask = inputs.get("attention_mask")
    if mask is None:
        return F.normalize(hidden.mean(1), dim=-1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1.0), dim=-1)


def class_vectors(unit: "torch.Tensor", counts: Sequence[int]) -> "torch.Tensor":
    """One unit vector per class: the normalised mean of its prompts' unit embeddings (`counts` rows each, in order)."""
    import torch
    from torch.nn import functional as F

    out, i = [], 0
    for c in counts:
        out.append(F.normalize(unit[i:i + c].mean(0), dim=-1))
        i += c
    return torch.stack(out)


def _features(out: Any) -> "torch.Tensor":
    # transformers 4 returns the projected features; 5 a model output whose pooler_output they are.
    return out if not hasattr(out, "pooler_output") else out.pooler_output


def _inner(model):
    """The transformers model under a PeftModel (its LoRA layers are in it)."""
    return model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model


def prompt_counts(site: "SiteData") -> list[int]:
    spec = site.task
    if spec is None:
        raise InvalidSiteData(site.commit, TASK, "is missing: --score prompts classifies with the task spec's "
                              "prompts (commit it with --attach task=task.json)")
    prompts = spec.get("prompts")
    if prompts is None:
        classes = spec.get("classes")
        n = len(classes) if isinstance(classes, list) else 0
        if n < 2 or "prompt_inputs" not in spec:
            raise InvalidSiteData(site.commit, TASK, "has no 'prompts' (a list of prompts per class)")
        return [1] * n
    if (not isinstance(prompts, list) or len(prompts) < 2
            or not all(isinstance(p, list) and p and all(isinstance(s, str) for s in p) for p in prompts)):
        raise InvalidSiteData(site.commit, TASK, "'prompts' must be a list of at least two classes, each a "
                              "non-empty list of strings")
    return [len(p) for p in prompts]


class PromptScore:
    """``score(model, sites)`` of ``--score prompts``; `tokenizer` (a callable, or None) tokenises text prompts."""

    def __init__(self, tokenizer: Callable[[], Any] | None = None, tokenizer_name: str | None = None):
        self.tokenizer_factory = tokenizer
        self.tokenizer_name = tokenizer_name
        self._tokenizer = None
        self._prompts: dict[str, tuple[dict[str, Any], list[int]]] = {}  # per site commit: computed once

    def record(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer_name, "encoder_temperature": ENCODER_TEMPERATURE,
                "objective": "cross-entropy of the prompt logits, mean per task, then over tasks"}

    def _tokenize(self, texts: list[str], site: "SiteData") -> dict[str, Any]:
        if self.tokenizer_factory is None:
            raise InvalidSiteData(site.commit, TASK, "has text prompts but no 'prompt_inputs' (token ids), and the "
                                  "--base module defines no tokenizer(); add one of them")
        if self._tokenizer is None:
            try:
                self._tokenizer = self.tokenizer_factory()
            except Exception as e:  # noqa: BLE001 - the user's code
                raise ScoreError(self.tokenizer_name or "tokenizer", f"tokenizer() raised {type(e).__name__}: {e}") from None
        enc = self._tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def prompt_inputs(self, site: "SiteData") -> tuple[dict[str, Any], list[int]]:
        """The token ids of a site's prompts (from its spec, else the tokenizer) and the prompts per class."""
        import torch

        hit = self._prompts.get(site.commit)
        if hit is not None:
            return hit
        counts = prompt_counts(site)
        given = site.task.get("prompt_inputs")
        if given is not None:
            rows = _rows(given.get("input_ids")) if isinstance(given, dict) else None
            mask = given.get("attention_mask") if isinstance(given, dict) else None
            masks = _rows(mask) if mask is not None else [[1] * len(r) for r in rows or []]
            if (rows is None or masks is None or len(rows) != sum(counts)
                    or [len(m) for m in masks] != [len(r) for r in rows]
                    or any(not 0 <= i < MAX_TOKEN_ID for r in rows for i in r)
                    or any(v not in (0, 1) for m in masks for v in m)):
                raise InvalidSiteData(site.commit, TASK, f"'prompt_inputs' must hold input_ids (and optionally an "
                                      f"attention_mask of 0s and 1s of the same shape): one list of token ids "
                                      f"(0 ≤ id < 2^31) per prompt, {sum(counts)} in all")
            width = max(len(r) for r in rows)
            # Ragged rows are padded with id 0 under a mask of 0.
            inp = {"input_ids": torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long),
                   "attention_mask": torch.tensor([m + [0] * (width - len(m)) for m in masks], dtype=torch.long)}
        else:
            inp = self._tokenize([p for ps in site.task["prompts"] for p in ps], site)
        self._prompts[site.commit] = (inp, counts)
        return inp, counts

    def site_logits(self, model, site: "SiteData") -> "torch.Tensor":
        """The class logits of every sample of `site` under `model`."""
        import torch
        from torch.nn import functional as F

        inner = _inner(model)
        clip = callable(getattr(inner, "get_text_features", None))
        device = next(inner.parameters()).device
        dtype = next(inner.parameters()).dtype

        def to(t: "torch.Tensor") -> "torch.Tensor":
            return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

        def embed_text(inp: dict[str, "torch.Tensor"]) -> "torch.Tensor":
            """Unit embeddings of token inputs."""
            inp = {k: to(v) for k, v in inp.items()}
            return F.normalize(_features(inner.get_text_features(**inp)), dim=-1) if clip else mean_pooled(inner, **inp)

        pin, counts = self.prompt_inputs(site)
        x = site.inputs()
        vocab = _vocab_size(inner)
        for where, ids in ((TASK, pin["input_ids"]), (site.name, x.get("input_ids"))):
            # An id past the embedding table is an IndexError on CPU and a device-side assert on CUDA.
            if vocab is not None and ids is not None and ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < vocab:
                raise InvalidSiteData(site.commit, where, f"holds token ids outside the model's vocabulary (0..{vocab - 1})")
        classes = class_vectors(embed_text(pin), counts)
        if "pixel_values" in x and not callable(getattr(inner, "get_image_features", None)):
            raise InvalidSiteData(site.commit, site.name, "holds pixel_values, but the model has no "
                                  "get_image_features (a CLIP model is needed)")
        parts = []
        n = site.labels.shape[0]
        for i in range(0, n, BATCH):
            batch = {k: v[i:i + BATCH] for k, v in x.items()}
            if "pixel_values" in batch:
                parts.append(F.normalize(_features(inner.get_image_features(pixel_values=to(batch["pixel_values"]))),
                                         dim=-1))
            else:
                parts.append(embed_text(batch))
        emb = torch.cat(parts)
        temperature = site.task.get("temperature")
        if temperature is not None:
            if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
                raise InvalidSiteData(site.commit, TASK, f"'temperature' must be a finite number, got {temperature!r}")
            scale = float(temperature)
        elif clip and getattr(inner, "logit_scale", None) is not None:
            scale = inner.logit_scale.exp()
        else:
            scale = ENCODER_TEMPERATURE
        return scale * emb @ classes.T

    def __call__(self, model, sites: Sequence["SiteData"]) -> dict[str, float]:
        import torch
        from torch.nn import functional as F

        check_sites(sites)
        per_sample = []
        with torch.no_grad():
            for site in sites:
                logits = self.site_logits(model, site).float().cpu()
                check_labels(site, logits.shape[1])
                per_sample.append((site, F.cross_entropy(logits, site.labels, reduction="none"), logits.argmax(1)))
        return task_means(per_sample, "cross_entropy")


def check_sites(sites: Any) -> None:
    if not isinstance(sites, (list, tuple)) or not sites or not all(hasattr(s, "task") for s in sites):
        raise ScoreError(NAME, "--score prompts scores the sites' own data: use it with --data attachments:NAME")


def check_labels(site: "SiteData", classes: int) -> None:
    labels = site.labels
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise InvalidSiteData(site.commit, site.name, f"labels must lie in 0..{classes - 1} "
                              "(one per class of the task spec)")


def site_task(site: "SiteData") -> str:
    """The task a site's samples count under: two sites of one task pool their samples."""
    return str(site.task.get("task") or site.site or site.commit)


def task_means(per_sample: Sequence[tuple["SiteData", "torch.Tensor", "torch.Tensor"]], loss: str) -> dict[str, float]:
    """{"score": mean over tasks of each task's mean per-sample loss, "accuracy", "<task>/<loss>", "<task>/accuracy"}
    from (site, per-sample losses, predicted classes) triples."""
    import torch

    losses: dict[str, list[torch.Tensor]] = {}
    hits: dict[str, list[torch.Tensor]] = {}
    for site, values, predicted in per_sample:
        task = site_task(site)
        losses.setdefault(task, []).append(values)
        hits.setdefault(task, []).append((predicted == site.labels).float())
    per_task = {t: float(torch.cat(v).mean()) for t, v in losses.items()}
    acc = {t: float(torch.cat(v).mean()) for t, v in hits.items()}
    out = {"score": sum(per_task.values()) / len(per_task), "accuracy": sum(acc.values()) / len(acc)}
    for t in sorted(per_task):
        out[f"{t}/{loss}"] = per_task[t]
        out[f"{t}/accuracy"] = acc[t]
    return out


def _vocab_size(model: Any) -> int | None:
    """The text vocabulary's size from the model's config (a CLIP model keeps it in text_config)."""
    config = getattr(model, "config", None)
    for c in (getattr(config, "text_config", None), config):
        size = getattr(c, "vocab_size", None)
        if isinstance(size, int) and size > 0:
            return size
    return None


MAX_TOKEN_ID = 2 ** 31  # ids beyond any vocabulary (and beyond what torch.long holds) are refused before any lookup


def _rows(value: Any) -> list[list[int]] | None:
    if (not isinstance(value, list) or not value
            or not all(isinstance(r, list) and r and all(isinstance(i, int) and not isinstance(i, bool) for i in r)
                       for r in value)):
        return None
    return value


def prompt_score(base: Any, base_spec: str | None = None) -> PromptScore:
    """``--score prompts`` with the tokenizer of the ``--base`` factory's module, if it defines ``tokenizer()``."""
    module = sys.modules.get(getattr(base, "__module__", "") or "") if callable(base) else None
    tok = getattr(module, "tokenizer", None) if module is not None else None
    if not callable(tok):
        return PromptScore()
    where = base_spec.rsplit(":", 1)[0] if base_spec else module.__name__
    return PromptScore(tok, f"{where}:tokenizer")
