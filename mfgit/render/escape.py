"""Escaping what participants wrote, for each place it is shown: terminal, HTML, Markdown, YAML.

Every string in a commit, tag, note or adapter manifest was written by some
participant, and the history is shared by institutions that do not trust
each other. Shown raw, such a string can take over a terminal (CSI colour and
cursor sequences, OSC 0 window titles, OSC 8 hyperlinks), forge lines of
output (a newline in an author name is a second ``Author:`` line), or reorder
what a reader sees (bidi overrides). So each renderer passes participant text
through one of these functions, and nothing else decides what is safe.

The terminal rule (``terminal``): C0 and C1 control characters, DEL, Unicode
format characters (bidi embeddings, overrides and isolates U+202A–U+202E and
U+2066–U+2069, marks, zero-width characters, the BOM, tag characters), line
and paragraph separators, surrogates, unassigned code points and the
invisible Hangul fillers are shown as Python-style escapes (``\\x1b``,
``\\u202e``, ``\\U000e0041``; ``\\n``, ``\\r``, ``\\t``). An escape sequence
thus loses its ESC and prints as harmless text. A one-line field (author, email, site, branch and
note names, metadata) never keeps a raw newline (``\\n``); a multi-line
message (``terminal_text``) keeps its newlines and tabs and escapes the rest
of each line. JSON output (``--json``) is never passed through here: JSON
escapes itself and stays exact.
"""

from __future__ import annotations

import html as _html
import re
import unicodedata
from typing import Any

# Unicode categories shown escaped: controls, format characters (bidi, zero
# width, BOM, tags), surrogates, unassigned code points, line/paragraph separators.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"})
# Letters that draw nothing: used to make two names look the same.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0")
# Keys of a document whose values are multi-line messages (their newlines are kept).
MULTILINE_KEYS = frozenset({"message"})


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(c: str) -> str:
    if c in _SHORT:
        return _SHORT[c]
    n = ord(c)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def _unsafe(c: str, keep: str) -> bool:
    return c not in keep and (unicodedata.category(c) in _ESCAPED_CATEGORIES or c in _INVISIBLE)


def _escape(text: str, keep: str) -> str:
    # str.isprintable() is False for every character escaped here but the
    # fillers (and for spaces other than " "), so ordinary text takes the fast path.
    if text.isprintable() and _INVISIBLE.isdisjoint(text):
        return text
    return "".join(_escape_char(c) if _unsafe(c, keep) else c for c in text)


def terminal(value: Any) -> str:
    """A one-line field for the terminal: every control and format character escaped, newlines included."""
    return _escape(value if isinstance(value, str) else str(value), "")


def terminal_text(value: Any) -> str:
    """A multi-line message for the terminal: newlines and tabs kept, each line escaped."""
    text = value if isinstance(value, str) else str(value)
    return "\n".join(_escape(line, "\t") for line in text.split("\n"))


def terminal_doc(value: Any, *, multiline: frozenset[str] = MULTILINE_KEYS, _key: str | None = None) -> Any:
    """A copy of a JSON document with every string (keys too) escaped for the terminal.

    Values under a key in `multiline` keep their newlines (`terminal_text`);
    every other string is a one-line field (`terminal`). Renderers call this
    first, so a field added to a document later is escaped too."""
    if isinstance(value, str):
        return terminal_text(value) if _key in multiline else terminal(value)
    if isinstance(value, dict):
        return {terminal(k) if isinstance(k, str) else k: terminal_doc(v, multiline=multiline, _key=k)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [terminal_doc(v, multiline=multiline, _key=_key) for v in value]
    return value


# -- HTML ---------------------------------------------------------------------------------------


def html(value: Any) -> str:
    """Text for HTML element content or a quoted attribute: escaped as for the terminal, then entities."""
    return _html.escape(terminal(value), quote=True)


def html_text(value: Any) -> str:
    """A multi-line message for HTML (in a ``<pre>`` or with ``white-space: pre``)."""
    return _html.escape(terminal_text(value), quote=True)


# -- Markdown (CommonMark, GitHub tables) -------------------------------------------------------

# The characters that can start inline Markdown (CommonMark, GitHub tables):
# escapes, code, emphasis, strikethrough, links and images, HTML tags,
# autolinks and entities, table cells, and the closing #s of a heading.
# Backslash-escaped, each stands for itself. (Participant text is never put
# at the start of a line, where "-", "+", "1." or ">" would matter too.)
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>&|~#!])")


def markdown(value: Any) -> str:
    """Inline Markdown text (a paragraph, a heading, a table cell) that renders as exactly the text.

    One line: newlines and control characters become visible escapes first,
    so a table row or a heading cannot be broken out of."""
    return _MD_SPECIAL.sub(r"\\\1", terminal(value))


def markdown_code(value: Any, *, table: bool = False) -> str:
    """An inline code span holding exactly `value` (one line), whatever backticks it contains.

    No Markdown or HTML is read inside a code span. In a table cell (`table`),
    ``|`` is escaped too: tables are split into cells before code spans are read."""
    text = terminal(value)
    if table:
        text = text.replace("|", "\\|")
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    if text.startswith(("`", " ")) or text.endswith(("`", " ")):
        text = f" {text} "  # one space each side is stripped again by the renderer
    return f"{fence}{text}{fence}"


def markdown_block(value: Any, info: str = "") -> str:
    """A fenced code block holding `value` (newlines kept), with a fence no line inside can close.

    A closing fence must be at least as long as the opening one, so the fence
    is one backtick longer than the longest run of backticks in the text."""
    text = terminal_text(value).rstrip("\n")
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def markdown_document(value: Any) -> str:
    """Markdown a participant wrote as a document (the body of a model card), kept as Markdown
    but inert: no raw HTML and no autolink can start, since every ``<`` is written ``&lt;``
    (inside code it then shows as such), and control and format characters are escaped as
    for the terminal. Headings, lists, emphasis and links stay theirs; what it holds is put
    after mfgit's own sections, so an unclosed fence can only swallow its own text."""
    return terminal_text(value).replace("<", "&lt;")


# -- YAML ---------------------------------------------------------------------------------------


def yaml_dump(value: Any, *, sort_keys: bool = True) -> str:
    """A YAML document written by a YAML emitter (never by string formatting).

    Every string that is not plain printable ASCII is a double-quoted scalar
    with ``\\n``/``\\x``/``\\u`` escapes, on one line: the text parses back to
    exactly `value`, shows no invisible character, and no line of it can be
    read as a document marker (``---``) or as Markdown around it."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
        plain = data.isascii() and data.isprintable()
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=None if plain else '"')

    Dumper.add_representer(str, represent_str)
    return yaml.dump(value, Dumper=Dumper, sort_keys=sort_keys, allow_unicode=False, default_flow_style=False,
                     width=float("inf"))
