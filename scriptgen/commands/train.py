"""``scriptgen train --model-dir DIR PCAP...``: learn (or update) state machines from captures."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from scriptgen.learn.phases import LearnOptions

LEARN_FLAGS = {  # LearnOptions field -> help
    "max_bucket": "suffixes kept per state bucket; more are dropped and counted",
    "max_bucket_bytes": "bytes kept per state bucket; more are dropped and counted",
    "max_message_bytes": "a larger request or answer is not bucketed nor kept as evidence",
    "max_answers": "distinct answers kept per state as evidence",
    "max_iterations": "refinement steps per training run",
    "widen_slack": "bytes a mutating region may grow by to take a near miss",
    "max_examples": "example requests remembered per transition",
    "max_example_bytes": "longer requests are not remembered as examples",
    "max_verbatim": "verbatim transitions per state (more one-offs stay in the bucket)",
    "max_verbatim_total": "verbatim transitions per machine",
    "max_verbatim_bytes": "longer leftover requests stay in the bucket",
}


# The fields of scriptgen.learn.regions.RegionOptions with their defaults, named
# here so that building the CLI does not import numpy/scipy for every command
# (a test keeps names and defaults in step). Values are converted to each
# field's type when the options are built. Why each default: regions.py's docstring.
REGION_FLAGS: dict[str, tuple[object, str]] = {  # field -> (default, help)
    "distance_threshold": (0.35, "macroclustering cut on the normalised distance, 0..1"),
    "linkage": ("average", "scipy linkage: average, complete, single or weighted"),
    "min_cluster_size": (3, "requests a cluster needs to become a transition"),
    "micro_min_count": (3, "a value recurring this often splits a cluster ..."),
    "micro_min_fraction": (0.1, "... if it is also this fraction of the cluster"),
    "micro_max_depth": (3, "nesting of microcluster splits"),
    "keep_generic": (True, "keep a split cluster's generic parent (yes/no)"),
    "min_fixed_island": (2, "shorter fixed runs between mutating ones are folded in"),
    "max_samples": (500, "distinct requests analysed per bucket"),
    "max_distance_len": (256, "bytes per request compared for distances (head and tail)"),
    "max_align_len": (4096, "bytes per request aligned (head and tail)"),
    "length_slack": (1.0, "widening of variable-width mutating regions"),
    "max_clusters": (256, "clusters per analysis"),
    "workers": (1, "threads for the distance matrix (-1: all cores)"),
    "answer_link_distance": (0.5, "pairs past the cut up to this far join if answered alike"),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="learn state machines from captures (updates the models already in DIR)",
        description="Learn one state machine per (protocol, server port) from captures. "
        "Models already in DIR are updated and refined, not replaced.",
    )
    p.add_argument("--model-dir", required=True, metavar="DIR", help="where the models are")
    p.add_argument("pcaps", nargs="+", metavar="PCAP", help="pcap or pcapng files")
    p.add_argument(
        "--port", type=int, action="append", metavar="N", help="only this server port (repeatable)"
    )
    p.add_argument("--proto", choices=("tcp", "udp"), help="only this transport")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="learn N ports in parallel")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no summary")
    p.add_argument(
        "--include-midstream",
        action="store_true",
        help="also learn connections whose start was not captured",
    )
    p.add_argument(
        "--max-turns", type=int, default=512, metavar="N", help="requests per dialog learned"
    )
    p.add_argument("--no-widen", action="store_true", help="never widen a learned length range")
    p.add_argument(
        "--no-regeneralise",
        action="store_true",
        help="analyse buckets without the examples of known transitions",
    )
    p.add_argument(
        "--no-verbatim",
        action="store_true",
        help="leave requests that formed no cluster in the bucket instead of "
        "learning each as an exact (verbatim) transition",
    )
    g = p.add_argument_group("learner bounds")
    defaults = LearnOptions()
    for name, text in LEARN_FLAGS.items():
        g.add_argument(
            _flag(name), type=int, default=getattr(defaults, name), metavar="N", help=text
        )
    r = p.add_argument_group(
        "region analysis", "see scriptgen/learn/regions.py for how the defaults were chosen"
    )
    for name, (default, text) in REGION_FLAGS.items():
        r.add_argument(_flag(name), default=None, metavar="X", help=f"{text} (default {default})")
    r.add_argument(
        "--region",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any RegionOptions field, e.g. --region min_cluster_size=1 (repeatable)",
    )
    p.set_defaults(func=run)


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "yes", "true", "on"):
        return True
    if text.lower() in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"not yes/no: {text!r}")


def build_options(args: argparse.Namespace) -> Any:
    from scriptgen.learn.trainer import TrainOptions

    if args.max_turns < 1:  # 0 would silently learn nothing from any conversation
        raise ValueError("--max-turns must be at least 1")
    learn = LearnOptions(
        **{name: getattr(args, name) for name in LEARN_FLAGS},
        widen=not args.no_widen,
        regeneralise=not args.no_regeneralise,
        verbatim=not args.no_verbatim,
    )
    from scriptgen.learn.regions import RegionOptions

    region = RegionOptions(**region_overrides(args, RegionOptions))
    return TrainOptions(
        learn=learn,
        region=region,
        include_midstream=args.include_midstream,
        max_turns=args.max_turns,
    )


def region_overrides(args: argparse.Namespace, options_class: type) -> dict[str, Any]:
    """The region options given on the command line, converted to their fields' types."""
    defaults = {f.name: f.default for f in dataclasses.fields(options_class)}
    given = [(name, getattr(args, name, None)) for name in REGION_FLAGS]
    for item in getattr(args, "region", None) or []:
        name, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--region {item!r}: expected NAME=VALUE")
        given.append((name.strip().replace("-", "_"), text.strip()))
    out: dict[str, Any] = {}
    for name, text in given:
        if text is None:
            continue
        if name not in defaults:
            raise ValueError(f"{name} is not a region analysis option of this version")
        default = defaults[name]
        if isinstance(default, bool):
            out[name] = _parse_bool(text)
        elif isinstance(default, int):
            out[name] = int(text)
        elif isinstance(default, float):
            out[name] = float(text)
        else:
            out[name] = text
    return out


