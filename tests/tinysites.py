"""Sites for the search and notes tests: a tiny tabular transformer and breast-cancer hospitals.

A small, fast stand-in for a foundation model shared by sites: a 19 k
parameter transformer over the 30 features of scikit-learn's bundled
Wisconsin breast-cancer data, pre-trained on a public split, with one LoRA
per hospital trained on its own non-IID share. The search tests need many
merges scored in seconds, which the demo's real encoder cannot give.

This file is imported as ``tests.tinysites`` by the tests and copied beside
the score modules they write (imported there as ``tinysites``), so that the
``mfgit`` processes they start can load the same model and data.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

PRETRAIN = {"epochs": 20, "lr": 3e-3, "batch_size": 32}
LORA = {"r": 8, "lora_alpha": 16, "epochs": 25, "lr": 5e-3, "batch_size": 32}


def sort_target_modules(config_path: Path) -> None:
    """Write PEFT's target_modules sorted (PEFT saves a set, whose order changes with PYTHONHASHSEED)."""
    cfg = json.loads(config_path.read_text(encoding="utf-8"))
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
        config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# -- data ------------------------------------------------------------------------------------------


SHIFT_FEATURE = "mean texture"
PUBLIC_FRACTION = 0.2
TEST_FRACTION = 0.3
# Hospitals differ in size too: relative sizes of the sites, in order (cycled).
SITE_SIZES = [1.4, 0.8, 1.1, 0.7, 1.2, 0.9, 1.0, 0.6, 1.3]


@dataclass
class Split:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def summary(self) -> dict:
        return {
            "name": self.name,
            "train": len(self.y_train),
            "test": len(self.y_test),
            "malignant_fraction": round(float(np.concatenate([self.y_train, self.y_test]).mean()), 3),
        }


@dataclass
class DemoData:
    feature_names: list[str]
    mean: np.ndarray
    std: np.ndarray
    public: Split  # x_test: the public portion's own validation part
    sites: list[Split]

    def describe(self) -> dict:
        return {
            "name": "Wisconsin Diagnostic Breast Cancer (sklearn.datasets.load_breast_cancer)",
            "samples": int(sum(len(s.y_train) + len(s.y_test) for s in [self.public, *self.sites])),
            "features": len(self.feature_names),
            "positive_class": "malignant",
            "non_iid": f"sites are contiguous blocks of the data sorted by '{SHIFT_FEATURE}'",
            "public": self.public.summary(),
            "sites": [s.summary() for s in self.sites],
        }


def _stratified_split(idx: np.ndarray, y: np.ndarray, frac: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held) with about `frac` of each class of `idx` in `held`."""
    held, rest = [], []
    for c in (0, 1):
        members = idx[y[idx] == c]
        members = members[rng.permutation(len(members))]
        k = round(frac * len(members))
        k = min(max(k, 1), len(members) - 1) if len(members) > 1 else 0
        held.append(members[:k])
        rest.append(members[k:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(held))


def load_demo_data(site_names: list[str], *, seed: int = 0) -> DemoData:
    """The public split and one non-IID split per name in `site_names`, standardised."""
    from sklearn.datasets import load_breast_cancer

    ds = load_breast_cancer()
    x = ds.data.astype(np.float64)
    y = (ds.target == 0).astype(np.int64)  # 1 = malignant
    names = [str(n) for n in ds.feature_names]
    rng = np.random.default_rng(seed)
    all_idx = np.arange(len(y))
    site_idx, public_idx = _stratified_split(all_idx, y, PUBLIC_FRACTION, rng)
    pub_train, pub_val = _stratified_split(public_idx, y, 0.25, rng)
    mean = x[pub_train].mean(axis=0)
    std = x[pub_train].std(axis=0) + 1e-6
    z = ((x - mean) / std).astype(np.float32)

    col = names.index(SHIFT_FEATURE)
    order = site_idx[np.argsort(x[site_idx, col], kind="stable")]
    sites = []
    rel = np.array([SITE_SIZES[i % len(SITE_SIZES)] for i in range(len(site_names))])
    cuts = np.round(np.cumsum(rel)[:-1] / rel.sum() * len(order)).astype(int)
    for name, block in zip(site_names, np.split(order, cuts)):
        train, test = _stratified_split(np.sort(block), y, TEST_FRACTION, rng)
        sites.append(Split(name, z[train], y[train], z[test], y[test]))
    public = Split("public", z[pub_train], y[pub_train], z[pub_val], y[pub_val])
    return DemoData(names, mean, std, public, sites)

# -- model -----------------------------------------------------------------------------------------

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

# -- training ---------------------------------------------------------------------------------------


def train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, seed: int,
          batch_size: int = 32, weight_decay: float = 0.0) -> float:
    """Mini-batch AdamW on the parameters that require grad; returns the last epoch's mean loss.

    The batch order comes from a generator seeded with `seed`; the global
    RNG is not used, so a run is reproducible.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    model.train()
    last = 0.0
    for _ in range(epochs):
        perm = torch.randperm(len(yt), generator=g)
        total = 0.0
        for i in range(0, len(yt), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        last = total / len(yt)
    model.eval()
    return last


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """P(malignant) for every row of `x`."""
    model.eval()
    return model(torch.from_numpy(x)).softmax(-1)[:, 1].double().numpy()


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Accuracy (threshold 0.5) and ROC AUC, computed by scikit-learn."""
    from sklearn.metrics import accuracy_score, roc_auc_score

    acc = float(accuracy_score(y, (p >= 0.5).astype(np.int64)))
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    return {"acc": acc, "auc": auc}
