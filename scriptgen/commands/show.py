"""``scriptgen show DIR``: the learned machines as a text tree, Graphviz dot or JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "show",
        help="display learned state machines",
        description="Show the state machines in a model directory: per state its answer, "
        "bucket size and outgoing transitions (fixed bytes as text or hex, mutating "
        "regions as <min..max>).",
    )
    p.add_argument("model_dir", metavar="DIR", help="model directory (scriptgen train --model-dir)")
    p.add_argument(
        "--format",
        choices=("text", "dot", "json"),
        default="text",
        help="text: indented tree; dot: Graphviz (| dot -Tsvg); "
        "json: the model file (several models: a JSON array)",
    )
    p.add_argument(
        "--port", type=int, action="append", metavar="N", help="only this port (repeatable)"
    )
    p.add_argument("--proto", choices=("tcp", "udp"), help="only this transport")
    p.add_argument(
        "--answer-bytes", type=int, default=40, metavar="N", help="answer bytes shown per state"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scriptgen.model import ModelError, load_model_dir
    from scriptgen.render import render_dot, render_json, render_text

    try:
        machines = load_model_dir(args.model_dir)
    except ModelError as e:
        print(f"scriptgen: {e}", file=sys.stderr)
        return 1
    chosen = [
        m
        for key, m in sorted(machines.items())
        if (not args.port or m.port in args.port)
        and (args.proto is None or m.protocol == args.proto)
    ]
    if not chosen:
        print(f"scriptgen: {args.model_dir}: no models found", file=sys.stderr)
        return 1
    if args.format == "json":
        sys.stdout.write(render_json(chosen))
    elif args.format == "dot":
        sys.stdout.write(render_dot(chosen, answer_limit=min(args.answer_bytes, 24)))
    else:
        sys.stdout.write("\n".join(render_text(m, args.answer_bytes) for m in chosen))
    return 0