class ProgressDisplay:
    """tqdm bars on stderr, one per stage; silent when stderr is not a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int | None, detail: str) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            desc = {"read": "reading", "learn": "ports", "refine": "refining"}.get(stage, stage)
            unit = {"read": "file", "learn": "port", "refine": "step"}.get(stage, "it")
            bar = self.bars[stage] = tqdm(
                total=total, desc=desc, unit=unit, file=sys.stderr, leave=False
            )
        bar.n = done
        if detail:
            bar.set_postfix_str(detail[:50], refresh=False)
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def summary_table(report: Any) -> str:
    head = (
        "port",
        "states",
        "transitions",
        "verbatim",
        "bucketed",
        "dropped",
        "used",
        "ignored",
        "steps",
    )
    rows: list[tuple[Any, ...]] = [head]
    for p in report.ports:
        name = f"{p.protocol}/{p.port}" + ("" if p.saved else " (no model)")
        rows.append(
            (
                name,
                p.states,
                p.transitions,
                p.verbatim,
                p.bucketed,
                p.dropped,
                p.used,
                p.ignored,
                p.iterations,
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines = []
    for r in rows:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from scriptgen.learn.trainer import train
    from scriptgen.model import ModelError
    from scriptgen.trace import TraceError

    for name in args.pcaps:  # unreadable files fail before any work, with one line
        path = Path(name)
        if not path.is_file():
            problem = "not a regular file" if path.exists() else "no such file"
            print(f"scriptgen: {name}: {problem}", file=sys.stderr)
            return 1
    if args.jobs < 1:
        print("scriptgen: --jobs must be at least 1", file=sys.stderr)
        return 2
    model_dir = Path(args.model_dir)
    if model_dir.exists() and not model_dir.is_dir():  # else mkdir's bare "File exists"
        print(f"scriptgen: {args.model_dir}: --model-dir is not a directory", file=sys.stderr)
        return 1
    try:
        options = build_options(args)
    except (TypeError, ValueError) as e:
        print(f"scriptgen: bad option: {e}", file=sys.stderr)
        return 2
    progress = ProgressDisplay(enabled=not args.quiet and sys.stderr.isatty())
    try:
        report = train(
            args.pcaps,
            args.model_dir,
            options,
            ports=args.port,
            protocol=args.proto,
            jobs=args.jobs,
            progress=progress,
        )
    except ModelError as e:
        progress.close()
        print(f"scriptgen: {e} (not overwritten)", file=sys.stderr)
        return 1
    except TraceError as e:
        progress.close()
        print(f"scriptgen: {_one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:
        progress.close()
        print(f"scriptgen: {e.filename or args.model_dir}: {e.strerror or e}", file=sys.stderr)
        return 1
    progress.close()
    for path, stats in report.damaged:  # even with --quiet: the models are partial
        print(f"scriptgen: {path}: warning: {_damage_line(stats)}", file=sys.stderr)
    if not args.quiet:
        print(summary_table(report))
        if not report.ports:
            print("no conversations learned (nothing on the selected ports?)")
    return 0


def _damage_line(stats: Any) -> str:
    """One line on a capture's damaged packets (``scriptgen conversations`` has details)."""
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(stats.warnings.items()))
    return f"{stats.damaged} problem(s) in the capture ({kinds}); learned from the rest"


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
