"""Where identity cards are found: untrusted stores and the verifying :class:`Registry`.

See docs/registry.md for the trust model, secure naming and the counters.
"""

from .registry import COUNTERS, Registry
from .stores import CardStore, DirStore, MemoryStore, check_key_id, open_store

__all__ = [
    "COUNTERS",
    "CardStore",
    "DirStore",
    "MemoryStore",
    "Registry",
    "check_key_id",
    "open_store",
]
