"""How fast is the trace stage, compared with tshark, and is its memory flat?

    python benchmarks/trace_speed.py [--packets N] [--connections C] [--keep DIR]

Writes a synthetic Ethernet/IPv4 pcap of N packets (default 1,000,000):
C TCP connections interleaved (handshake, request/response payloads, FIN)
plus about 10% UDP datagrams. Then, each in its own child process so that
peak RSS is that run's alone, measures at two sizes (N/4 and N):

  decode   iter_records + iter_segments (this package's reader and decoder)
  pipeline scriptgen.trace.read_conversations (skipped if not importable)
  tshark   tshark -n -r F -Y "tcp.len>0" -T fields -e tcp.stream -e tcp.payload
  tshark0  tshark -n -r F -T fields -e tcp.stream  (tshark's floor: dissect, print little)

tshark row: extracting every TCP payload with its stream index is the
cheapest tshark run that yields the same information as the decode row
(per-stream ``-z follow,tcp,raw,N`` needs one pass per stream, which is
hopeless for thousands of streams). Its output goes to /dev/null.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ capture


def _frame(src: bytes, dst: bytes, proto: int, l4: bytes) -> bytes:
    """Ethernet + IPv4 header (checksum left 0: nobody here verifies it)."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, src, dst)
    return b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\x08\x00" + ip + l4


def _tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 65535, 0, 0) + payload


def write_capture(path: Path, packets: int, connections: int, seed: int = 1) -> int:
    """Write about ``packets`` packets; return how many were written."""
    rng = random.Random(seed)
    blobs = [bytes(rng.getrandbits(8) for _ in range(1460)) for _ in range(8)]
    rec = struct.Struct("<IIII")
    written = 0
    ts = 1_700_000_000.0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        out: list[bytes] = []

        def emit(frame: bytes) -> None:
            nonlocal written, ts
            ts += 0.00001
            sec = int(ts)
            out.append(rec.pack(sec, int((ts - sec) * 1e6), len(frame), len(frame)))
            out.append(frame)
            written += 1
            if len(out) > 20000:
                f.write(b"".join(out))
                out.clear()

        conn_id = 0
        live: list[list] = []  # [client ip, sport, cseq, sseq, exchanges left, phase]
        while written < packets:
            while len(live) < connections:
                conn_id += 1
                cip = struct.pack("!I", 0x0A000000 + (conn_id % 60000) + 1)
                live.append([cip, 1024 + conn_id % 60000, rng.getrandbits(32), 0, 0, 0])
                live[-1][4] = rng.randint(1, 12)
            if rng.random() < 0.1:  # a UDP datagram
                payload = blobs[0][: rng.randint(20, 500)]
                udp = struct.pack("!HHHH", 5353, 53, 8 + len(payload), 0) + payload
                emit(_frame(b"\x0a\x01\x00\x01", b"\x0a\x02\x00\x35", 17, udp + b""))
                continue
            i = rng.randrange(len(live))
            c = live[i]
            cip, sport, cseq, sseq, left, phase = c
            sip, dport = b"\xc0\xa8\x00\x01", 80
            if phase == 0:
                emit(_frame(cip, sip, 6, _tcp(sport, dport, cseq, 0, 0x02, b"")))
                c[3] = sseq = rng.getrandbits(32)
                emit(_frame(sip, cip, 6, _tcp(dport, sport, sseq, cseq + 1, 0x12, b"")))
                emit(_frame(cip, sip, 6, _tcp(sport, dport, cseq + 1, sseq + 1, 0x10, b"")))
                c[2], c[3], c[5] = cseq + 1, sseq + 1, 1
            elif left > 0:
                req = blobs[left % 8][: rng.randint(40, 600)]
                emit(_frame(cip, sip, 6, _tcp(sport, dport, cseq, sseq, 0x18, req)))
                cseq = (cseq + len(req)) & 0xFFFFFFFF
                for _ in range(rng.randint(1, 3)):
                    resp = blobs[(left + 3) % 8][: rng.randint(100, 1460)]
                    emit(_frame(sip, cip, 6, _tcp(dport, sport, sseq, cseq, 0x18, resp)))
                    sseq = (sseq + len(resp)) & 0xFFFFFFFF
                emit(_frame(cip, sip, 6, _tcp(sport, dport, cseq, sseq, 0x10, b"")))
                c[2], c[3], c[4] = cseq, sseq, left - 1
            else:
                emit(_frame(cip, sip, 6, _tcp(sport, dport, cseq, sseq, 0x11, b"")))
                emit(_frame(sip, cip, 6, _tcp(dport, sport, sseq, cseq + 1, 0x11, b"")))
                emit(_frame(cip, sip, 6, _tcp(sport, dport, cseq + 1, sseq + 1, 0x10, b"")))
                live[i] = live[-1]
                live.pop()
        f.write(b"".join(out))
    return written


