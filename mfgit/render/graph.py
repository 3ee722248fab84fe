"""The lineage graph as inline SVG, laid out here in Python: shared by the lineage page and the static pages.

A lineage document (`mfgit.audit.lineage`) is drawn top-down: the composite
at the top, each merge above its inputs, site commits at the bottom. Layers
are the longest distance from the root, so every edge points down; within a
layer nodes are ordered by the mean position of their parents (one
barycentre pass), which keeps edges short without a layout library. The
drawing needs no script and loads nothing: boxes are ``<g class="node">``,
arrows ``<g class="edge">``, styled by `GRAPH_CSS`. With `href`, each node is
also a link (the static pages link a node to its commit's page). Text from
commits is escaped (`mfgit.render.escape.html`); the caller passes a document
already escaped for display (`terminal_doc`), as both pages do.
"""

from __future__ import annotations

from typing import Any, Callable

from mfgit.render.escape import html, terminal

NODE_W = 210
NODE_H = 66
GAP_X = 34
GAP_Y = 96
MARGIN = 24


def _layout(d: dict[str, Any]) -> dict[str, tuple[float, float]]:
    ids = [n["id"] for n in d["nodes"]]
    children: dict[str, list[str]] = {i: [] for i in ids}
    parents: dict[str, list[str]] = {i: [] for i in ids}
    for e in d["edges"]:
        if e["from"] in children and e["to"] in children and e["to"] not in children[e["from"]]:
            children[e["from"]].append(e["to"])
            parents[e["to"]].append(e["from"])
    # Layer = longest distance from the root, so every edge points down.
    depth: dict[str, int] = {d["root"]: 0}
    order = []
    seen: set[str] = set()

    def topo(n: str) -> None:
        if n in seen:
            return
        seen.add(n)
        for c in children[n]:
            topo(c)
        order.append(n)

    for i in ids:
        topo(i)
    for n in reversed(order):
        for c in children[n]:
            depth[c] = max(depth.get(c, 0), depth.get(n, 0) + 1)
    layers: dict[int, list[str]] = {}
    for i in ids:
        layers.setdefault(depth.get(i, 0), []).append(i)
    pos_index: dict[str, float] = {}
    for lvl in sorted(layers):
        nodes = layers[lvl]
        if lvl > 0:
            def bary(n: str) -> float:
                ps = [pos_index[p] for p in parents[n] if p in pos_index]
                return sum(ps) / len(ps) if ps else 0.0
            nodes.sort(key=lambda n: (bary(n), ids.index(n)))
        for k, n in enumerate(nodes):
            pos_index[n] = k - (len(nodes) - 1) / 2
    widest = max(len(v) for v in layers.values()) if layers else 1
    width = widest * (NODE_W + GAP_X)
    pos = {}
    for lvl, nodes in layers.items():
        for n in nodes:
            x = MARGIN + width / 2 + pos_index[n] * (NODE_W + GAP_X) - NODE_W / 2
            y = MARGIN + lvl * (NODE_H + GAP_Y)
            pos[n] = (round(x, 1), round(y, 1))
    return pos


def _clip(s: str, n: int) -> str:
    """`s` escaped for HTML, clipped to `n` characters as shown (escapes count as what they print)."""
    s = terminal(s or "")
    return html(s if len(s) <= n else s[: n - 1] + "…")


