"""Run one docs page's python, in order and in one namespace: ``python _run_page.py < chunks.json``.

The input is ``{"page": path, "chunks": [{"line": n, "code": text, "what": label}, ...]}``,
where ``line`` is the markdown line of each chunk's first line and ``what`` names the
chunk in messages (``block at docs/index.md:18``). Each chunk is compiled
under the page's path with its own line numbers, so a traceback names the page and the
line of the markdown file. Before each chunk one line ``running <what>`` goes to stdout,
so a chunk that hangs is named too.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> int:
    spec = json.load(sys.stdin)
    page = spec["page"]
    namespace: dict[str, object] = {"__name__": "__main__"}
    for chunk in spec["chunks"]:
        print(f"running {chunk['what']}", flush=True)
        code = "\n" * (chunk["line"] - 1) + chunk["code"]
        try:
            exec(compile(code, page, "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            print(f"\n{chunk['what']} failed (traceback above)", file=sys.stderr, flush=True)
            os._exit(1)  # not sys.exit: a sample's threads or sockets left open must not hang it
    return 0


if __name__ == "__main__":
    sys.exit(main())
