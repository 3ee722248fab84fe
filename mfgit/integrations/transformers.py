"""`MfgitCallback`: a transformers `TrainerCallback` that commits the PEFT adapter while training.

    from mfgit.integrations.transformers import MfgitCallback
    trainer = Trainer(..., callbacks=[MfgitCallback(repo=".", branch="sites/a", every="save",
                                                    push="hub", best_metric="eval_loss",
                                                    greater_is_better=False)])

Each save (or epoch end) commits the model's adapter on `branch` with the
step, the epoch and the latest logged metrics as commit metadata, the
training arguments (credentials removed) under the metadata key
``training_args``, and the code revision of the working directory. The best
checkpoint by `best_metric` is tagged ``<branch>/best`` (the tag moves when a
better one comes). At the end of training the branch and the tag are pushed
to the remote `push`. A repository or network error never stops training:
it is logged as a warning and training carries on. Under distributed
training only the main process (``state.is_world_process_zero``) acts.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from transformers import TrainerCallback

from mfgit.formats.jsonvalue import coerce

logger = logging.getLogger("mfgit.integrations.transformers")

# TrainingArguments fields that hold credentials; whatever their value, they are not recorded.
_SECRET_WORDS = ("token", "password", "secret", "api_key", "credential")


def training_arguments(args) -> dict[str, Any]:
    """`args.to_dict()` without credentials, reduced to JSON values mfgit stores (finite numbers, text)."""
    out: dict[str, Any] = {}
    for key, value in args.to_dict().items():
        if any(w in key.lower() for w in _SECRET_WORDS):
            continue
        out[key] = coerce(value)
    return out


class MfgitCallback(TrainerCallback):
    """Commit the adapter at each save or epoch; tag the best; push at the end.

    `repo`: the repository's path (made with ``mfgit init`` if there is none).
    `branch`: the branch commits go to (created, and checked out, if needed).
    `every`: ``"save"`` (each checkpoint the Trainer writes) or ``"epoch"``.
    `push`: a remote name, or None. `best_metric`: a logged metric
    (``"eval_loss"``); `greater_is_better` says which way is better.
    """

    def __init__(self, repo: str | os.PathLike = ".", branch: str | None = None, *, every: str = "save",
                 push: str | None = None, best_metric: str | None = None, greater_is_better: bool = False,
                 message: str = "step {step}"):
        if every not in ("save", "epoch"):
            raise ValueError(f"every={every!r}: use 'save' or 'epoch'")
        self.path = os.fspath(repo)
        self.branch = branch
        self.every = every
        self.remote = push
        self.best_metric = best_metric
        self.greater_is_better = greater_is_better
        self.message = message
        self.best: float | None = None
        self.commits: list[str] = []
        self._repo = None

    # -- the Trainer's events -------------------------------------------------------------

    def on_save(self, args, state, control, **kwargs):
        if self.every == "save":
            self._guarded("commit", self._commit, args, state, kwargs.get("model"))

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.every == "epoch":
            self._guarded("commit", self._commit, args, state, kwargs.get("model"))

    def on_train_end(self, args, state, control, **kwargs):
        if self.remote:
            self._guarded("push", self._push, args, state)

    # -- the work -----------------------------------------------------------------------------

    def _guarded(self, what: str, fn, args, state, *rest) -> None:
        if not state.is_world_process_zero:
            return
        try:
            fn(args, state, *rest)
        except Exception as e:  # noqa: BLE001 — training goes on whatever the repository or network does
            logger.warning("mfgit: %s at step %s failed, training continues: %s: %s",
                           what, state.global_step, type(e).__name__, e)

    def _open(self):
        if self._repo is None:
            from mfgit.api.repository import Repository
            from mfgit.errors import NotARepository

            try:
                repo = Repository.open(self.path)
            except NotARepository:
                repo = Repository.init(self.path)
            if self.branch and repo.head_branch() != self.branch:
                if any(b["name"] == self.branch for b in repo.branches()):
                    repo.switch(self.branch)
                elif repo.head() is not None:
                    repo.switch(self.branch, create=True)
                else:
                    repo.switch(self.branch, orphan=True)
            self._repo = repo
        return self._repo

    def _metrics(self, state) -> dict[str, Any]:
        """The latest value of each numeric metric logged so far."""
        out: dict[str, Any] = {}
        for entry in state.log_history:
            for k, v in entry.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)) and math.isfinite(v):
                    out[k] = v
        return out

    def _commit(self, args, state, model) -> None:
        from mfgit.errors import NothingToCommit

        if model is None:
            raise ValueError("the Trainer passed no model")
        repo = self._open()
        metrics = self._metrics(state)
        meta = {"step": state.global_step, "epoch": float(state.epoch or 0.0), **metrics,
                "training_args": training_arguments(args)}
        try:
            info = repo.commit(model, self.message.format(step=state.global_step, epoch=state.epoch), meta=meta,
                               code_from=os.getcwd())
        except NothingToCommit:
            return
        self.commits.append(info.id)
        value = metrics.get(self.best_metric) if self.best_metric else None
        if value is not None and (self.best is None or
                                  (value > self.best if self.greater_is_better else value < self.best)):
            self.best = value
            repo.tag(self.best_tag, info.id, message=f"best {self.best_metric}={value} at step {state.global_step}",
                     force=True)

    @property
    def best_tag(self) -> str:
        return f"{self.branch or 'main'}/best"

    def _push(self, args, state) -> None:
        repo = self._open()
        specs = [repo.head_branch() or "HEAD"]
        if self.best is not None:
            specs.append(f"+refs/tags/{self.best_tag}:refs/tags/{self.best_tag}")
        repo.push(self.remote, specs)
