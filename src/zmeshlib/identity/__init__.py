"""Workload identity: SPIFFE IDs, X.509-SVIDs, trust bundles, the dev CA, identity sources.

See docs/identity.md for the model and the rules each part keeps.
"""

from .devca import DevCA
from .source import Identity
from .spiffe_id import SpiffeId
from .svid import Bundles, TrustBundle, X509Svid, verify_chain

__all__ = ["Bundles", "DevCA", "Identity", "SpiffeId", "TrustBundle", "X509Svid", "verify_chain"]
