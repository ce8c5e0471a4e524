"""Request resilience, as pure cores: retries, budgets, hedging, balancing, ejection, breaking.

Nothing here does I/O, reads a clock or draws from the global random source:
every decision takes ``now`` (monotonic seconds) and an injected
``random.Random``, so the cores are tested exactly with a fake clock. The
client sockets (``sockets/client.py``) feed them events and execute the
commands they return.
"""

from .backoff import backoff_delay
from .balancers import BALANCERS
from .budget import RetryBudgetTracker
from .call import Call, CallFailure, Cancel, Finish, Mirror, Send
from .endpoints import EndpointSet, EndpointState, Outcome
from .pool import Admission, Pool

__all__ = [
    "BALANCERS",
    "Admission",
    "Call",
    "CallFailure",
    "Cancel",
    "EndpointSet",
    "EndpointState",
    "Finish",
    "Mirror",
    "Outcome",
    "Pool",
    "RetryBudgetTracker",
    "Send",
    "backoff_delay",
]
