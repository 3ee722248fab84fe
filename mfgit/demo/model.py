"""The demo's "foundation model": a tiny transformer over tabular features.

Each of the 30 standardised features of a sample becomes one token
(value × a learned per-feature vector + a learned feature embedding); a
[CLS] token is prepended, two pre-norm transformer blocks run over the 31
tokens, and a linear head on [CLS] gives two logits (benign, malignant).
The attention and MLP layers are plain ``nn.Linear`` modules with stable
names (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``, ``fc1``, ``fc2``)
so that PEFT's LoRA can target them exactly as it targets a large model.

About 19 k parameters: a demonstration of the workflow, not a clinical
model. It is saved the way real models are: ``config.json`` +
``model.safetensors`` (no pickle), and loaded back with :func:`load_base`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

MODEL_NAME = "mfgit-demo/breast-cancer-transformer"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class TabularTransformerConfig:
    n_features: int = 30
    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 64
    n_classes: int = 2
    model_type: str = "tabular-transformer"
    name: str = MODEL_NAME


class Attention(nn.Module):
    def __init__(self, cfg: TabularTransformerConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.n_heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // h)
        y = att.softmax(-1) @ v
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, cfg: TabularTransformerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TabularTransformer(nn.Module):
    """Features as tokens → transformer → [CLS] → logits."""

    def __init__(self, cfg: TabularTransformerConfig | None = None):
        super().__init__()
        cfg = cfg or TabularTransformerConfig()
        self.config = cfg
        self.name_or_path = cfg.name
        self.value_proj = nn.Parameter(torch.randn(cfg.n_features, cfg.d_model) * 0.5)
        self.feature_embed = nn.Parameter(torch.randn(cfg.n_features, cfg.d_model) * 0.1)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.unsqueeze(-1) * self.value_proj + self.feature_embed  # (B, F, D)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h[:, 0]))


def build_base(cfg: TabularTransformerConfig | None = None, *, seed: int = 0) -> TabularTransformer:
    """A freshly initialised model; the same seed gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TabularTransformer(cfg)


def save_base(model: TabularTransformer, directory: str | Path, *, extra: dict | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (plus `extra` keys in the config)."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt", "name": model.config.name})
    cfg = {**asdict(model.config), **(extra or {})}
    (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def load_base(directory: str | Path) -> TabularTransformer:
    """Load the saved foundation model (safetensors only; nothing is unpickled)."""
    from safetensors.torch import load_file

    d = Path(directory)
    raw = json.loads((d / CONFIG_NAME).read_text(encoding="utf-8"))
    fields = TabularTransformerConfig.__dataclass_fields__
    cfg = TabularTransformerConfig(**{k: v for k, v in raw.items() if k in fields})
    model = TabularTransformer(cfg)
    model.load_state_dict(load_file(str(d / WEIGHTS_NAME)))
    model.eval()
    return model


def load_normalizer(directory: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The feature mean and standard deviation the model was pre-trained with."""
    raw = json.loads((Path(directory) / CONFIG_NAME).read_text(encoding="utf-8"))
    norm = raw["normalizer"]
    return torch.tensor(norm["mean"], dtype=torch.float32), torch.tensor(norm["std"], dtype=torch.float32)
