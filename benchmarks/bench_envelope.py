"""Cost of the envelope codec per message, in ns per call.

Run: ``.venv/bin/python benchmarks/bench_envelope.py`` (``--quick`` for a short run).
Each case is timed in several rounds and the best round is reported, the usual
way to read a noisy machine; compare rows of one run rather than across runs.
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable

from zmeshlib._models import StatusCode, TraceContext
from zmeshlib.wire import Envelope, Kind, decode, encode, encode_publish

MINIMAL = Envelope(Kind.PUBLISH, 123456789)
FULL = Envelope(
    Kind.REQUEST,
    123456789,
    method="charge",
    deadline_ms=1_700_000_000_000,
    trace=TraceContext(bytes(range(16)), bytes(range(8)), 1),
    headers={"region": "eu", "tenant": "acme", "request-class": "gold"},
)
ERROR_REPLY = Envelope(
    Kind.REPLY,
    123456789,
    status=StatusCode.PERMISSION_DENIED,
    detail="shop/sa/orders may not call refund",
    policy="shop-can-read-payments",
)


def cases() -> dict[str, Callable[[], object]]:
    minimal_bytes, full_bytes, error_bytes = encode(MINIMAL), encode(FULL), encode(ERROR_REPLY)
    minimal_view = memoryview(minimal_bytes)
    return {
        "encode_publish(id)          ": lambda: encode_publish(123456789),
        "encode minimal publish      ": lambda: encode(MINIMAL),
        "decode minimal publish      ": lambda: decode(minimal_bytes),
        "decode minimal (memoryview) ": lambda: decode(minimal_view),
        "encode trace + 3 headers    ": lambda: encode(FULL),
        "decode trace + 3 headers    ": lambda: decode(full_bytes),
        "encode error reply          ": lambda: encode(ERROR_REPLY),
        "decode error reply          ": lambda: decode(error_bytes),
    }


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    number, repeat = (20_000, 3) if quick else (200_000, 7)
    print(
        f"envelope sizes: minimal {len(encode(MINIMAL))} B, trace + 3 headers {len(encode(FULL))} B"
    )
    for name, fn in cases().items():
        best = min(timeit.repeat(fn, number=number, repeat=repeat)) / number
        print(f"{name} {best * 1e9:8.0f} ns")


if __name__ == "__main__":
    main(sys.argv[1:])