def lineage_svg(d: dict[str, Any], href: Callable[[str], str | None] | None = None) -> tuple[str, int, int]:
    """(svg markup, width, height) of lineage document `d`; `href(commit id)` makes each node a link."""
    pos = _layout(d)
    leaf = {lf["commit"]: lf for lf in d["leaves"]}
    if pos:
        w = int(max(x for x, _ in pos.values()) + NODE_W + MARGIN)
        h = int(max(y for _, y in pos.values()) + NODE_H + MARGIN)
    else:
        w, h = 200, 100
    parts = []
    for e in d["edges"]:
        if e["from"] not in pos or e["to"] not in pos:
            continue
        x1, y1 = pos[e["from"]]
        x2, y2 = pos[e["to"]]
        ax, ay = x1 + NODE_W / 2, y1 + NODE_H
        bx, by = x2 + NODE_W / 2, y2
        my = (ay + by) / 2
        w_txt = "-" if e["weight"] is None else f"{e['weight']:.4g}"
        parts.append(
            f'<g class="edge" data-from="{html(e["from"])}" data-to="{html(e["to"])}">'
            f'<path d="M{ax:.1f},{ay:.1f} C{ax:.1f},{my:.1f} {bx:.1f},{my:.1f} {bx:.1f},{by - 6:.1f}" '
            f'marker-end="url(#arrow)"/>'
            f'<text class="w" x="{(ax + bx) / 2:.1f}" y="{my:.1f}">w={html(w_txt)}</text></g>')
    for n in d["nodes"]:
        x, y = pos[n["id"]]
        if n["kind"] == "merge":
            r = n.get("recipe") or {}
            cls = "merge linear" if n.get("linear") else "merge nonlinear"
            line1 = f"merge · {r.get('strategy')}" + (f" · λ={n['lambda']:g}" if n.get("lambda") not in (None, 1.0) else "")
            line3 = f"{len(n.get('inputs') or [])} inputs · {n.get('integration') or ''}"
        elif n["kind"] == "mixture":  # --- mixture ---
            cls = "merge nonlinear"
            line1 = f"mixture · {n.get('combine')} · outputs"
            line3 = f"{len(n.get('inputs') or [])} members"
        else:
            lf = leaf.get(n["id"])
            cls = "leaf"
            line1 = f"site {n['site']}" if n["site"] else "commit"
            if lf is None:
                line3 = ""
            elif lf["linear"]:
                line3 = f"effective weight {lf['effective_weight']:.4g}"
            else:
                line3 = "not linear"
        if n["id"] == d["root"]:
            cls += " root"
        link = href(n["id"]) if href is not None else None
        # A linked node is reached by the link (focusable itself); an unlinked one is a button for the page's script.
        role = '' if link else ' tabindex="0" role="button"'
        node = (f'<g class="node {cls}" data-id="{html(n["id"])}"{role} '
                f'transform="translate({x},{y})">'
                f'<rect width="{NODE_W}" height="{NODE_H}" rx="8"/>'
                f'<text x="10" y="18" class="t1">{_clip(line1, 30)}</text>'
                f'<text x="10" y="35" class="t2">{html(n["id"][:10])} · {_clip(n["subject"], 18)}</text>'
                f'<text x="10" y="53" class="t3">{_clip(line3, 32)}</text></g>')
        parts.append(f'<a href="{html(link)}">{node}</a>' if link else node)
    svg = (f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#667"/></marker></defs>'
           + "".join(parts) + "</svg>")
    return svg, w, h




# The drawing's own styles; a page adds its layout around them.
GRAPH_CSS = """
#graph{max-width:100%;height:auto;display:block;margin:0 auto}
g.node{cursor:pointer}g.node:focus{outline:none}
g.node rect{stroke:#5b6478;stroke-width:1.2}
g.node.leaf rect{fill:#e3f6e3}
g.node.merge.linear rect{fill:#dbe8ff}
g.node.merge.nonlinear rect{fill:#ffe1c7}
g.node.root rect{stroke-width:2.6}
g.node.selected rect{stroke:#d6336c;stroke-width:3}
g.node text{font-size:12px;fill:#1d2330}
g.node text.t1{font-weight:600}
g.node text.t2,g.node text.t3{font-size:11px;fill:#3b4252}
g.edge path{fill:none;stroke:#8a93a6;stroke-width:1.4}
g.edge text.w{font-size:11px;fill:#4c566a;text-anchor:middle;paint-order:stroke;stroke:#fff;stroke-width:3px}
"""
