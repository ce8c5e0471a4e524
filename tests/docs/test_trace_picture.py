"""The trace picture in docs/observability.md is drawn from the spans beside it.

``docs/assets/trace.json`` holds the spans of one run of
``tests/telemetry/test_trace_across_processes.py`` (run it with
``ZMESHLIB_TRACE_OUT=docs/assets/trace.json``); ``trace.svg`` must be what the
renderer draws from them, so the picture never drifts from real spans.
"""

from __future__ import annotations

import json
from pathlib import Path

from zmeshlib.telemetry.waterfall import waterfall_svg

ASSETS = Path(__file__).resolve().parents[2] / "docs" / "assets"
TITLE = "one order: published, processed, and a call it made (three processes)"


def test_the_picture_is_the_rendering_of_the_spans():
    spans = json.loads((ASSETS / "trace.json").read_text())
    assert len({s["trace_id"] for s in spans}) == 1  # one trace
    assert (ASSETS / "trace.svg").read_text() == waterfall_svg(spans, TITLE)


def test_the_coffee_shop_picture_is_the_rendering_of_its_spans():
    """docs/examples.md's picture: one order of ``zmesh demo``, whose charge was retried
    from the flaky replica to a healthy one (spans written by ``--trace-out``)."""
    from zmeshlib.cli.coffee import TRACE_TITLE

    spans = json.loads((ASSETS / "coffee-trace.json").read_text())
    assert len({s["trace_id"] for s in spans}) == 1
    assert {"order", "inventory", "barista", "payment-a", "payment-b"} <= {
        s["service"] for s in spans
    }
    assert (ASSETS / "coffee-trace.svg").read_text() == waterfall_svg(spans, TRACE_TITLE)


def test_a_child_is_drawn_under_its_parent_and_an_orphan_is_a_root():
    spans = [
        {"name": "b", "kind": "CLIENT", "span_id": "2", "parent": "1", "start": 5, "end": 8},
        {"name": "a", "kind": "INTERNAL", "span_id": "1", "parent": None, "start": 0, "end": 10},
        {"name": "c", "kind": "SERVER", "span_id": "3", "parent": "9", "start": 6, "end": 7},
    ]
    svg = waterfall_svg(spans)
    assert svg.index("a (internal)") < svg.index("b (client)") < svg.index("c (server)")
    assert '<text x="26" y="' in svg  # b is indented one level; c, an orphan, is not
