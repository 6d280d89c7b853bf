"""Command line entry point: ``scriptgen <command> ...``.

Each sub-command lives in its own module under ``scriptgen.commands`` and
exposes ``register(subparsers)``; this module only wires them together.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from scriptgen import __version__
from scriptgen.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scriptgen",
        description="Learn network dialogs from captures and emulate them.",
    )
    parser.add_argument("--version", action="version", version=f"scriptgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (never raise for user errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("scriptgen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `scriptgen conversations x.pcap | head` must not print a traceback.
        sys.stderr.close()
        return 0
