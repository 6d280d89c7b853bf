"""Dead pool hosts are remembered: a host that refused or never accepted is skipped
by allocation for a back-off period (exponential, bounded), with an event.

Unit tests drive the real emulator protocol on a fake transport and a fake
clock, with a connector that never connects (a blackholed host: the SYN is
dropped, connectTCP's own timeout fires). The integration test blackholes a
real address with an nftables drop rule and times a real client."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import error
from twisted.python.failure import Failure

from scriptgen.emulate.matching import CompiledMachine
from scriptgen.emulate.proxy import Pool
from tests.test_emulate_support import Harness, line_machine
from tests.test_proxy_unit import FakeProto, machine, make

DOUBTED = {b"331 password?\r\n": 1, b"530 no\r\n": 1}  # USER's state: answers of 2 shapes


class Blackhole:
    """A connector whose connections never complete: connectTCP's timeout fails them."""

    def __init__(self, clock: Any, accept: set[str] | None = None) -> None:
        self.clock = clock
        self.accept = accept if accept is not None else set()  # hosts that do accept
        self.tries: list[tuple[str, float]] = []

    def __call__(self, host: str, port: int, factory: Any, timeout: float) -> None:
        self.tries.append((host, self.clock.seconds()))
        if host in self.accept:
            return  # accepted: the test calls connected() itself where it matters
        self.clock.callLater(
            timeout, factory.clientConnectionFailed, None, Failure(error.TimeoutError())
        )


def _proxy(clock: Any, tmp: Path, pool: tuple[str, ...] = ("127.0.6.2",), **cfg: Any):  # type: ignore[no-untyped-def]
    """A proxy whose pool hosts never accept (connect_timeout 5 s)."""
    connect = Blackhole(clock)
    proxy, _, events, _, _ = make(
        tmp, clock, connect, pool=pool, connect_timeout=5, replay_timeout=30, doubt_samples=8,
        **cfg,
    )  # fmt: skip
    return proxy, connect, events


def _harness(tmp: Path, **cfg: Any):  # type: ignore[no-untyped-def]
    """The real emulator protocol (fake transport, fake clock) whose USER is doubted."""
    m = line_machine(7000)
    for t in m.states[0].transitions:
        t.samples = 2
    m.states[2].answers = dict(DOUBTED)
    h = Harness(m)
    proxy, connect, events = _proxy(h.clock, tmp, **cfg)
    h.factory.proxy = proxy
    return h, proxy, connect, events


def _doubted_wait(h: Harness, port: int) -> float:
    """Seconds (fake clock) until a doubted USER is answered by the emulator."""
    proto, transport = h.connect("127.0.6.5", port)
    transport.clear()
    proto.dataReceived(b"USER ann\r\n")
    waited = 0.0
    while b"331 password?" not in transport.value():
        assert waited < 60, "never answered"
        h.clock.advance(0.25)
        waited += 0.25
    h.disconnect(proto, transport)
    return waited


def test_a_blackholed_host_costs_one_connect_timeout_not_one_per_doubted_request(
    tmp_path: Path,
) -> None:
    """Before: 5 doubted requests waited 5 s each for the dead host; now the
    first one does, the host is down for host_backoff (10 s) and the next ones
    are answered at once."""
    h, proxy, connect, events = _harness(tmp_path)
    waits = [_doubted_wait(h, 4000 + i) for i in range(5)]
    assert waits == [5.0, 0.0, 0.0, 0.0, 0.0]
    assert len(connect.tries) == 1
    [down] = [f for e, f in events if e == "scriptgen.proxy.host_down"]
    assert down == {"host": "127.0.6.2", "port": 7000, "reason": "host_timeout", "failures": 1,
                    "seconds": 10.0}  # fmt: skip
    exhausted = [f for e, f in events if e == "scriptgen.proxy.failed" and "fallback" not in f]
    assert exhausted == [{"reason": "pool_exhausted", "hosts_down": 1}] * 4


