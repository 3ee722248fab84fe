"""The YAML front matter of a Hugging Face model card (README.md), read as commit metadata.

A directory laid out as a Hub snapshot holds the adapter files and a
README.md whose front matter (between ``---`` lines at its top) says
base_model, license, datasets, tags, … `front_matter` returns it as a
JSON value mfgit can store (dates become text, non-finite numbers and
oversized integers become text), or None when there is no card, no front
matter, or the YAML does not parse to a mapping: a card is someone else's
text, and a bad one must not stop a commit.
"""

from __future__ import annotations

from typing import Any

from mfgit.formats.jsonvalue import MAX_DEPTH, JSONValueError, coerce

# YAML aliases let a few lines name one list a billion times ("billion laughs"); PyYAML shares
# the objects, but writing them out would expand every one. Front matter is small: more values
# than this, counted as they would be written, is no card.
MAX_VALUES = 100_000


def front_matter(text: str) -> dict[str, Any] | None:
    import yaml

    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
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
