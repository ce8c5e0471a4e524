"""A trace as a picture: exported spans drawn as an SVG waterfall, as tracing UIs draw them.

Rules this module keeps:

* Input is the plain record of each span (:func:`span_record`: name, kind,
  ids, parent, start and end in nanoseconds, attributes), so spans gathered
  from several processes, or read back from a file, draw the same.
* One row per span, in tree order (a child under its parent, siblings by
  start time); a span whose parent is not among them is a root. Each bar
  spans its start to its end on one time axis for the whole picture; its
  colour is its workload's (``zmeshlib.workload.spiffe_id``).
* The output depends on the records alone: the same spans give the same
  bytes, so a picture in the docs is checked against the spans it was drawn
  from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

WIDTH = 960
LABEL = 380  # the names' column
ROW = 28
TOP = 44
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#9c755f")


def span_record(span: Any) -> dict[str, Any]:
    """The plain record of an OpenTelemetry SDK span (``ReadableSpan``), JSON-ready."""
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent": f"{span.parent.span_id:016x}" if span.parent else None,
        "start": span.start_time,
        "end": span.end_time,
        "attributes": dict(span.attributes or {}),
    }


def _workload(record: Mapping[str, Any]) -> str:
    spiffe_id = str(record.get("attributes", {}).get("zmeshlib.workload.spiffe_id", ""))
    return spiffe_id.rsplit("/", 1)[-1] if spiffe_id else "application"


def _rows(records: Sequence[Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any]]]:
    """(depth, record) in tree order."""
    ids = {r["span_id"] for r in records}
    children: dict[Any, list[Mapping[str, Any]]] = {}
    for r in records:
        parent = r.get("parent") if r.get("parent") in ids else None
        children.setdefault(parent, []).append(r)
    for group in children.values():
        group.sort(key=lambda r: (r["start"], r["span_id"]))
    out: list[tuple[int, Mapping[str, Any]]] = []
    stack = [(0, r) for r in reversed(children.get(None, []))]
    while stack:
        depth, r = stack.pop()
        out.append((depth, r))
        stack.extend((depth + 1, c) for c in reversed(children.get(r["span_id"], [])))
    return out


def waterfall_svg(records: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """The SVG of a waterfall of ``records`` (see :func:`span_record`)."""
    rows = _rows(records)
    if not rows:
        raise ValueError("no spans to draw")
    t0 = min(r["start"] for _, r in rows)
    t1 = max(r["end"] for _, r in rows)
    scale = (WIDTH - LABEL - 90) / max(t1 - t0, 1)
    workloads = sorted({_workload(r) for _, r in rows})
    colour = {w: PALETTE[i % len(PALETTE)] for i, w in enumerate(workloads)}
    height = TOP + ROW * len(rows) + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">',
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    for i in range(5):  # the time axis: 0, 25, 50, 75, 100 %
        x = LABEL + (WIDTH - LABEL - 90) * i / 4
        ms = (t1 - t0) * i / 4 / 1e6
        out.append(f'<line x1="{x:.1f}" y1="{TOP - 8}" x2="{x:.1f}" y2="{height - 34}" '
                   'stroke="#dddddd"/>')  # fmt: skip
        out.append(f'<text x="{x:.1f}" y="{TOP - 12}" fill="#666666" '
                   f'text-anchor="middle">{ms:.1f} ms</text>')  # fmt: skip
    for n, (depth, r) in enumerate(rows):
        y = TOP + ROW * n
        workload = _workload(r)
        label = f"{r['name']} ({r['kind'].lower()})"
        out.append(f'<text x="{10 + 16 * depth}" y="{y + 18}">{escape(label)}</text>')
        out.append(f'<text x="{LABEL - 8}" y="{y + 18}" fill="#666666" '
                   f'text-anchor="end">{escape(workload)}</text>')  # fmt: skip
        x = LABEL + (r["start"] - t0) * scale
        w = max((r["end"] - r["start"]) * scale, 2.0)
        out.append(f'<rect x="{x:.1f}" y="{y + 5}" width="{w:.1f}" height="{ROW - 10}" '
                   f'rx="3" fill="{colour[workload]}"/>')  # fmt: skip
        out.append(f'<text x="{x + w + 6:.1f}" y="{y + 18}" fill="#333333">'
                   f"{(r['end'] - r['start']) / 1e6:.2f} ms</text>")  # fmt: skip
    legend_y = height - 14
    x = 10.0
    for w in workloads:
        out.append(f'<rect x="{x:.1f}" y="{legend_y - 11}" width="12" height="12" '
                   f'fill="{colour[w]}"/>')  # fmt: skip
        out.append(f'<text x="{x + 18:.1f}" y="{legend_y}">{escape(w)}</text>')
        x += 30 + 8 * len(w)
    out.append("</svg>")
    return "\n".join(out) + "\n"