def test_back_off_doubles_up_to_its_bound_and_resets_when_the_host_accepts(
    tmp_path: Path,
) -> None:
    h, proxy, connect, events = _harness(tmp_path, host_backoff=10, host_backoff_max=35)
    downs: list[float] = []
    port = 4000
    while len(downs) < 4:
        port += 1
        _doubted_wait(h, port)
        downs = [f["seconds"] for e, f in events if e == "scriptgen.proxy.host_down"]
        h.clock.advance(1)
    assert downs == [10.0, 20.0, 35.0, 35.0]  # doubled, bounded by host_backoff_max
    tries = [t for _, t in connect.tries]
    gaps = [round(b - a) for a, b in zip(tries, tries[1:], strict=False)]
    assert gaps == [
        15,
        25,
        40,
    ]  # connect_timeout + back-off + the loop's 1 s step (5+10, 5+20, 5+35)
    # Back after its back-off, the host accepts: it is up again, the count starts over.
    h.clock.advance(35)
    connect.accept.add("127.0.6.2")
    same_port = CompiledMachine.build(line_machine(7000))  # the port it was down for
    tap = proxy.attach(FakeProto(same_port, "127.0.6.6", 5000))
    assert proxy.take_over(tap, b"HELLO\r\n")
    tap.connected(type("Upstream", (), {"transport": _Sink()})())
    assert ("scriptgen.proxy.host_up", {"host": "127.0.6.2", "port": 7000}) in events
    assert proxy.pool.down == {}


class _Sink:
    def write(self, data: bytes) -> None: ...
    def registerProducer(self, *a: Any) -> None: ...  # noqa: N802
    def loseConnection(self) -> None: ...  # noqa: N802
    def abortConnection(self) -> None: ...  # noqa: N802


