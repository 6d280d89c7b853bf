"""The proxy with fakes (no sockets): where it connects, its bounds, expiry.

The integration tests (test_proxy_redis, test_proxy_ftp, test_proxy_failures)
drive real sockets; these check the rules that must hold whatever a client
sends: only pool hosts, on the learned port; bounded transcripts and relayed
connections; release after expiry hands the recording to the learner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.task import Clock

from scriptgen.emulate.config import ProxyConfig
from scriptgen.emulate.eventlog import Endpoint
from scriptgen.emulate.matching import CompiledMachine
from scriptgen.emulate.proxy import Proxy
from scriptgen.emulate.recorder import Spool
from tests.test_emulate_support import line_machine


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def pauseProducing(self) -> None: ...  # noqa: N802
    def resumeProducing(self) -> None: ...  # noqa: N802
    def registerProducer(self, *a: Any) -> None: ...  # noqa: N802
    def loseWriteConnection(self) -> None: ...  # noqa: N802

    def loseConnection(self) -> None:  # noqa: N802
        self.closed = True

    abortConnection = loseConnection  # noqa: N815


class FakeDialog:
    buffer = b""


class FakeProto:
    """What the proxy uses of EmulatorProtocol."""

    def __init__(self, machine: CompiledMachine, src: str, port: int) -> None:
        self.machine = machine
        self.where = Endpoint("tcp", src, port, "127.0.0.1", 2121, f"s{port}")
        self.transport = FakeTransport()
        self.dialog = FakeDialog()
        self.last_data = 0.0
        self.closed: str | None = None

    def hand_over(self) -> bytes:
        return b""

    def _close(self, reason: str, abort: bool = False) -> None:
        self.closed = reason


def make(
    tmp: Path, clock: Any = None, connect: Any = None, **cfg: Any
) -> tuple[Proxy, list, list, list, Any]:
    """A proxy on fakes; ``connect`` (default: note the host and port) and ``clock``
    (default: a new Clock) can be the caller's."""
    connects: list[tuple[str, int]] = []
    events: list[tuple[str, dict]] = []
    learned: list = []
    clock = Clock() if clock is None else clock
    config = ProxyConfig(enabled=True, spool=tmp, **{"pool": ("127.0.0.9",), **cfg})

    def noted(host: str, port: int, factory: Any, timeout: float) -> None:
        connects.append((host, port))

    proxy = Proxy(
        config,
        lambda eid, where=None, **f: events.append((eid, f)),
        clock,
        noted if connect is None else connect,
        Spool(tmp),
        learned.extend,
    )
    return proxy, connects, events, learned, clock


def machine() -> CompiledMachine:
    return CompiledMachine.build(line_machine(21))  # learned port 21, served elsewhere


def test_connects_only_to_pool_hosts_on_the_learned_port(tmp_path: Path) -> None:
    proxy, connects, events, _, _ = make(tmp_path)
    proto = FakeProto(machine(), "127.0.0.5", 4000)
    tap = proxy.attach(proto)
    tap.emulated(b"", b"220 hello\r\n")
    hostile = b"CONNECT 10.1.2.3:80 HTTP/1.1\r\nHost: 8.8.8.8:53\r\n\r\n"
    assert proxy.take_over(tap, hostile)
    tap.from_client(b"PORT 10,1,2,3,0,80\r\n")
    second = proxy.attach(FakeProto(machine(), "127.0.0.5", 4001))  # same source: its host
    assert second.proxied
    assert connects == [("127.0.0.9", 21), ("127.0.0.9", 21)]
    assert [e for e, _ in events][:1] == ["scriptgen.proxy.allocated"]


def test_transcript_bound_per_source(tmp_path: Path) -> None:
    proxy, connects, events, _, _ = make(tmp_path, source_buffer_bytes=50)
    tap = proxy.attach(FakeProto(machine(), "127.0.0.5", 4000))
    for _ in range(10):
        tap.emulated(b"PING\r\n", b"+PONG\r\n")
    assert tap.overflow and tap.turns == [] and proxy.buffered == 0
    assert not proxy.take_over(tap, b"HELLO\r\n")  # the emulator's own policy applies
    assert ("scriptgen.proxy.failed", {"reason": "buffer_overflow"}) in events


def test_relayed_connection_bound_per_source(tmp_path: Path) -> None:
    proxy, connects, events, _, _ = make(tmp_path, max_relayed_per_source=1)
    first = FakeProto(machine(), "127.0.0.5", 4000)
    assert proxy.take_over(proxy.attach(first), b"HELLO\r\n")
    second = FakeProto(machine(), "127.0.0.5", 4001)
    proxy.attach(second)
    assert second.closed == "proxy_over_limit" and len(connects) == 1


def test_pool_exhausted_then_released_after_expiry(tmp_path: Path) -> None:
    proxy, connects, events, learned, clock = make(tmp_path, expiry=10)
    a = proxy.attach(FakeProto(machine(), "127.0.0.5", 4000))
    assert proxy.take_over(a, b"HELLO\r\n")
    b = proxy.attach(FakeProto(machine(), "127.0.0.6", 4000))
    assert not proxy.take_over(b, b"HELLO\r\n")  # one host, taken
    clock.advance(5)
    a.from_client(b"more\r\n")  # activity pushes the expiry back
    clock.advance(9)
    assert proxy.pool.free == []
    clock.advance(2)
    assert proxy.pool.free == ["127.0.0.9"]
    released = [f for e, f in events if e == "scriptgen.proxy.released"]
    assert released and released[0]["reason"] == "expired"
    assert learned == []  # nothing was relayed (no host connection in this fake): nothing to learn
    assert proxy.take_over(b, b"HELLO\r\n")  # the host is free again


def test_host_timeout_releases_the_source(tmp_path: Path) -> None:
    """connectTCP's own timeout reports a TimeoutError; the replay deadline covers the rest."""
    from twisted.internet import error
    from twisted.python.failure import Failure

    proxy, _connects, events, _, clock = make(tmp_path, replay_timeout=5)
    proto = FakeProto(machine(), "127.0.0.5", 4000)
    tap = proxy.attach(proto)
    assert proxy.take_over(tap, b"HELLO\r\n")
    tap.connect_failed(Failure(error.TimeoutError()))
    assert proto.closed == "proxy_host_timeout"
    assert [f["reason"] for e, f in events if e == "scriptgen.proxy.failed"] == ["host_timeout"]
    assert proxy.pool.free == ["127.0.0.9"]  # released at once: the emulator serves it again
    other = FakeProto(machine(), "127.0.0.6", 4000)
    tap2 = proxy.attach(other)
    assert not proxy.take_over(tap2, b"HELLO\r\n")  # the host is down for host_backoff
    clock.advance(10)
    assert proxy.take_over(tap2, b"HELLO\r\n")
    clock.advance(5)  # never connected, never refused: the deadline
    assert other.closed == "proxy_host_timeout"
