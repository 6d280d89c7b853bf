"""Training speed and memory: `python benchmarks/train_speed.py` prints one table.

Cases: 10/100/1000 synthetic conversations with request sizes 100 B..4 KB,
then the target case, 100 SMB/DCE-RPC conversations (the port-139
conversations of the committed smb139 and lsarpc139 captures: 100 distinct
ones; replicated only if fewer are there, synthetic if absent), which should
learn in under 5 s on a 2-core machine. Those lab dialogs are short (~13
requests), so the target is also measured on real conversations of the
target's length: the committed tests/data/captures/lsass139.pcap (100
LSASS-like rpcclient runs, ~31 requests each; benchmarks/lsass_like.py
--record). ``--capture PCAP`` adds a row for any capture (its first --limit
conversations). Each case runs in a fresh process so its peak
RSS is its own; "peak MB" is that process's maximum resident set.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scriptgen.learn.dialog import group_dialogs  # noqa: E402
from scriptgen.learn.trainer import TrainOptions, learn_machine  # noqa: E402
from scriptgen.model import Machine  # noqa: E402
from scriptgen.trace.types import Conversation, Direction, Endpoint, Message, Outcome  # noqa: E402

SMB_CAPTURES = [REPO / "tests" / "data" / "captures" / n for n in ("smb139.pcap", "lsarpc139.pcap")]
# 100 real LSASS-like runs (rpcclient over \\pipe\\lsarpc on SMB1, ~31 requests each):
# the target measured on real conversations of the target's length.
LSASS_CAPTURE = REPO / "tests" / "data" / "captures" / "lsass139.pcap"


def synthetic(n: int, size: int, turns: int = 5, seed: int = 1) -> list[Conversation]:
    """Binary-protocol-like dialogs: per turn a fixed header (command), ids and a varying payload."""
    rng = random.Random(seed)
    convs = []
    for i in range(n):
        msgs = []
        t = 1000.0 + i
        for k in range(turns):
            header = b"\xfeSMB" + bytes([k, 0, 0, 0]) + b"\x18\x07\xc8\x00"
            ids = rng.randbytes(4)
            noise = rng.randbytes(size // 10)  # ~10 % of each request varies freely
            fill = max(0, size - len(header) - len(ids) - len(noise))
            body = ((b"command-%d " % k) * (fill // 11 + 1))[:fill]
            req = (header + ids + body + noise)[:size]
            msgs.append(Message(Direction.CLIENT, req, t + k * 0.01))
            msgs.append(
                Message(Direction.SERVER, header + ids + b"answer %d" % k, t + k * 0.01 + 0.005)
            )
        convs.append(
            Conversation(
                "tcp",
                Endpoint("10.0.0.1", 20000 + i),
                Endpoint("10.0.0.2", 445),
                t,
                t + 1,
                msgs,
                Outcome.CLOSED,
                Direction.CLIENT,
                source="synthetic",
            )
        )
    return convs


def replicated_capture(n: int) -> tuple[list[Conversation], str]:
    try:
        from scriptgen.trace import read_conversations

        # distinct real conversations first: copies of one dialog are easier (deduplicated)
        base = [
            c for path in SMB_CAPTURES for c in read_conversations(path) if c.server.port == 139
        ]
    except Exception:  # noqa: BLE001 - benchmark falls back to synthetic data
        base = []
    if not base:
        return synthetic(n, 300, turns=26), "synthetic 26-turn"
    out = []
    for i in range(n):
        c = base[i % len(base)]
        out.append(
            replace(
                c,
                client=Endpoint(c.client.ip, 1024 + i),
                start=c.start + 10_000 * (i // len(base)),
                messages=list(c.messages),
            )
        )
    copies = -(-n // len(base))
    return out, "smb139+lsarpc139" + (f" x{copies}" if copies > 1 else "")


def capture_conversations(path: Path, limit: int) -> list[Conversation]:
    """The first ``limit`` conversations (by start) of a capture that carry a request."""
    from scriptgen.trace import read_conversations

    convs = [c for c in read_conversations(path) if c.requests]
    return sorted(convs, key=lambda c: c.start)[:limit]


def describe(convs: list[Conversation]) -> tuple[str, int]:
    """(mean requests per conversation, mean request bytes) as table cells."""
    n_req = sum(len(c.requests) for c in convs)
    size = sum(len(r) for c in convs for r in c.requests) // max(1, n_req)
    return f"{n_req / max(1, len(convs)):.1f}", size


def analysis():
    try:
        from scriptgen.learn.regions import RegionOptions

        return None, TrainOptions(region=RegionOptions()), "regions.analyse"
    except ImportError:
        from tests.test_learn_standin import make_standin
        from tests.test_learn_trainer import standin_options

        return make_standin(), standin_options(), "test stand-in (regions.py absent)"


def run_case(convs: list[Conversation], conn) -> None:
    analyser, options, _ = analysis()
    groups = group_dialogs(convs)
    del convs
    t0 = time.perf_counter()
    states = transitions = bucketed = 0
    for key, dialogs in groups.items():
        m = Machine(*key)
        learn_machine(m, dialogs, options, analyser)
        c = m.counts()
        states += c["states"]
        transitions += c["transitions"]
        bucketed += c["bucketed"]
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    conn.send((elapsed, peak, states, transitions, bucketed))


def measure(convs: list[Conversation]) -> tuple:
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=run_case, args=(convs, child))
    p.start()
    result = parent.recv()
    p.join()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 1000-conversation cases")
    ap.add_argument(
        "--capture",
        type=Path,
        action="append",
        default=[],
        metavar="PCAP",
        help="also learn the first --limit conversations of PCAP (repeatable)",
    )
    ap.add_argument("--limit", type=int, default=100, help="conversations per --capture")
    args = ap.parse_args()
    _, _, which = analysis()
    print(f"analysis: {which}; each case in a fresh process")
    rows = [
        (
            "case",
            "convs",
            "turns",
            "req bytes",
            "seconds",
            "peak MB",
            "states",
            "trans.",
            "bucketed",
        )
    ]
    counts = [10, 100] if args.quick else [10, 100, 1000]
    for n in counts:
        for size in (100, 1000, 4000):
            convs = synthetic(n, size)
            rows.append(("synthetic", n, 5, size, *fmt(measure(convs))))
            print_row(rows[-1], flush=True)
    convs, label = replicated_capture(100)
    target = measure(convs)
    rows.append((f"target: {label}", len(convs), *describe(convs), *fmt(target)))
    print_row(rows[-1], flush=True)
    real_long = None
    captures = ([LSASS_CAPTURE] if LSASS_CAPTURE.exists() else []) + list(args.capture)
    for path in captures:
        convs = capture_conversations(path, args.limit)
        result = measure(convs)
        if path == LSASS_CAPTURE:
            real_long = (convs, result)
        rows.append((f"capture: {path.name}", len(convs), *describe(convs), *fmt(result)))
        print_row(rows[-1], flush=True)
    deep = synthetic(100, 300, turns=26)
    rows.append(("synthetic 26-turn SMB-like", 100, 26, 300, *fmt(measure(deep))))
    print_row(rows[-1], flush=True)
    print()
    print_table(rows)
    verdict = "OK" if target[0] < 5.0 else "OVER"
    print(
        f"\ntarget (100 SMB/DCE-RPC conversations) learned in {target[0]:.2f} s: {verdict} (goal < 5 s)"
    )
    if real_long is not None:
        convs, result = real_long
        verdict = "OK" if result[0] < 5.0 else "OVER"
        print(
            f"target on real long dialogs ({len(convs)} LSASS-like conversations, "
            f"{describe(convs)[0]} requests each) learned in {result[0]:.2f} s, "
            f"peak {result[1]:.0f} MB: {verdict} (goal < 5 s)"
        )
    return 0


def fmt(result: tuple) -> tuple:
    elapsed, peak, states, transitions, bucketed = result
    return (f"{elapsed:.2f}", f"{peak:.0f}", states, transitions, bucketed)


def print_row(row: tuple, flush: bool = False) -> None:
    print("  ".join(str(c) for c in row), file=sys.stderr, flush=flush)


def print_table(rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print(
            "  ".join(
                str(c).ljust(w) if i == 0 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )


if __name__ == "__main__":
    sys.exit(main())
