"""The YAML front matter of a Hugging Face model card (README.md), read as commit metadata.

A directory laid out as a Hub snapshot holds the adapter files and a
README.md whose front matter (between ``---`` lines at its top) says
base_model, license, datasets, tags, … `front_matter` returns it as a
JSON value mfgit can store (dates become text, non-finite numbers and
oversized integers become text), or None when there is no card, no front
matter, or the YAML does not parse to a mapping: a card is someone else's
text, and a bad one must not stop a commit.

The card file itself is kept as the commit's public attachment ``README.md``,
not as an extra file of the adapter (`split_card`): the adapter is the
weights and their config, so the same weights under two cards are one
adapter, and a card edited alone is a new commit of the same adapter.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mfgit.formats.jsonvalue import MAX_DEPTH, JSONValueError, coerce
from mfgit.formats.peft import AdapterDir

CARD_NAME = "README.md"

# YAML aliases let a few lines name one list a billion times ("billion laughs"); PyYAML shares
# the objects, but writing them out would expand every one. Front matter is small: more values
# than this, counted as they would be written, is no card.
MAX_VALUES = 100_000


def split_card(adir: AdapterDir) -> tuple[AdapterDir, Path | None]:
    """The directory without its README.md, and that file (None without one).

    The commit pipeline, the stat cache and `status` all see the adapter as
    this returns it, so the card never enters the manifest."""
    card = next((f for f in adir.extra_files if f.name == CARD_NAME), None)
    if card is None:
        return adir, None
    return dataclasses.replace(adir, extra_files=[f for f in adir.extra_files if f is not card]), card


def _front_matter_end(lines: list[str]) -> int | None:
    """The index of the line closing the front matter, or None when there is none."""
    if not lines or lines[0].strip() != "---":
        return None
    return next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)


def body(text: str) -> str:
    """The card without its front matter (the whole text when it has none)."""
    lines = text.lstrip("\ufeff").splitlines()
    end = _front_matter_end(lines)
    return "\n".join(lines if end is None else lines[end + 1:]).strip("\n")


def front_matter(text: str) -> dict[str, Any] | None:
    import yaml

    lines = text.lstrip("\ufeff").splitlines()
    end = _front_matter_end(lines)
    if end is None:
        return None
    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict) or not data:
        return None
    if not _within(data, MAX_VALUES):
        return None
    try:
        return coerce(data)
    except JSONValueError:
        return None


def _within(data: Any, budget: int) -> bool:
    """Whether `data`, expanded as it would be written, holds at most `budget` values."""
    stack = [(data, 0)]
    while stack:
        v, depth = stack.pop()
        budget -= 1
        if budget < 0 or depth > MAX_DEPTH:
            return False
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, (list, tuple, set)):
            stack.extend((x, depth + 1) for x in v)
    return True