# ------------------------------------------------------------------ children


def child(mode: str, path: str) -> None:
    """Run one measurement in this (fresh) process; print 'wall cpu rss_kib count'.

    CPU seconds (user + system) are printed too because the wall time of a
    run on a shared machine says as much about the neighbours as about us.
    """
    sys.path.insert(0, str(ROOT))
    start = time.perf_counter()
    count = 0
    if mode == "decode":
        from scriptgen.trace.decode import iter_segments
        from scriptgen.trace.errors import TraceStats
        from scriptgen.trace.pcapfile import iter_records

        stats = TraceStats()
        for _seg in iter_segments(iter_records(path, stats), stats):
            count += 1
    elif mode == "pipeline":
        from scriptgen.trace import read_conversations

        for _conv in read_conversations(path):
            count += 1
    elif mode.startswith("tshark"):
        cmd = ["tshark", "-n", "-r", path, "-T", "fields", "-e", "tcp.stream"]
        if mode == "tshark":
            cmd += ["-Y", "tcp.len>0", "-e", "tcp.payload"]
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    else:
        raise SystemExit(f"unknown mode {mode}")
    elapsed = time.perf_counter() - start
    who = resource.RUSAGE_CHILDREN if mode.startswith("tshark") else resource.RUSAGE_SELF
    use = resource.getrusage(who)
    print(f"{elapsed:.4f} {use.ru_utime + use.ru_stime:.4f} {use.ru_maxrss} {count}")


def measure(mode: str, path: Path) -> tuple[float, float, int, int] | None:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        print(f"  [{mode}] failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    secs, cpu, rss, count = proc.stdout.split()
    return float(secs), float(cpu), int(rss), int(count)


def pipeline_available() -> bool:
    try:
        from scriptgen.trace import read_conversations  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--connections", type=int, default=2000, help="connections open at once")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "FILE"), help=argparse.SUPPRESS)
    ap.add_argument("--keep", help="write the captures here and keep them")
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0

    sys.path.insert(0, str(ROOT))
    modes = ["decode"]
    if pipeline_available():
        modes.append("pipeline")
    else:
        print("read_conversations not importable: pipeline row skipped")
    if shutil.which("tshark"):
        modes += ["tshark", "tshark0"]
    else:
        print("tshark not found: tshark row skipped")

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="trace_speed_"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        rows = []
        for n in (args.packets // 4, args.packets):
            path = tmp / f"bench_{n}.pcap"
            t0 = time.perf_counter()
            written = write_capture(path, n, args.connections)
            size = path.stat().st_size
            print(
                f"wrote {path.name}: {written} packets, {size / 1e6:.1f} MB "
                f"in {time.perf_counter() - t0:.1f}s",
                flush=True,
            )
            for mode in modes:
                res = measure(mode, path)
                if res is not None:
                    rows.append((mode, written, size, *res))
                    print(
                        f"  {mode:8s} wall {res[0]:7.2f}s cpu {res[1]:7.2f}s "
                        f"rss {res[2] / 1024:6.1f} MiB",
                        flush=True,
                    )
            if not args.keep:
                path.unlink()
        print_table(rows)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def print_table(rows: list[tuple[str, int, int, float, float, int, int]]) -> None:
    tshark = {pk: (secs, cpu) for mode, pk, _s, secs, cpu, _r, _c in rows if mode == "tshark"}
    print()
    header = (
        f"{'what':9s} {'packets':>9s} {'MB':>7s} {'wall s':>7s} {'cpu s':>7s} "
        f"{'pkt/s':>9s} {'MB/s':>6s} {'peak RSS':>9s} {'items':>8s} {'vs tshark':>15s}"
    )
    print(header)
    print("-" * len(header))
    for mode, pk, size, secs, cpu, rss, count in rows:
        ratio = "-"
        if pk in tshark:
            ratio = f"{tshark[pk][0] / secs:5.1f}x /{tshark[pk][1] / cpu:5.1f}x"
        items = "-" if mode.startswith("tshark") else str(count)
        print(
            f"{mode:9s} {pk:9d} {size / 1e6:7.1f} {secs:7.2f} {cpu:7.2f} {pk / cpu:9.0f} "
            f"{size / 1e6 / cpu:6.1f} {rss / 1024:7.1f}Mi {items:>8s} {ratio:>15s}"
        )
    print(
        "pkt/s and MB/s per CPU second; vs tshark = tshark's wall / this wall, "
        "then tshark's CPU / this CPU (>1: faster than tshark)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
