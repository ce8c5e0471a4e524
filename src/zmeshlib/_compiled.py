"""The optional C extensions, and the one switch that turns them all off.

Three hot-path pieces have a compiled twin, built at install time where
there is a C compiler: the frame mover (``sockets/_frames.c``), the
envelope's hot-path shapes (``wire/_plain.c``) and the received-Message
constructor (``_message.c``). Each Python module keeps its own pure-Python
version as the specification and the fallback, and the tests hold the two
to one answer. ``ZMESHLIB_PURE_PYTHON=1`` makes every one of them use the
Python version, as on a machine without a compiler.

A missing extension (not built: no compiler at install) is logged once, as a
WARNING of logger ``zmeshlib``, with what it costs; switching them off on
purpose is not.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

log = logging.getLogger("zmeshlib")
_warned = False
MISSING = (
    "zmeshlib's optional C extensions are not built (no C compiler when it was installed?): "
    "the hot path runs in pure Python, which costs more per message (docs/performance.md gives "
    "the figures); "
    "reinstall with a C compiler and the Python headers to build them (missing: %s)"
)


def load(name: str) -> ModuleType | None:
    """The compiled module ``zmeshlib.<name>``; None where it is not built, or is switched off."""
    global _warned
    if os.environ.get("ZMESHLIB_PURE_PYTHON"):
        return None
    try:
        return importlib.import_module(f"zmeshlib.{name}")
    except ImportError:
        if not _warned:
            _warned = True
            log.warning(MISSING, name)
        return None
