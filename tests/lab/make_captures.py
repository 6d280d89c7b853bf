"""Capture varied real client runs against real servers, one pcap per protocol.

    python -m tests.lab.make_captures --out DIR [--runs N] [--seed S] [--only ftp,redis,...]

Each protocol: start its server on ADDR, start tcpdump, play N runs drawn
with ``random.Random(seed)`` (see tests/lab/variety.py), stop tcpdump, stop
the server. A JSON-lines log next to each pcap lists the runs and their
client exit statuses.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import zlib
from pathlib import Path

from tests.lab.capture import Tcpdump, bpf_for
from tests.lab.clients import ClientResult
from tests.lab.daemon import DEFAULT_ADDR, LabError
from tests.lab.protocols import PROTOCOLS, LabProtocol
from tests.lab.variety import ClientRun, draw_runs


def protocol_seed(seed: int, name: str) -> int:
    """A per-protocol seed, so ``--only`` does not change the runs of the others."""
    return seed * 1_000_003 + zlib.crc32(name.encode())


def play_runs(
    runs: list[ClientRun],
    addr: str,
    port: int,
    pcap: Path | None = None,
    port_ranges: list[tuple[int, int]] | None = None,
    log: Path | None = None,
) -> list[ClientResult]:
    """Play ``runs`` in order against whatever listens on (addr, port) - a lab server or
    the emulator - optionally under tcpdump (``pcap``) and logging each run (``log``)."""
    results: list[ClientResult] = []
    with contextlib.ExitStack() as stack:
        if pcap is not None:
            stack.enter_context(Tcpdump(pcap, bpf_for(addr, [port], port_ranges or [])))
        fh = stack.enter_context(log.open("w")) if log is not None else None
        for i, run in enumerate(runs):
            t0 = time.monotonic()
            res = run.execute(addr, port)
            results.append(res)
            if fh is not None:
                record: dict[str, object] = {
                    "i": i,
                    "run": run.describe(),
                    "status": res.status,
                    "seconds": round(time.monotonic() - t0, 2),
                }
                if res.status != 0:
                    record["stderr"] = res.stderr[-300:]
                fh.write(json.dumps(record) + "\n")
    return results


def capture_protocol(
    proto: LabProtocol, out: Path, runs: int, seed: int, addr: str = DEFAULT_ADDR
) -> dict[str, object]:
    """Write ``out/<name>.pcap`` and ``out/<name>.runs.jsonl``; return a summary."""
    pcap = out / f"{proto.name}.pcap"
    planned = draw_runs(proto.name, runs, protocol_seed(seed, proto.name))
    with proto.make_server(addr, proto.port):
        results = play_runs(
            planned,
            addr,
            proto.port,
            pcap,
            list(proto.port_ranges),
            out / f"{proto.name}.runs.jsonl",
        )
    statuses: dict[int, int] = {}
    for res in results:
        statuses[res.status] = statuses.get(res.status, 0) + 1
    return {
        "protocol": proto.name,
        "pcap": str(pcap),
        "bytes": pcap.stat().st_size,
        "runs": runs,
        "statuses": statuses,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--addr", default=DEFAULT_ADDR)
    ap.add_argument("--only", default=",".join(PROTOCOLS), help="comma-separated protocols")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown:
        ap.error(f"unknown protocols {unknown}; known: {', '.join(PROTOCOLS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in names:
        proto = PROTOCOLS[name]
        missing = proto.missing_binaries()
        if missing:
            print(f"{name}: skipped, missing {missing}", file=sys.stderr)
            failed += 1
            continue
        t0 = time.monotonic()
        try:
            summary = capture_protocol(proto, args.out, args.runs, args.seed, args.addr)
        except LabError as exc:
            print(f"{name}: failed: {exc}", file=sys.stderr)
            failed += 1
            continue
        summary["seconds"] = round(time.monotonic() - t0, 1)
        print(json.dumps(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
