"""Cost of the envelope codec per message, in ns per call.

Run: ``.venv/bin/python benchmarks/bench_envelope.py`` (``--quick`` for a short run).
Each case is timed in several rounds and the best round is reported, the usual
way to read a noisy machine; compare rows of one run rather than across runs.

The hot-path shapes (``encode_request``, ``decode_plain``) are timed twice: the
Python functions (the specification, and what runs without a C compiler) and
the compiled ones of ``wire/_plain.c`` when they are built.
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from typing import Any

from zmeshlib._models import StatusCode, TraceContext
from zmeshlib.wire import Envelope, Kind, decode, encode, encode_publish
from zmeshlib.wire import envelope as envelope_module

try:
    from zmeshlib.wire import _plain as compiled  # type: ignore[attr-defined]
except ImportError:  # not built: the Python rows only
    compiled = None
else:
    envelope_module._bind(compiled)  # also under ZMESHLIB_PURE_PYTHON

ID, METHOD, DEADLINE, TIMEOUT = 123456789, "charge", 1_700_000_000_000, 1500

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


def hot_path_cases(
    prefix: str, encode_request: Any, decode_plain: Any
) -> dict[str, Callable[[], object]]:
    """encode_request and decode_plain of one implementation, for each request shape."""
    minimal = encode(Envelope(Kind.REPLY, ID))
    deadline = encode_request(ID, METHOD, DEADLINE)
    timeout = encode_request(ID, METHOD, DEADLINE, TIMEOUT)
    retry = encode_request(ID, METHOD, DEADLINE, TIMEOUT, 2)
    return {
        f"{prefix} encode_request(id, m, d)": lambda: encode_request(ID, METHOD, DEADLINE),
        f"{prefix} encode_request(id, m, d, t)": lambda: encode_request(
            ID, METHOD, DEADLINE, TIMEOUT
        ),
        f"{prefix} encode_request(id, m, d, t, a)": lambda: encode_request(
            ID, METHOD, DEADLINE, TIMEOUT, 2
        ),
        f"{prefix} encode_request(..., timeout_ms=t)": lambda: encode_request(
            ID, METHOD, DEADLINE, timeout_ms=TIMEOUT
        ),
        f"{prefix} decode_plain minimal reply": lambda: decode_plain(minimal),
        f"{prefix} decode_plain request m, d": lambda: decode_plain(deadline),
        f"{prefix} decode_plain request m, d, t": lambda: decode_plain(timeout),
        f"{prefix} decode_plain request m, d, t, a": lambda: decode_plain(retry),
    }


def cases() -> dict[str, Callable[[], object]]:
    minimal_bytes, full_bytes, error_bytes = encode(MINIMAL), encode(FULL), encode(ERROR_REPLY)
    minimal_view = memoryview(minimal_bytes)
    return {
        "encode_publish(id)": lambda: encode_publish(123456789),
        "encode minimal publish": lambda: encode(MINIMAL),
        "decode minimal publish": lambda: decode(minimal_bytes),
        "decode minimal (memoryview)": lambda: decode(minimal_view),
        "encode trace + 3 headers": lambda: encode(FULL),
        "decode trace + 3 headers": lambda: decode(full_bytes),
        "encode error reply": lambda: encode(ERROR_REPLY),
        "decode error reply": lambda: decode(error_bytes),
        **hot_path_cases(
            "python", envelope_module.py_encode_request, envelope_module.py_decode_plain
        ),
        **(
            hot_path_cases("C", compiled.encode_request, compiled.decode_plain)
            if compiled is not None
            else {}
        ),
    }


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    number, repeat = (20_000, 3) if quick else (200_000, 7)
    print(
        f"envelope sizes: minimal {len(encode(MINIMAL))} B, trace + 3 headers {len(encode(FULL))} B"
    )
    for name, fn in cases().items():
        best = min(timeit.repeat(fn, number=number, repeat=repeat)) / number
        print(f"{name:<44} {best * 1e9:6.0f} ns")


if __name__ == "__main__":
    main(sys.argv[1:])
