"""A site's distilled set: synthetic records drawn from its per-class field distributions.

MedForge's sites share a small distilled dataset with their adapter, and
the coordinator searches Fusion's and Mixture's weights on it. The stand-in
here is distribution matching at the level of a record's fields: for each
class, a synthetic record takes each field (age band, glucose level, one
survey answer, ...) from an independently drawn real training record of
that class. The set thus follows each class's marginal distribution of
every field, but not their joint distribution, and no synthetic record is
a copy of one of the site's records, training or held out (a draw that
renders to one is redrawn).

What leaves the site is that: for every field of every class, values that
occur among its records, about as often as they occur (an age is a field:
exact ages of real records leave the site). It is a stand-in for
MedForge's distillation, not a privacy guarantee.

Why records and not learned input embeddings: the sets are read by a
search over merges of *other* sites' adapters, so they must be classified
under those models as the real records would be. Input embeddings matched
to the real records' mean feature under the base encoder (this module's
predecessor) were classified under merges quite unlike the real records:
Fusion's search lowered their loss while the test splits got worse.
Synthetic sentences are ordinary inputs; any model reads them as it reads
records. They are committed tokenised (``input_ids``, ``attention_mask``,
``labels``), so the records need no tokenizer at the coordinator (the task's
prompts are tokenised there, by the base model's tokenizer).
"""

from __future__ import annotations

import numpy as np

from mfgit.demo.data import Task
from mfgit.errors import DemoError

# `size` records in the site's class proportions, at least `min_per_class` of each class (so a class
# that rounds below the minimum adds to the total: the lung survey's set has 3 + 14)
DISTILLED = {"size": 16, "min_per_class": 3}
MAX_DRAWS_PER_RECORD = 200  # redraws allowed before a class is called too small to draw from


def class_counts(y: np.ndarray, size: int = DISTILLED["size"],
                 min_per_class: int = DISTILLED["min_per_class"]) -> dict[int, int]:
    """How many synthetic records each class gets: its share of `size`, at least `min_per_class`."""
    return {int(c): max(min_per_class, round(size * float((y == c).mean()))) for c in np.unique(y)}


def synthetic_fields(task: Task, *, seed: int,
                     size: int = DISTILLED["size"]) -> tuple[list[tuple[str | None, ...]], np.ndarray]:
    """The site's synthetic records (as fields) and their labels, class by class; seeded.

    Each field of a class-c record is the same field of a real class-c
    training record drawn uniformly. Draws that render to one of the site's
    records (its training records and its held-out test records: a site
    holds both) or to a synthetic record already made are drawn again.
    """
    rng = np.random.default_rng([seed, 7])
    real = set(task.train_text) | set(task.test_text)
    made_texts: set[str] = set()
    records: list[tuple[str | None, ...]] = []
    labels: list[int] = []
    for c, k in class_counts(task.train_y, size).items():
        members = [task.train_fields[i] for i in np.flatnonzero(task.train_y == c)]
        width = len(members[0])
        made, draws = 0, 0
        while made < k:
            draws += 1
            if draws > MAX_DRAWS_PER_RECORD * k:
                raise DemoError(f"task {task.name}: class {task.classes[c]!r} has too few distinct records "
                                f"({len(members)}) to draw {k} new ones (the task needs more distinct records of that class)")
            picks = rng.integers(0, len(members), size=width)
            fields = tuple(members[p][j] for j, p in enumerate(picks))
            text = task.render(fields)
            if text in real or text in made_texts:
                continue
            made_texts.add(text)
            records.append(fields)
            labels.append(c)
            made += 1
    return records, np.asarray(labels, dtype=np.int64)


def synthetic_records(task: Task, *, seed: int, size: int = DISTILLED["size"]) -> tuple[list[str], np.ndarray]:
    """The synthetic records as sentences, and their labels."""
    records, labels = synthetic_fields(task, seed=seed, size=size)
    return [task.render(r) for r in records], labels


def distilled_tensors(texts: list[str], labels: np.ndarray) -> dict:
    """The ``distilled`` attachment's tensors: the records tokenised, padded to the longest, and labels."""
    import torch

    from mfgit.demo.model import tokenize

    enc = tokenize(texts)
    return {"input_ids": enc["input_ids"].contiguous(), "attention_mask": enc["attention_mask"].contiguous(),
            "labels": torch.from_numpy(np.ascontiguousarray(labels))}
