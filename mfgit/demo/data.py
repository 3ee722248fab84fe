"""Real clinical data that ships with scikit-learn, split the way hospitals differ.

The Wisconsin Diagnostic Breast Cancer data set (W. H. Wolberg, W. N. Street,
O. L. Mangasarian, UCI, 1995; bundled with scikit-learn as
``sklearn.datasets.load_breast_cancer``): 569 fine-needle aspirates of breast
masses, 30 features computed from digitised images of cell nuclei (radius,
texture, perimeter, ... as mean, standard error and worst value), and the
diagnosis (212 malignant, 357 benign). Nothing is downloaded.

The split:

* a *public* portion (stratified random, 20 %) pre-trains the foundation
  model; its mean and standard deviation become the model's normaliser,
  which every site uses (as sites use a shared model's preprocessing);
* the rest is cut into ``n_sites`` hospitals **non-IID**: sorted by the
  *mean texture* of the nuclei (the grey-level variation of the image,
  which depends on staining and scanners as well as on the tumour) and cut
  into contiguous blocks of different sizes (``SITE_SIZES``). The sites
  therefore see different feature ranges, different class balances (from
  about 10 % to 70 % malignant with the default four sites) and different amounts of data;
* each site keeps a stratified held-out test set (30 %) of its own.

Label 1 = malignant (the positive class for AUC); scikit-learn's own
encoding is the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
