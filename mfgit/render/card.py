"""The model card of ``export --card``: a Hugging Face README.md rendered from a card document.

`mfgit.audit.export.card_document` gathers what the card shows (the commit,
its adapter, the lineage leaves, the recipe or the import provenance); this
module only writes text and reads no repository. Almost every string in the
card was written by some participant — messages, names, sites, the base
model, metadata, the labels of merge inputs — so each goes through
`mfgit.render.escape` for where it lands (docs/design.md, invariant 13):

* the YAML front matter and the YAML blocks are written by a YAML emitter
  (`escape.yaml_dump`), never by string formatting;
* text in a heading, a paragraph or a table cell is escaped Markdown
  (`escape.markdown`): no participant string can start an element, a
  heading, a link, an HTML tag or a new table row;
* names that are identifiers (the base model, file names, URLs, ids) are
  code spans and the message a fenced block, each with a fence no backtick
  run inside can close;
* the body of the card the site committed (its attachment README.md) is the
  site's own Markdown, written last, after a heading of mfgit's, with raw
  HTML made inert (`escape.markdown_document`).
"""

from __future__ import annotations

from typing import Any

from mfgit.render.audit import leaf_weight_text
from mfgit.render.escape import markdown, markdown_block, markdown_code, markdown_document, yaml_dump


def _cell(value: Any) -> str:
    return markdown(value if value not in (None, "") else "-")


def _front_matter(doc: dict[str, Any]) -> str:
    # The metadata of the card the adapter was committed with (license, datasets, …) is written
    # back; base_model, the relation and the library are mfgit's, the tags the union of both.
    card = doc.get("card_metadata") or {}
    front: dict[str, Any] = {}
    if doc["base_model"]:
        front["base_model"] = doc["base_model"]
    # A LoRA composite is still an adapter of its base model: the Hub's `merge`
    # relation names merged full models. The merged site adapters are listed in the body.
    front["base_model_relation"] = "adapter"
    front["library_name"] = "peft"
    own = ["lora", "peft", "mfgit"] + (["merge"] if doc["is_merge"] else [])
    theirs = card.get("tags") if isinstance(card.get("tags"), list) else []
    # PEFT tags its card "base_model:adapter:<what the model was loaded from>", a local path as
    # often as not: such tags are mfgit's to write, from the Hub id alone.
    theirs = [t for t in theirs if isinstance(t, str) and not t.startswith("base_model:")]
    if doc["base_model"]:
        own.insert(0, f"base_model:adapter:{doc['base_model']}")
    front["tags"] = list(dict.fromkeys(theirs + own))
    for key, value in card.items():
        if key not in front and key not in ("base_model", "base_model_relation", "library_name", "tags"):
            front[key] = value
    return "---\n" + yaml_dump(front, sort_keys=False) + "---\n"


def _summary(doc: dict[str, Any]) -> list[str]:
    author = doc["author"] or {}
    who = f"{author.get('name', '')} <{author.get('email', '')}>"
    signed = f"yes, key {doc['signed_key']}" if doc["signed_key"] is not None else "no"
    return [
        "| | |", "|---|---|",
        f"| commit | {markdown_code(doc['commit'], table=True)} |",
        f"| adapter | {markdown_code(doc['adapter'], table=True)} |",
        f"| author | {markdown(who)} |",
        f"| site | {_cell(doc['site'])} |",
        f"| time | {_cell(doc['timestamp'])} |",
        f"| signed | {markdown(signed)} |",
        f"| rank(s) | {markdown(', '.join(str(r) for r in doc['ranks']))} |",
        f"| modules | {doc['modules']} |",
        "",
    ]


def _merge_lineage(doc: dict[str, Any]) -> list[str]:
    cid = doc["commit"]
    lines = ["Leaves (site commits) and their effective weight in this composite: the composite's update is "
             "Σ weight × the leaf's update for linear merges (product of weights and λ along the merge "
             "graph, summed over paths).", "",
             "| site | commit | author | time | effective weight |", "|---|---|---|---|---|"]
    for lf in doc["leaves"]:
        who = lf["author"].get("name", "") if isinstance(lf["author"], dict) else ""
        lines.append(f"| {_cell(lf['site'])} | {markdown_code(lf['commit'][:10], table=True)} | {_cell(who)} | "
                     f"{_cell(lf['timestamp'])} | {markdown(leaf_weight_text(lf))} |")
    lines += ["", f"{doc['merges']} merge commit(s) lead from the leaves to this composite; "
              f"{markdown_code('mfgit lineage ' + cid[:10])} shows the graph.", ""]
    lines += ["## Merge recipe", "", markdown_block(yaml_dump(doc["recipe"]), "yaml"), ""]
    lines += [f"Re-run it with {markdown_code(f'mfgit verify {cid[:10]} --reproduce')}.", ""]
    return lines


def _import_provenance(doc: dict[str, Any]) -> list[str]:
    src = doc["source"] or {}
    code = doc["code"] or {}
    lines = [f"Imported from {markdown_code(src.get('name', '?'))} ({markdown(src.get('format', '?'))}) "
             f"at site {_cell(doc['site'])}."]
    if code.get("commit"):
        lines += [f"Training code: {markdown_code(code['commit'])}"
                  + (f" ({markdown_code(code['remote_url'])})" if code.get("remote_url") else "")
                  + (" (dirty work tree)" if code.get("dirty") else "") + "."]
    if doc["meta"]:
        lines += ["", markdown_block(yaml_dump(doc["meta"]), "yaml")]
    lines.append("")
    return lines


def committed_card(doc: dict[str, Any]) -> str:
    """README.md for `export` without ``--card``: the card the site committed, its text kept
    (made inert) under front matter brought to the Hub's conventions (base_model a Hub id)."""
    return _front_matter(doc) + "\n" + markdown_document(doc["card_body"] or "") + "\n"


def model_card(doc: dict[str, Any]) -> str:
    """README.md text for a card document (`mfgit.audit.export.card_document`)."""
    message = doc["message"] or ""
    subject = message.splitlines()[0] if message.strip() else doc["commit"][:10]
    kind = "a merge composite of site adapters" if doc["is_merge"] else "a LoRA adapter"
    # The body names the base model as recorded even when it is no Hub id (then it is only text here).
    named = doc["base_model"] or doc.get("base_model_recorded")
    base = f" for {markdown_code(named)}" if named else ""
    lines = [_front_matter(doc), f"# {markdown(subject)}", "", f"This is {kind}{base}, exported by mfgit.", ""]
    lines += _summary(doc)
    if len(message.splitlines()) > 1:
        lines += [markdown_block(message.rstrip(), "text"), ""]
    lines += ["## Lineage", ""]
    lines += _merge_lineage(doc) if doc["is_merge"] else _import_provenance(doc)
    if doc.get("card_body"):
        lines += ["## Model card", "", "The card committed with this adapter, as its site wrote it "
                  "(raw HTML shown as text):", "", markdown_document(doc["card_body"]), ""]
    return "\n".join(lines)
