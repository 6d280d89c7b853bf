"""UDP: per-source dialog state, expiry, the source bound, unmatched datagrams."""

from __future__ import annotations

import errno

import pytest
from twisted.internet.error import MessageLengthError
from twisted.internet.testing import MemoryReactorClock

from scriptgen.emulate.config import PortSpec
from scriptgen.emulate.runtime import Runtime
from scriptgen.emulate.udp import EmulatorDatagramProtocol
from tests.test_emulate_support import RecordingEvents, StaticModels, line_machine, make_config


class FakeUdpTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def getHost(self) -> object:  # noqa: N802
        return type("Host", (), {"host": "127.0.0.1", "port": 5353})()


def make(
    **limits: object,
) -> tuple[EmulatorDatagramProtocol, FakeUdpTransport, Runtime, MemoryReactorClock]:
    clock = MemoryReactorClock()
    events = RecordingEvents()
    rt = Runtime(make_config(**limits), events, StaticModels(line_machine(5353, "udp")), clock)
    proto = EmulatorDatagramProtocol(rt, PortSpec("udp", 5353, 5353))
    transport = FakeUdpTransport()
    proto.makeConnection(transport)
    return proto, transport, rt, clock


A = ("10.0.0.1", 1111)
B = ("10.0.0.2", 2222)


def test_state_is_kept_per_source() -> None:
    proto, t, rt, _clock = make()
    proto.datagramReceived(b"USER x\r\n", A)
    proto.datagramReceived(b"PING\r\n", B)
    assert t.sent == [(b"331 password?\r\n", A), (b"+PONG\r\n", B)]
    assert proto.sessions.get(A).dialog.state.id == 2
    assert proto.sessions.get(B).dialog.state.id == 1
    assert len(rt.events.of("scriptgen.session.connect")) == 2
    matched = rt.events.of("scriptgen.request.matched")
    assert [m["answer"] for m in matched] == [b"331 password?\r\n", b"+PONG\r\n"]


def test_no_root_banner_for_udp() -> None:
    proto, t, _rt, _clock = make()
    proto.datagramReceived(b"PING\r\n", A)
    assert t.sent == [(b"+PONG\r\n", A)]


def test_idle_source_starts_again_from_root() -> None:
    proto, t, rt, clock = make(idle_timeout=10)
    proto.datagramReceived(b"USER x\r\n", A)
    session = proto.sessions.get(A).where.session
    clock.advance(11)
    assert A not in proto.sessions  # swept
    proto.datagramReceived(b"PING\r\n", A)
    assert proto.sessions.get(A).where.session != session
    closed = rt.events.of("scriptgen.session.closed")
    assert closed[0]["reason"] == "idle_timeout" and closed[0]["requests"] == 1


def test_expiry_checked_on_arrival_before_sweep() -> None:
    proto, _t, rt, clock = make(idle_timeout=10)
    proto.datagramReceived(b"USER x\r\n", A)
    clock.rightNow += 10.5  # time passes without the sweeper running
    proto.datagramReceived(b"PING\r\n", A)
    assert rt.events.of("scriptgen.session.closed")[0]["reason"] == "idle_timeout"


def test_source_table_is_bounded() -> None:
    proto, _t, rt, _clock = make(max_sources=3)
    for i in range(10):
        proto.datagramReceived(b"PING\r\n", (f"10.0.3.{i}", 53))
    assert len(proto.sessions) == 3
    assert rt.events.of("scriptgen.limit.hit")[0]["limit"] == "max_sources"
    assert sum(1 for e in rt.events.of("scriptgen.session.closed") if e["reason"] == "evicted") == 7


def test_unmatched_datagram_logged_and_kept() -> None:
    proto, t, rt, _clock = make(on_unmatched="silent")
    proto.datagramReceived(b"\x00\x01garbage", A)
    assert t.sent == []
    un = rt.events.of("scriptgen.request.unmatched")[0]
    assert un["request"] == b"\x00\x01garbage" and un["protocol"] == "udp"
    assert [k.request for k in rt.unmatched.requests("10.0.0.1")] == [b"\x00\x01garbage"]
    proto.datagramReceived(b"PING\r\n", A)  # silent policy on UDP: later datagrams still answered
    assert t.sent == [(b"+PONG\r\n", A)]


def test_unmatched_close_policy_forgets_source() -> None:
    proto, _t, _rt, _clock = make(on_unmatched="close")
    proto.datagramReceived(b"USER x\r\n", A)
    proto.datagramReceived(b"junk", A)
    assert A not in proto.sessions


def test_closing_state_ends_session() -> None:
    proto, t, rt, _clock = make()
    proto.datagramReceived(b"QUIT\r\n", A)
    assert t.sent == [(b"221 bye\r\n", A)] and A not in proto.sessions
    assert rt.events.of("scriptgen.session.closed")[0]["reason"] == "server_close"


def test_oversized_datagram_dropped() -> None:
    proto, t, rt, _clock = make(max_buffer_bytes=100)
    proto.datagramReceived(b"x" * 500, A)
    assert t.sent == [] and rt.events.of("scriptgen.limit.hit")[0]["limit"] == "max_buffer_bytes"


def test_stop_ends_all_sessions() -> None:
    proto, _t, rt, clock = make()
    proto.datagramReceived(b"PING\r\n", A)
    proto.doStop()
    assert rt.events.of("scriptgen.session.closed")[0]["reason"] == "service_stopped"
    assert not clock.getDelayedCalls()


class RefusingUdpTransport(FakeUdpTransport):
    """The kernel refuses every datagram with ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        raise self.error


@pytest.mark.parametrize(
    "error", [MessageLengthError("too long"), OSError(errno.EACCES, "Permission denied")]
)
def test_refused_send_ends_the_session_not_the_service(error: Exception) -> None:
    proto, _t, rt, _clock = make()
    proto.transport = RefusingUdpTransport(error)
    proto.datagramReceived(b"PING\r\n", A)  # must not raise
    assert A not in proto.sessions
    closed = rt.events.of("scriptgen.session.closed")
    assert closed[0]["reason"] == "send_error" and closed[0]["bytes_out"] == 0


def test_answers_to_one_source_address_are_bounded_by_its_send_budget() -> None:
    """A spoofed source must not turn the honeypot into a reflector: past the
    burst, one address gets ``udp_answer_rate`` bytes per second, whatever its
    ports; other addresses keep their own budget; the drop is a limit event."""
    pong = len(b"+PONG\r\n")
    proto, t, rt, clock = make(udp_answer_rate=10 * pong, udp_answer_burst=20 * pong)
    for port in range(1000, 1100):  # 100 queries, many source ports, in no time
        proto.datagramReceived(b"PING\r\n", ("10.0.0.9", port))
    assert len(t.sent) == 20
    proto.datagramReceived(b"PING\r\n", B)  # another address: its own budget
    assert t.sent[-1] == (b"+PONG\r\n", B)
    hits = [e for e in rt.events.of("scriptgen.limit.hit") if e["limit"] == "udp_answer_rate"]
    assert hits and hits[0]["dst"] == "10.0.0.9"
    clock.advance(1.0)  # one second refills rate bytes: ten more answers
    before = len(t.sent)
    for port in range(2000, 2050):
        proto.datagramReceived(b"PING\r\n", ("10.0.0.9", port))
    assert len(t.sent) - before == 10


def test_a_zero_answer_rate_means_no_bound() -> None:
    proto, t, _rt, _clock = make(udp_answer_rate=0, udp_answer_burst=1)
    for port in range(1000, 1300):
        proto.datagramReceived(b"PING\r\n", ("10.0.0.9", port))
    assert len(t.sent) == 300
