"""TCP protocol on a fake transport and a fake clock: banner, request
splitting across and within segments, ends, unmatched policies, limits, timers."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from scriptgen.model import End, Machine, Pattern, Region, Transition
from tests.test_emulate_support import Harness, line_machine


def test_banner_sent_on_connect_and_logged() -> None:
    h = Harness()
    _proto, t = h.connect()
    assert t.value() == b"220 hello\r\n"
    assert h.events.ids()[:2] == ["scriptgen.session.connect", "scriptgen.answer.sent"]
    connect = h.events.of("scriptgen.session.connect")[0]
    assert (connect["src_ip"], connect["src_port"], connect["dst_port"]) == (
        "10.0.0.1",
        40000,
        7000,
    )
    assert connect["protocol"] == "tcp" and connect["session"]


def test_silent_root_sends_nothing() -> None:
    m = line_machine()
    m.states[0].answer = b""
    h = Harness(m)
    _proto, t = h.connect()
    assert t.value() == b""
    assert "scriptgen.answer.sent" not in h.events.ids()


def test_request_over_several_segments() -> None:
    h = Harness()
    proto, t = h.connect()
    t.clear()
    for chunk in (b"US", b"ER bo", b"b\r", b"\n"):
        proto.dataReceived(chunk)
    assert t.value() == b"331 password?\r\n"
    matched = h.events.of("scriptgen.request.matched")
    assert [m["request"] for m in matched] == [b"USER bob\r\n"]
    assert matched[0]["state"] == 0 and matched[0]["target"] == 2
    assert matched[0]["answer"] == b"331 password?\r\n" and matched[0]["end"] == "open"


def test_two_requests_in_one_segment_are_split() -> None:
    h = Harness()
    proto, t = h.connect()
    t.clear()
    proto.dataReceived(b"PING\r\nUSER alice\r\nPING\r\n")
    assert t.value() == b"+PONG\r\n331 password?\r\n+PONG\r\n"
    assert [m["request"] for m in h.events.of("scriptgen.request.matched")] == [
        b"PING\r\n",
        b"USER alice\r\n",
        b"PING\r\n",
    ]


def test_split_leaves_incomplete_rest_waiting() -> None:
    h = Harness()
    proto, t = h.connect()
    t.clear()
    proto.dataReceived(b"PING\r\nUSER al")
    assert t.value() == b"+PONG\r\n"
    proto.dataReceived(b"ice\r\n")
    assert t.value() == b"+PONG\r\n331 password?\r\n"


def test_prefix_request_waits_for_settle_then_answers() -> None:
    """'PING' is a whole request but also the start of 'PINGALL\\r\\n' and 'PING\\r\\n'."""
    h = Harness(request_settle=0.2)
    proto, t = h.connect()
    t.clear()
    proto.dataReceived(b"PING")
    assert t.value() == b""
    h.clock.advance(0.1)
    assert t.value() == b""
    h.clock.advance(0.15)
    assert t.value() == b"+PONG\r\n"


def test_prefix_request_extended_before_settle_takes_longer_one() -> None:
    h = Harness(request_settle=0.2)
    proto, t = h.connect()
    t.clear()
    proto.dataReceived(b"PING")
    h.clock.advance(0.1)
    proto.dataReceived(b"ALL\r\n")
    assert t.value() == b"+ALL\r\n"
    h.clock.advance(1)
    assert t.value() == b"+ALL\r\n"


def test_close_end_closes_after_answer() -> None:
    h = Harness()
    proto, t = h.connect()
    proto.dataReceived(b"QUIT\r\n")
    assert t.value().endswith(b"221 bye\r\n")
    assert t.disconnecting and not getattr(t, "aborted", False)
    h.disconnect(proto, t)
    closed = h.events.of("scriptgen.session.closed")[0]
    assert closed["reason"] == "server_close" and closed["requests"] == 1


def test_close_that_cannot_flush_is_aborted() -> None:
    """A client that stops reading keeps loseConnection waiting for the answer
    to drain; after request_timeout the connection is aborted, freeing its slot."""
    h = Harness(request_timeout=5)
    proto, t = h.connect()
    proto.dataReceived(b"QUIT\r\n")
    assert t.disconnecting and not t.disconnected  # a graceful close was asked for
    h.clock.advance(4.9)
    assert not t.disconnected
    h.clock.advance(0.2)
    assert t.disconnected  # aborted
    h.disconnect(proto, t)
    assert h.runtime.limiter.active == 0 and not h.clock.getDelayedCalls()


def test_graceful_close_leaves_no_timer_behind() -> None:
    h = Harness(request_timeout=5)
    proto, t = h.connect()
    proto.dataReceived(b"QUIT\r\n")
    h.disconnect(proto, t)  # the client read the answer and the close completed
    assert not h.clock.getDelayedCalls()
    proto._close("late")  # e.g. the proxy, after the connection is gone: no new timer
    assert not h.clock.getDelayedCalls()


def test_reset_end_aborts() -> None:
    h = Harness()
    proto, t = h.connect()
    proto.dataReceived(b"KILL\r\n")
    assert t.disconnecting and t.disconnected
    h.disconnect(proto, t)
    assert h.events.of("scriptgen.session.closed")[0]["reason"] == "server_reset"


def test_requests_after_close_end_are_not_answered() -> None:
    h = Harness()
    proto, t = h.connect()
    t.clear()
    proto.dataReceived(b"QUIT\r\nPING\r\n")
    assert t.value() == b"221 bye\r\n"


def test_unmatched_silent_keeps_connection_until_idle() -> None:
    h = Harness(on_unmatched="silent", idle_timeout=10)
    proto, t = h.connect()
    t.clear()
    proto.dataReceived(b"HELO x\r\n")
    assert t.value() == b"" and not t.disconnecting
    un = h.events.of("scriptgen.request.unmatched")
    assert un[0]["request"] == b"HELO x\r\n" and un[0]["reason"] == "no_match"
    assert [k.request for k in h.runtime.unmatched.requests("10.0.0.1")] == [b"HELO x\r\n"]
    proto.dataReceived(b"PING\r\n")  # silent: nothing more is answered
    assert t.value() == b""
    h.clock.advance(9)
    assert not t.disconnecting
    h.clock.advance(1.5)
    assert t.disconnecting
    h.disconnect(proto, t)
    closed = h.events.of("scriptgen.session.closed")[0]
    assert closed["reason"] == "idle_timeout" and closed["ignored_bytes"] == 6


def test_unmatched_close_policy_closes() -> None:
    h = Harness(on_unmatched="close")
    proto, t = h.connect()
    proto.dataReceived(b"HELO x\r\n")
    assert t.disconnecting
    h.disconnect(proto, t)
    assert h.events.of("scriptgen.session.closed")[0]["reason"] == "unmatched"


def test_matched_prefix_then_garbage() -> None:
    h = Harness(on_unmatched="close")
    proto, t = h.connect()
    t.clear()
    proto.dataReceived(b"PING\r\n\x00\xff\x13garbage")
    assert t.value() == b"+PONG\r\n"
    assert h.events.of("scriptgen.request.unmatched")[0]["request"] == b"\x00\xff\x13garbage"
    assert t.disconnecting


def test_idle_timer_is_pushed_back_by_data() -> None:
    h = Harness(idle_timeout=5)
    proto, t = h.connect()
    for _ in range(4):
        h.clock.advance(3)
        proto.dataReceived(b"PING\r\n")
    assert not t.disconnecting
    h.clock.advance(5.1)
    assert t.disconnecting


def test_one_byte_per_second_hits_request_timeout() -> None:
    """A drip-fed request that could always still grow is given up after request_timeout."""
    h = Harness(idle_timeout=100, request_timeout=5, on_unmatched="close")
    proto, t = h.connect()
    proto.dataReceived(b"USER ")
    for _ in range(10):
        h.clock.advance(1)
        if t.disconnecting:
            break
        proto.dataReceived(b"a")
    assert t.disconnecting
    un = h.events.of("scriptgen.request.unmatched")
    assert un and un[0]["reason"] == "request_timeout"


def test_session_timeout() -> None:
    h = Harness(idle_timeout=100, session_timeout=30)
    proto, t = h.connect()
    for _ in range(40):
        h.clock.advance(1)
        proto.dataReceived(b"PING\r\n")
    assert t.disconnecting
    h.disconnect(proto, t)
    assert h.events.of("scriptgen.session.closed")[0]["reason"] == "session_timeout"


def test_buffer_bound_closes_connection() -> None:
    """A request that could grow forever (huge mutating region) is cut at max_buffer_bytes."""
    m = Machine("tcp", 7000)
    s = m.new_state()
    s.answer = b"ok"
    big = Pattern((Region(b"BLOB "), Region.mutating(0, 10**8), Region(b"\r\n")))
    m.states[0].transitions.append(Transition(big, s.id))
    h = Harness(m, max_buffer_bytes=1000)
    proto, t = h.connect()
    for _ in range(5):
        proto.dataReceived(b"BLOB " + b"x" * 300)
    assert t.disconnecting
    hit = h.events.of("scriptgen.limit.hit")
    assert hit[0]["limit"] == "max_buffer_bytes" and hit[0]["value"] == 1000
    assert len(proto.dialog.buffer) == 0


def test_ignored_bytes_after_unmatched_are_bounded() -> None:
    h = Harness(max_buffer_bytes=1000, on_unmatched="silent")
    proto, t = h.connect()
    proto.dataReceived(os.urandom(100) + b"\xff")
    assert not t.disconnecting
    for _ in range(20):
        if t.disconnecting:
            break
        proto.dataReceived(b"\x00" * 100)
    assert t.disconnecting
    assert h.events.of("scriptgen.limit.hit")[0]["limit"] == "max_buffer_bytes"


def test_per_source_connection_limit() -> None:
    h = Harness(max_connections_per_source=3, max_connections=100)
    conns = [h.connect("10.0.0.9", 1000 + i) for i in range(5)]
    refused = [t for _p, t in conns if t.disconnecting]
    assert len(refused) == 2
    assert all(t.value() == b"" for t in refused)
    hits = h.events.of("scriptgen.limit.hit")
    assert hits[0]["limit"] == "max_connections_per_source"
    # another source is still served
    _p, t = h.connect("10.0.0.10", 2000)
    assert t.value() == b"220 hello\r\n" and not t.disconnecting
    # closing one frees a slot for the first source
    p0, t0 = conns[0]
    h.disconnect(p0, t0)
    _p, t = h.connect("10.0.0.9", 3000)
    assert not t.disconnecting
    # refused connections leave no session events
    assert len(h.events.of("scriptgen.session.connect")) == 5


def test_total_connection_limit_and_throttled_events() -> None:
    h = Harness(max_connections=2, max_connections_per_source=100)
    conns = [h.connect(f"10.0.1.{i}", 5000) for i in range(10)]
    assert sum(1 for _p, t in conns if t.disconnecting) == 8
    hits = h.events.of("scriptgen.limit.hit")
    assert len(hits) == 1  # throttled: one event per second per limit
    h.clock.advance(1.5)
    h.connect("10.0.2.1", 5000)
    hits = h.events.of("scriptgen.limit.hit")
    assert len(hits) == 2 and hits[1]["suppressed"] == 7


def test_total_limit_evicts_the_quietest_idle_connection() -> None:
    """Idle connections from many sources must not lock other clients out:
    at max_connections a new client replaces the connection quiet the longest."""
    h = Harness(max_connections=3, max_connections_per_source=100)
    idle = [h.connect(f"10.0.3.{i}", 6000) for i in range(3)]
    h.clock.advance(5)
    busy_proto, _busy_t = idle[1]
    busy_proto.dataReceived(b"PING\r\n")  # this one is in a dialog now
    h.clock.advance(0.5)
    _p, t = h.connect("10.0.4.1", 6000)
    assert t.value() == b"220 hello\r\n" and not t.disconnecting
    first_proto, first_t = idle[0]
    assert first_t.disconnecting and not idle[1][1].disconnecting
    h.disconnect(first_proto, first_t)
    closed = h.events.of("scriptgen.session.closed")
    assert [c["src_ip"] for c in closed] == ["10.0.3.0"] and closed[0]["reason"] == "evicted"
    assert h.events.of("scriptgen.limit.hit")[0]["action"] == "evicted_quietest"
    assert h.runtime.limiter.active == 3
    # the next newcomer evicts the next quietest idle one (10.0.3.2), never the busy one
    _p, t = h.connect("10.0.4.2", 6000)
    assert not t.disconnecting and idle[2][1].disconnecting and not idle[1][1].disconnecting


def test_total_limit_refuses_when_every_connection_is_active() -> None:
    h = Harness(max_connections=2, max_connections_per_source=100)
    conns = [h.connect(f"10.0.5.{i}", 6000) for i in range(2)]
    h.clock.advance(0.5)  # quiet less than EVICT_QUIET: still in their dialogs
    _p, t = h.connect("10.0.6.1", 6000)
    assert t.disconnecting and not any(t.disconnecting for _p, t in conns)
    assert h.events.of("scriptgen.limit.hit")[0]["limit"] == "max_connections"


def test_connection_lost_releases_and_reports() -> None:
    h = Harness()
    proto, t = h.connect()
    proto.dataReceived(b"PING\r\n")
    h.disconnect(proto, t)
    closed = h.events.of("scriptgen.session.closed")[0]
    assert closed["reason"] == "client_closed"
    assert closed["bytes_in"] == 6 and closed["bytes_out"] == len(b"220 hello\r\n+PONG\r\n")
    assert h.runtime.limiter.active == 0
    assert not h.clock.getDelayedCalls()  # every timer cancelled


def test_producer_pause_stops_reading() -> None:
    h = Harness()
    proto, t = h.connect()
    assert t.producer is proto and t.streaming
    proto.pauseProducing()
    assert t.producerState == "paused"
    proto.resumeProducing()
    assert t.producerState == "producing"


def test_connection_keeps_its_machine_when_models_change() -> None:
    h = Harness()
    proto, t = h.connect()
    changed = line_machine()
    changed.states[1].answer = b"+NEW\r\n"
    h.models.machines = type(h.models)(changed).machines
    t.clear()
    proto.dataReceived(b"PING\r\n")
    assert t.value() == b"+PONG\r\n"
    proto2, t2 = h.connect(port=40001)
    t2.clear()
    proto2.dataReceived(b"PING\r\n")
    assert t2.value() == b"+NEW\r\n"


def test_random_bytes_never_raise() -> None:
    h = Harness(max_buffer_bytes=4096, on_unmatched="silent")
    for i in range(50):
        proto, t = h.connect(port=10000 + i)
        data = os.urandom(3000)
        for j in range(0, len(data), 97):
            proto.dataReceived(data[j : j + 97])
        h.clock.advance(1)
        h.disconnect(proto, t)
    assert h.runtime.limiter.active == 0


def test_end_state_close_without_answer_has_event() -> None:
    m = line_machine()
    m.states[3].answer = b""
    h = Harness(m)
    proto, t = h.connect()
    proto.dataReceived(b"QUIT\r\n")
    assert t.disconnecting
    matched = h.events.of("scriptgen.request.matched")[-1]
    assert matched["end"] == End.CLOSE.value and matched["answer"] == b""


def test_root_that_closes_greets_and_closes() -> None:
    m = line_machine()
    m.states[0].answer = b"421 busy\r\n"
    m.states[0].end = End.CLOSE
    h = Harness(m)
    proto, t = h.connect()
    assert t.value() == b"421 busy\r\n" and t.disconnecting
    sent = h.events.of("scriptgen.answer.sent")[0]
    assert sent["end"] == "close" and sent["answer"] == b"421 busy\r\n"
    proto.dataReceived(b"PING\r\n")
    assert t.value() == b"421 busy\r\n"


def test_half_close_answers_then_closes() -> None:
    h = Harness(on_unmatched="silent")
    proto, t = h.connect()
    t.clear()
    proto.dataReceived(b"PING")  # could still grow: waiting for the settle delay
    assert t.value() == b""
    proto.readConnectionLost()  # the client shut its sending side
    assert t.value() == b"+PONG\r\n" and t.disconnecting
    h.disconnect(proto, t)
    assert h.events.of("scriptgen.session.closed")[0]["reason"] == "client_closed"


def test_half_close_with_incomplete_request_logs_it() -> None:
    h = Harness()
    proto, t = h.connect()
    proto.dataReceived(b"USER bo")
    proto.readConnectionLost()
    assert h.events.of("scriptgen.request.unmatched")[0]["reason"] == "incomplete"
    assert t.disconnecting


# --- fuzz: random machines, random byte streams, random timing ---

_ALPHA = b"AB\r\n\x00"
_bytes = st.binary(min_size=1, max_size=4).map(lambda b: bytes(_ALPHA[x % 5] for x in b))
_region = st.one_of(
    _bytes.map(Region),
    st.tuples(st.integers(0, 3), st.integers(0, 6)).map(lambda t: Region.mutating(min(t), max(t))),
)
_pattern = st.lists(_region, min_size=1, max_size=3).map(lambda rs: Pattern(tuple(rs)))


@st.composite
def machines(draw: st.DrawFn) -> Machine:
    m = Machine("tcp", 7000)
    n = draw(st.integers(1, 4))
    for _ in range(n):
        m.new_state()
    ids = sorted(m.states)
    for sid in ids:
        state = m.states[sid]
        state.answer = draw(st.binary(max_size=8))
        state.end = draw(st.sampled_from([End.OPEN, End.OPEN, End.OPEN, End.CLOSE, End.RESET]))
        for p in draw(st.lists(_pattern, max_size=4)):
            state.transitions.append(Transition(p, draw(st.sampled_from(ids))))
    return m


@settings(max_examples=100, deadline=None)
@given(
    machines(),
    st.lists(st.tuples(st.binary(max_size=12), st.floats(0, 2)), max_size=12),
    st.sampled_from(["silent", "close"]),
)
def test_fuzz_protocol_never_raises_and_cleans_up(
    machine: Machine, chunks: list[tuple[bytes, float]], policy: str
) -> None:
    h = Harness(
        machine, on_unmatched=policy, idle_timeout=3, request_timeout=1, max_buffer_bytes=20
    )
    proto, t = h.connect()
    for data, pause in chunks:
        if t.disconnecting:
            break
        proto.dataReceived(data.translate(bytes.maketrans(b"abcdefgh", b"AB\r\n\x00AB\r")))
        h.clock.advance(pause)
        assert len(proto.dialog.buffer) <= 20 + 12
    h.clock.advance(10)  # idle timeout: every connection ends
    assert t.disconnecting
    h.disconnect(proto, t)
    assert h.runtime.limiter.active == 0
    assert not h.clock.getDelayedCalls()
    ids = h.events.ids()
    assert ids[0] == "scriptgen.session.connect" and ids[-1] == "scriptgen.session.closed"