def test_allocation_skips_a_down_host_for_a_live_one(tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    clock = Clock()
    proxy, connect, events = _proxy(clock, tmp_path, pool=("127.0.6.2", "127.0.6.3"))
    a = proxy.attach(FakeProto(machine(), "127.0.6.5", 4000))
    assert proxy.take_over(a, b"HELLO\r\n")
    a.connect_failed(Failure(error.ConnectionRefusedError()))  # 127.0.6.2 refuses
    assert ("scriptgen.proxy.host_down", {"host": "127.0.6.2", "port": 21,
            "reason": "host_refused", "failures": 1, "seconds": 10.0}) in events  # fmt: skip
    b = proxy.attach(FakeProto(machine(), "127.0.6.6", 4000))
    assert proxy.take_over(b, b"HELLO\r\n")
    assert [host for host, _ in connect.tries] == ["127.0.6.2", "127.0.6.3"]


def test_every_host_down_means_pool_exhausted_for_unmatched_requests(tmp_path: Path) -> None:
    """An unmatched request then gets the on_unmatched policy at once (as with every
    host busy), instead of a connection closed after connect_timeout."""
    from twisted.internet.task import Clock

    clock = Clock()
    proxy, connect, events = _proxy(clock, tmp_path)
    first = FakeProto(machine(), "127.0.6.5", 4000)
    assert proxy.take_over(proxy.attach(first), b"HELLO\r\n")
    clock.advance(5)
    assert first.closed == "proxy_host_timeout"
    second = FakeProto(machine(), "127.0.6.6", 4000)
    assert not proxy.take_over(proxy.attach(second), b"HELLO\r\n")
    assert second.closed is None and len(connect.tries) == 1
    assert events[-1] == ("scriptgen.proxy.failed", {"reason": "pool_exhausted", "hosts_down": 1})


def test_back_off_off_tries_a_dead_host_every_time(tmp_path: Path) -> None:
    h, _proxy, connect, events = _harness(tmp_path, host_backoff=0)
    assert [_doubted_wait(h, 4000 + i) for i in range(3)] == [5.0, 5.0, 5.0]
    assert "scriptgen.proxy.host_down" not in [e for e, _ in events]


def test_pool_back_off_is_bounded_after_many_failures() -> None:
    pool = Pool(("h",), backoff=1.0, backoff_max=100.0)
    ftp, shell = ("tcp", 21), ("tcp", 4444)
    now = 0.0
    for _ in range(2000):  # no overflow however long a host stays dead
        down = pool.failed("h", ftp, now)
        assert down is not None
        now += down[0]
    assert down == (100.0, 2000)
    assert pool.failed("h", ftp, now - 1) is None  # still down: another connection's try
    assert pool.failed("other", ftp, now) is None  # not a pool host
    assert pool.allocate(now - 1, ftp) is None
    assert pool.allocate(now - 1, shell) == "h"  # down for one port only
    pool.release("h")
    assert pool.allocate(now, ftp) == "h"


# --- a real client, a real blackhole (nftables drop rule) ---

LISTEN, DEAD = "127.0.6.1", "127.0.6.4"


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port of 127.0.6.4 whose SYNs are dropped (nftables, own table)."""
    if shutil.which("nft") is None or os.geteuid() != 0:
        pytest.skip("nftables (nft, root) needed to blackhole an address")
    table = f"scriptgen_test_blackhole_{os.getpid()}"
    port = 7021
    rules = (
        f"table ip {table} {{\n chain out {{\n"
        "  type filter hook output priority 0; policy accept;\n"
        f"  ip daddr {DEAD} tcp dport {port} drop\n }}\n}}\n"
    )
    done = subprocess.run(["nft", "-f", "-"], input=rules, text=True, capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"nft refused the rule: {done.stderr.strip()}")
    try:
        yield port
    finally:
        subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True)


@pytest.mark.integration
def test_doubted_requests_to_a_blackholed_host_with_a_real_client(
    tmp_path: Path, blackhole: int
) -> None:
    """twistd with the pool host blackholed: 4 doubted requests, each on its own
    connection, waited connect_timeout (0.5 s) each before; now only the first."""
    from scriptgen.model import save_machine
    from tests.emulator_support import TWISTD
    from tests.proxy_support import start_emulator

    if TWISTD is None:
        pytest.skip("twistd not installed")
    m = line_machine(blackhole)
    for t in m.states[0].transitions:
        t.samples = 2
    m.states[2].answers = dict(DOUBTED)
    models = tmp_path / "models"
    save_machine(m, models)
    emu = start_emulator(
        tmp_path, f"tcp/{blackhole}=0", pool=DEAD, listen=LISTEN, models=models,
        connect_timeout=0.5, doubt_samples=8,
    )  # fmt: skip
    try:
        [port] = emu.ports.values()
        waits = []
        for _ in range(4):
            with socket.create_connection((LISTEN, port), timeout=5) as sock:
                assert sock.recv(100) == b"220 hello\r\n"
                started = time.monotonic()
                sock.sendall(b"USER ann\r\n")
                assert sock.recv(100).startswith((b"331", b"530"))  # the emulator's answer
                waits.append(time.monotonic() - started)
        downs = emu.wait_count("scriptgen.proxy.host_down", 1, timeout=5)
    finally:
        emu.stop(timeout=10)
    assert downs[0]["host"] == DEAD and downs[0]["reason"] == "host_timeout"
    assert waits[0] >= 0.45  # the first one found the host dead
    assert sum(waits[1:]) < 0.45, waits  # the others did not wait for it (was 3 x 0.5 s)


class _Refusing:
    """A connector whose pool host refuses ``closed`` ports and accepts the others."""

    def __init__(self, closed: set[int]) -> None:
        self.closed = closed
        self.tries: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int, factory: Any, timeout: float) -> None:
        self.tries.append((host, port))
        if port in self.closed:
            factory.clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))


def test_a_port_the_host_does_not_serve_does_not_take_the_host_down_for_others(
    tmp_path: Path,
) -> None:
    """A refusal (or a drop) on one port says that port is closed on the host, not
    that the host is gone: a client (or an attacker, on purpose) that reaches a
    served port the pool host does not serve must not stop the proxy for every
    other port for up to host_backoff_max."""
    from twisted.internet.task import Clock

    clock = Clock()
    connect = _Refusing({4444})
    proxy, _, events, _, _ = make(tmp_path, clock, connect, pool=("127.0.6.2",))
    shell = CompiledMachine.build(line_machine(4444))
    bad = proxy.attach(FakeProto(shell, "127.0.6.7", 5000))
    assert proxy.take_over(bad, b"HELLO\r\n")
    assert bad.proto.closed == "proxy_host_refused"
    # Another source, on a port the host serves: allocated, connected.
    good = proxy.attach(FakeProto(machine(), "127.0.6.8", 5001))
    assert proxy.take_over(good, b"HELLO\r\n")
    assert connect.tries == [("127.0.6.2", 4444), ("127.0.6.2", 21)]
    # The closed port itself is backed off (a repeat costs nothing).
    proxy.release(good.source, "test")
    again = proxy.attach(FakeProto(shell, "127.0.6.9", 5002))
    assert not proxy.take_over(again, b"HELLO\r\n")
    assert connect.tries[-1] == ("127.0.6.2", 21)
    assert [f["port"] for e, f in events if e == "scriptgen.proxy.host_down"] == [4444]
