"""Where identity cards are found: untrusted stores and the verifying :class:`Registry`.

See docs/registry.md for the trust model, secure naming and the counters.
"""

from .registry import CACHE_BYTES, CACHE_ENTRIES, COUNTERS, UNVERIFIABLE, Registry
from .stores import CardStore, DirStore, MemoryStore, Unreadable, check_key_id, open_store

__all__ = [
    "CACHE_BYTES",
    "CACHE_ENTRIES",
    "COUNTERS",
    "UNVERIFIABLE",
    "CardStore",
    "DirStore",
    "MemoryStore",
    "Registry",
    "Unreadable",
    "check_key_id",
    "open_store",
]
