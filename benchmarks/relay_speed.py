"""Relay speed: bytes/s through the proxy's relay vs twisted.protocols.portforward.

    python benchmarks/relay_speed.py [--mb 64] [--rounds 5]

In the same run, on loopback: a data host on 127.0.0.2 (a plain Python
socket server that sends ``--mb`` MB to every connection, then closes), and
two relays in front of it on 127.0.0.1, each in its own process:

* ``portforward``: ``twisted.protocols.portforward.ProxyFactory`` (Twisted's
  own port forwarder, with its producer/consumer flow control);
* ``scriptgen``: ``twistd -n scriptgen`` with the proxy on, an empty model
  (every connection goes straight to the pool host) -- relayed bytes are also
  *recorded* to the spool as pcap (up to ``record_bytes``), as in production;
  ``--no-record`` sets ``record_bytes`` to its minimum to show the relay alone.

The client (this process) downloads through each relay in turn, ``--rounds``
times, and reports the median bytes/s; the figure to read is the ratio
(target: scriptgen ≥ 80 % of portforward). The machine's cores are shared,
so absolute numbers vary between runs.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.emulator_support import Emulator, stop_process  # noqa: E402

HOST = "127.0.0.2"

DATA_HOST = """
import socket, sys, threading
size = int(sys.argv[1])
block = bytes(range(256)) * 1024
srv = socket.create_server(("127.0.0.2", 0))
print(srv.getsockname()[1], flush=True)
def send(conn):
    with conn:
        left = size
        while left > 0:
            n = conn.send(block[: min(left, len(block))])
            left -= n
while True:
    conn, _ = srv.accept()
    threading.Thread(target=send, args=(conn,), daemon=True).start()
"""

PORTFORWARD = """
import sys
from twisted.internet import reactor
from twisted.protocols.portforward import ProxyFactory
port = reactor.listenTCP(0, ProxyFactory(sys.argv[1], int(sys.argv[2])), interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""

CONFIG = """\
[scriptgen]
model_dir = {models}
listen = 127.0.0.1
ports = tcp/{port}=0
events = {events}
reload_interval = 0
[proxy]
enabled = true
pool = {host}
expiry = 600
spool = {spool}
record_bytes = {record}
learn = false
[limits]
idle_timeout = 600
session_timeout = 3600
"""


def spawn(code: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def start_scriptgen(tmp: Path, port: int, record: int) -> tuple[Emulator, int]:
    (tmp / "models").mkdir()
    events = tmp / "events.json"
    config = CONFIG.format(
        models=tmp / "models", port=port, events=events, host=HOST, spool=tmp / "spool",
        record=record,
    )  # fmt: skip
    emu = Emulator.start(tmp, config, events)
    return emu, next(iter(emu.ports.values()))


def download(port: int, expected: int) -> float:
    """Seconds to receive everything the data host sends through one relay."""
    start = time.perf_counter()
    got = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        buf = bytearray(1 << 20)
        while True:
            n = s.recv_into(buf)
            if not n:
                break
            got += n
    elapsed = time.perf_counter() - start
    if got != expected:
        raise SystemExit(f"relay on port {port} delivered {got} of {expected} bytes")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-record", action="store_true", help="relay without recording")
    args = ap.parse_args(argv)
    size = args.mb * 1024 * 1024
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="relay-speed-") as tmp:
        try:
            host, host_port = spawn(DATA_HOST, str(size))
            procs.append(host)
            pf, pf_port = spawn(PORTFORWARD, HOST, str(host_port))
            procs.append(pf)
            record = 1024 if args.no_record else size * 2
            sg, sg_port = start_scriptgen(Path(tmp), host_port, record)
            procs.append(sg.proc)
            download(pf_port, size)  # warm up both
            download(sg_port, size)
            times: dict[str, list[float]] = {"portforward": [], "scriptgen": []}
            for _ in range(args.rounds):
                times["portforward"].append(download(pf_port, size))
                times["scriptgen"].append(download(sg_port, size))
        finally:
            for p in procs:
                stop_process(p, timeout=10)
    rate = {k: size / statistics.median(v) for k, v in times.items()}
    print(f"relay speed: {args.mb} MB per download, {args.rounds} rounds, median")
    print(f"{'relay':<14} {'MB/s':>8} {'min s':>7} {'max s':>7}")
    for k, v in times.items():
        print(f"{k:<14} {rate[k] / 1e6:>8.1f} {min(v):>7.3f} {max(v):>7.3f}")
    ratio = rate["scriptgen"] / rate["portforward"]
    mode = "relay only" if args.no_record else "relay + pcap recording"
    print(f"scriptgen / portforward = {ratio:.0%} ({mode}; target >= 80%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
