"""Emulator speed: one command, one table.

    python benchmarks/emulator_speed.py [--seconds 2] [--rounds 3] [--clients 1,100,1000] [--hostile]

1. Throughput and latency: one emulator process (``twistd -n scriptgen``,
   event log on) and one plain Twisted echo server, driven in the same run by
   the same closed-loop asyncio load generator (each client sends a request,
   waits for the whole answer, repeats) with 1, 100 and 1000 concurrent
   clients. The emulator serves a two-state line machine (``PING\\r\\n`` ->
   ``+PONG\\r\\n``), so both servers do one read and one write per request;
   the difference is the emulator's matching, state walk and event logging.
2. Matching cost: microseconds per request for a state with 10 and 1000
   transitions, through the emulator's per-state index and through the
   model's linear ``State.best_transition``, for anchored patterns (a fixed
   region at a constant offset) and for floating ones (no such region).
3. ``--hostile``: the full-size bad-input checks the tests run scaled down: a
   100 MB request stream, 5000 idle connections from one source, while
   another source is being answered; reports the emulator's memory.

Servers and the load generator share the machine's cores, so absolute
numbers say little; the ratio in the same run is the figure to read.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scriptgen.emulate.dialog import Dialog  # noqa: E402
from scriptgen.emulate.matching import CompiledMachine  # noqa: E402
from scriptgen.model import Machine, Pattern, Region, Transition, save_machine  # noqa: E402
from tests.emulator_support import Emulator, spawn_twistd, stop_process  # noqa: E402

REQUEST = b"PING\r\n"
ANSWER = b"+PONG\r\n"

ECHO_SERVER = """
import sys
from twisted.internet import protocol, reactor
class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)
factory = protocol.Factory.forProtocol(Echo)
factory.noisy = False
port = reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=1024)
print(port.getHost().port, flush=True)
reactor.run()
"""

CONFIG = """\
[scriptgen]
model_dir = {models}
ports = tcp/7000=0
events = {events}
reload_interval = 0
[limits]
max_connections = 20000
max_connections_per_source = 20000
idle_timeout = 600
max_buffer_bytes = 65536
"""


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    want = min(want, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def ping_machine() -> Machine:
    m = Machine("tcp", 7000)
    pong = m.new_state()
    pong.answer = ANSWER
    for state in (m.states[0], pong):
        state.transitions.append(Transition(Pattern.literal(REQUEST), pong.id))
    return m


# --- servers ---


def start_echo() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    return proc, port


def start_emulator(tmp: Path, events: bool = True) -> tuple[Emulator, int]:
    """The emulator serving ``ping_machine`` and its port; without an event log
    (``events=False``) the port is read from the twistd log."""
    models = tmp / "models"
    save_machine(ping_machine(), models)
    event_path = tmp / "events.json"
    config = CONFIG.format(models=models, events=event_path if events else "")
    if events:
        emu = Emulator.start(tmp, config, event_path)
        return emu, int(emu.ports["tcp/7000=0"])
    (tmp / "scriptgen.ini").write_text(config)
    emu = Emulator(spawn_twistd(tmp, tmp / "scriptgen.ini"), tmp, event_path)
    return emu, _port_from_log(emu)


def _port_from_log(emu: Emulator) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in emu.log().splitlines():
            if "scriptgen: serving" in line:
                return int(line.rsplit(":", 1)[1])
        time.sleep(0.05)
    emu.stop(kill=True)
    raise SystemExit(f"emulator did not start; {emu.tail()}")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- closed-loop load generator ---


async def _client(
    port: int, reply_len: int, start: asyncio.Event, stop_at: list[float], lat: list[float]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await start.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            writer.write(REQUEST)
            await reader.readexactly(reply_len)
            lat.append(time.perf_counter() - t0)
    finally:
        writer.close()


async def _load(
    port: int, reply_len: int, clients: int, seconds: float
) -> tuple[float, list[float]]:
    start = asyncio.Event()
    stop_at = [0.0]
    lat: list[float] = []
    tasks = []
    for i in range(clients):  # connect in batches: no SYN storm against the backlog
        tasks.append(asyncio.create_task(_client(port, reply_len, start, stop_at, lat)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    start.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    return len(lat) / elapsed, lat


def load(port: int, reply_len: int, clients: int, seconds: float) -> tuple[float, list[float]]:
    return asyncio.run(_load(port, reply_len, clients, seconds))


def summary(lat: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [0.0] * 99
    return q[49] * 1e3, q[94] * 1e3, q[98] * 1e3


# --- matching cost ---


def anchored(n: int) -> Machine:
    m = Machine("tcp", 1)
    target = m.new_state()
    for i in range(n):
        p = Pattern((Region(b"CMD%05d " % i), Region.mutating(0, 16), Region(b"\r\n")))
        m.states[0].transitions.append(Transition(p, target.id))
    return m


def floating(n: int) -> Machine:
    m = Machine("tcp", 1)
    target = m.new_state()
    for i in range(n):
        p = Pattern((Region.mutating(1, 4), Region(b"CMD%05d " % i), Region(b"\r\n")))
        m.states[0].transitions.append(Transition(p, target.id))
    return m


def matching_cost(build, n: int, repeat: int = 2000) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    """µs per request: through the index with a cold decision cache, with a warm
    one (the same request again), and through the linear best_transition."""
    machine = build(n)
    compiled = CompiledMachine.build(machine)
    if build is anchored:
        requests = [b"CMD%05d x%07d\r\n" % (i * 7919 % n, i) for i in range(repeat)]
    else:
        requests = [b"ab" + b"CMD%05d \r\n" % (i * 7919 % n) for i in range(repeat)]

    def run(reqs: list[bytes], cold: bool) -> float:
        t0 = time.perf_counter()
        for req in reqs:
            if cold:
                compiled.decisions.clear()
            steps = Dialog(compiled, 65536).feed(req)
            assert steps and steps[0].request == req
        return (time.perf_counter() - t0) / len(reqs) * 1e6

    cold = run(requests, cold=True)
    warm = run([requests[0]] * repeat, cold=False)
    reps = max(50, repeat // max(1, n // 10))
    t0 = time.perf_counter()
    for req in requests[:reps]:
        assert machine.states[0].best_transition(req) is not None
    linear = (time.perf_counter() - t0) / reps * 1e6
    return cold, warm, linear


# --- hostile, full size ---


def hostile(port: int, pid: int) -> list[str]:
    lines = []
    # 100 MB stream into one connection
    s = socket.create_connection(("127.0.0.1", port))
    chunk = b"X" * 65536
    sent = 0
    t0 = time.perf_counter()
    try:
        while sent < 100 * 1024 * 1024:
            s.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.close()
    lines.append(
        f"100 MB stream: server closed after {sent / 1e6:.1f} MB sent in "
        f"{time.perf_counter() - t0:.2f} s; emulator RSS {rss_mib(pid):.0f} MiB"
    )
    # 5000 idle connections from 127.0.0.1, while 127.0.0.2 is served
    idle = []
    for _ in range(5000):
        try:
            c = socket.socket()
            c.bind(("127.0.0.1", 0))
            c.connect(("127.0.0.1", port))
            idle.append(c)
        except OSError as e:
            lines.append(f"idle connections: stopped at {len(idle)}: {e}")
            break
    other = socket.socket()
    other.bind(("127.0.0.2", 0))
    other.settimeout(5)
    t0 = time.perf_counter()
    other.connect(("127.0.0.1", port))
    other.sendall(REQUEST)
    answer = other.recv(100)
    lines.append(
        f"{len(idle)} idle connections from one source: another source answered {answer!r} in "
        f"{(time.perf_counter() - t0) * 1e3:.1f} ms; emulator RSS {rss_mib(pid):.0f} MiB"
    )
    other.close()
    for c in idle:
        c.close()
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=2.0, help="measured seconds per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell")
    ap.add_argument("--clients", default="1,100,1000", help="concurrent clients per cell")
    ap.add_argument(
        "--hostile", action="store_true", help="also run the full-size bad-input checks"
    )
    ap.add_argument(
        "--no-events", action="store_true", help="run the emulator without an event log"
    )
    args = ap.parse_args()
    nofile = raise_nofile()
    counts = [int(c) for c in args.clients.split(",")]
    if max(counts) * 2 + 100 > nofile:
        raise SystemExit(f"RLIMIT_NOFILE is {nofile}: too low for {max(counts)} clients")

    with tempfile.TemporaryDirectory(prefix="sg-bench-") as tmp:
        echo, echo_port = start_echo()
        emu, emu_port = start_emulator(Path(tmp), events=not args.no_events)
        try:
            print("| clients | server | requests/s | p50 ms | p95 ms | p99 ms | vs echo |")
            print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
            for n in counts:
                # Alternate short rounds so background load hits both servers alike;
                # report the median rate and the ratio of the medians.
                rates: dict[str, list[float]] = {"echo": [], "emulator": []}
                lats: dict[str, list[float]] = {"echo": [], "emulator": []}
                for _ in range(args.rounds):
                    for name, port, reply in (
                        ("echo", echo_port, len(REQUEST)),
                        ("emulator", emu_port, len(ANSWER)),
                    ):
                        rate, lat = load(port, reply, n, args.seconds)
                        rates[name].append(rate)
                        lats[name].extend(lat)
                echo_rate = statistics.median(rates["echo"])
                for name in ("echo", "emulator"):
                    rate = statistics.median(rates[name])
                    p50, p95, p99 = summary(lats[name])
                    ratio = f"{rate / echo_rate:.0%}" if name == "emulator" else ""
                    print(
                        f"| {n} | {name} | {rate:,.0f} | {p50:.2f} | {p95:.2f} | {p99:.2f} | {ratio} |"
                    )
            print()
            if args.hostile:
                for line in hostile(emu_port, emu.proc.pid):
                    print(line)
                print()
        finally:
            emu.stop()
            stop_process(echo)
        if not args.no_events:
            written = dropped = 0
            for e in emu.read_events():
                written += 1
                if e["eventid"] == "scriptgen.log.dropped":
                    dropped += e["count"]
            print(f"event log: {written:,} events written, {dropped:,} dropped (queue full)")
            print()

    print(
        "| transitions at the state | patterns | emulator µs/request (cold cache) "
        "| emulator µs/request (repeated request) | linear best_transition µs/request |"
    )
    print("| ---: | --- | ---: | ---: | ---: |")
    for build in (anchored, floating):
        for n in (10, 1000):
            cold, warm, linear = matching_cost(build, n)
            print(f"| {n} | {build.__name__} | {cold:.1f} | {warm:.1f} | {linear:.1f} |")


if __name__ == "__main__":
    main()
