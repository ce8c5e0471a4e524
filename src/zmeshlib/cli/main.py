"""The ``zmesh`` command: one entry point, one sub-command module per concern.

``zmesh`` alone prints the help (exit status 0: asking what there is is no
error); ``zmesh --version`` prints ``zmesh <version>``. Each sub-command module
has a ``register(subparsers)`` that adds its parser and sets ``func``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import ca, demo, policy, registry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zmesh", description="zmeshlib command line")
    parser.add_argument("--version", action="version", version=f"zmesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (ca, policy, registry, demo):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
