"""The ``zmesh`` command: one entry point, one sub-command module per concern."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import ca, demo, policy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zmesh", description="zmeshlib command line")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (ca, policy, demo):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
