"""Doubted transitions: a matched request whose transition was learned from few
requests and whose state saw answers of several shapes goes to a pool host, as
an unmatched one would; so does one of a general transition learned from too few
requests to copy anything, for datagrams (fakes, no sockets; the benchmarks measure
the effect)."""

from __future__ import annotations

from pathlib import Path

from scriptgen.emulate.dialog import Dialog, Matched
from scriptgen.emulate.matching import CompiledMachine
from scriptgen.emulate.proxy import doubtful
from scriptgen.model import Transition
from scriptgen.model.shape import shape
from tests.test_emulate_support import line_machine
from tests.test_proxy_unit import FakeProto, make


def test_shape_keeps_the_form_and_drops_the_values() -> None:
    assert shape(b":30\r\n") == shape(b":1\r\n")  # a number is a number
    assert shape(b"$5\r\nhello\r\n") == shape(b"$12\r\nabcdefghijkl\r\n")
    assert shape(b"331 Password for ann\r\n") == shape(b"331 Password for bob99\r\n")
    assert shape(b"\x00\x12\xab\x00ok") == shape(b"\x7f\x01\x00ok")  # binary ids
    assert shape(b":1\r\n") != shape(b"$-1\r\n") != shape(b"-ERR unknown\r\n")
    assert shape(b"") != shape(b"+OK\r\n")  # silence is a shape too
    assert len(shape(b"x" * 10_000 + b"\x00" * 10_000)) <= 256


def _state(answers: dict[bytes, int]):  # type: ignore[no-untyped-def]
    m = line_machine()
    state = m.states[1]
    state.answers = answers
    return state


def test_doubtful_needs_few_samples_and_several_shapes() -> None:
    few, many = Transition(None, 1, samples=3), Transition(None, 1, samples=8)  # type: ignore[arg-type]
    mixed = _state({b":1\r\n": 1, b"$-1\r\n": 1, b"*0\r\n": 1})
    values = _state({b":30\r\n": 1, b":62\r\n": 1, b":7\r\n": 1})
    assert doubtful(few, mixed, 8) == {"samples": 3, "shapes": 3}
    assert doubtful(many, mixed, 8) is None  # enough samples: the modal answer is trusted
    assert doubtful(few, values, 8) is None  # values differ, the form does not
    assert doubtful(few, _state({b"+OK\r\n": 1}), 8) is None
    assert doubtful(few, mixed, 0) is None  # off


def _step(machine: CompiledMachine, data: bytes) -> Matched:
    [step] = Dialog(machine, 1 << 16).feed(data)
    assert isinstance(step, Matched)
    return step


def _machine(samples: int, answers: dict[bytes, int]) -> CompiledMachine:
    m = line_machine(21)
    for t in m.states[0].transitions:
        t.samples = samples
    m.states[2].answers = answers  # USER -> state 2
    return CompiledMachine.build(m)


def test_a_doubted_request_is_handed_to_the_host_with_what_followed(tmp_path: Path) -> None:
    proxy, connects, events, _, _ = make(tmp_path, doubt_samples=8)
    machine = _machine(2, {b"331 password?\r\n": 1, b"530 no\r\n": 1, b"": 1})
    proto = FakeProto(machine, "127.0.0.5", 4000)
    proto.hand_over = lambda: b"PING\r\n"  # type: ignore[method-assign]  # pipelined after it
    tap = proxy.attach(proto)
    tap.emulated(b"", b"220 hello\r\n")
    assert tap.doubt(_step(machine, b"USER ann\r\n"))
    assert tap.proxied and connects == [("127.0.0.9", 21)]
    assert tap.pending == [b"USER ann\r\n", b"PING\r\n"]  # in the client's order
    [(eid, allocated)] = [(e, f) for e, f in events if e == "scriptgen.proxy.allocated"]
    assert allocated["doubt"] == {"samples": 2, "shapes": 3, "state": 0, "target": 2}
    assert allocated["request"] == b"USER ann\r\n"


def test_a_trusted_request_stays_with_the_emulator(tmp_path: Path) -> None:
    proxy, connects, events, _, _ = make(tmp_path, doubt_samples=8)
    for machine in (
        _machine(9, {b"331 password?\r\n": 1, b"530 no\r\n": 1}),  # enough samples
        _machine(2, {b"331 password?\r\n": 5}),  # one shape
    ):
        tap = proxy.attach(FakeProto(machine, "127.0.0.5", 4000))
        assert not tap.doubt(_step(machine, b"USER ann\r\n"))
        assert not tap.proxied
    assert connects == [] and events == []


def test_no_host_free_means_the_emulator_answers(tmp_path: Path) -> None:
    proxy, _connects, events, _, _ = make(tmp_path, doubt_samples=8)
    machine = _machine(2, {b"331 password?\r\n": 1, b"530 no\r\n": 1})
    assert proxy.take_over(proxy.attach(FakeProto(machine, "127.0.0.6", 4000)), b"X\r\n")
    tap = proxy.attach(FakeProto(machine, "127.0.0.5", 4000))
    assert not tap.doubt(_step(machine, b"USER ann\r\n"))  # pool exhausted: answer it
    assert not tap.proxied
    assert ("scriptgen.proxy.failed", {"reason": "pool_exhausted"}) in events


class ResumingProto(FakeProto):
    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.resumed: list[tuple[Matched, bytes]] = []

    def hand_over(self) -> bytes:
        return b"PING\r\n"  # pipelined after the doubted request

    def resume(self, step: Matched, rest: bytes) -> None:
        self.resumed.append((step, rest))


def test_a_host_that_refuses_leaves_the_doubted_request_to_the_emulator(tmp_path: Path) -> None:
    from twisted.internet import error
    from twisted.python.failure import Failure

    proxy, _connects, events, _, _ = make(tmp_path, doubt_samples=8)
    machine = _machine(2, {b"331 password?\r\n": 1, b"530 no\r\n": 1})
    proto = ResumingProto(machine, "127.0.0.5", 4000)
    tap = proxy.attach(proto)
    step = _step(machine, b"USER ann\r\n")
    assert tap.doubt(step)
    tap.from_client(b"QUIT\r\n")  # still read while connecting
    tap.connect_failed(Failure(error.ConnectionRefusedError()))
    assert proto.resumed == [(step, b"PING\r\nQUIT\r\n")] and proto.closed is None
    assert not tap.proxied and proxy.relayed == 0 and proxy.pool.free == ["127.0.0.9"]
    [failed] = [f for e, f in events if e == "scriptgen.proxy.failed"]
    assert failed["reason"] == "host_refused" and failed["fallback"] == "emulated"


def test_a_host_that_never_accepts_leaves_it_to_the_emulator_too(tmp_path: Path) -> None:
    proxy, _connects, events, _, clock = make(tmp_path, doubt_samples=8, replay_timeout=5)
    machine = _machine(2, {b"331 password?\r\n": 1, b"530 no\r\n": 1})
    proto = ResumingProto(machine, "127.0.0.5", 4000)
    tap = proxy.attach(proto)
    step = _step(machine, b"USER ann\r\n")
    assert tap.doubt(step)
    clock.advance(5)
    assert proto.resumed == [(step, b"PING\r\n")] and proto.closed is None
    assert [f["reason"] for e, f in events if e == "scriptgen.proxy.failed"] == ["host_timeout"]


def _doubting_harness(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real EmulatorProtocol on a fake transport, with a proxy whose USER is doubted."""
    from tests.test_emulate_support import Harness

    m = line_machine(7000)
    for t in m.states[0].transitions:
        t.samples = 2
    m.states[2].answers = {b"331 password?\r\n": 1, b"530 no\r\n": 1}
    h = Harness(m)
    proxy, connects, events, _, clock = make(tmp_path, doubt_samples=8, replay_timeout=5)
    h.factory.proxy = proxy
    return h, proxy, connects, events, clock


def test_requests_pipelined_after_a_doubted_one_reach_the_host(tmp_path: Path) -> None:
    h, _proxy, connects, _events, _ = _doubting_harness(tmp_path)
    proto, _transport = h.connect("127.0.7.5", 4000)
    proto.dataReceived(b"USER ann\r\nPING\r\nQU")  # one segment: two requests and a start
    assert connects == [("127.0.0.9", 7000)]
    assert b"".join(proto.tap.pending) == b"USER ann\r\nPING\r\nQU"  # nothing lost, in order
    assert proto.dialog.requests == 1  # the doubted one was matched; PING is handed over as bytes


def test_requests_pipelined_after_a_doubted_one_are_answered_on_fallback(tmp_path: Path) -> None:
    h, _proxy, _connects, _events, clock = _doubting_harness(tmp_path)
    proto, transport = h.connect("127.0.7.5", 4000)
    transport.clear()  # the banner
    proto.dataReceived(b"USER ann\r\nPING\r\n")
    assert proto.tap.proxied
    clock.advance(5)  # the host never accepts: the emulator answers both, in order
    assert not proto.tap.proxied
    assert transport.value() == b"331 password?\r\n+PONG\r\n"
    assert proto.dialog.state.id == 1  # PING's state
    assert proto.dialog.requests == 2  # each counted once


def test_connections_pulled_over_by_a_doubt_go_back_to_the_emulator_with_it(tmp_path: Path) -> None:
    """A doubted request takes the source's other connections to the host too; when
    the host refuses, they are emulated again (with what their clients sent
    meanwhile), not closed: doubt never ends a run the model could answer."""
    from twisted.internet import error
    from twisted.python.failure import Failure

    proxy, connects, events, _, _ = make(tmp_path, doubt_samples=8)
    machine = _machine(2, {b"331 password?\r\n": 1, b"530 no\r\n": 1})
    quiet = ResumingProto(machine, "127.0.7.5", 4001)  # another connection, emulated so far
    quiet.hand_over = lambda: b""  # type: ignore[method-assign]  # nothing unread
    quiet_tap = proxy.attach(quiet)
    quiet_tap.emulated(b"", b"220 hello\r\n")
    proto = ResumingProto(machine, "127.0.7.5", 4000)
    tap = proxy.attach(proto)
    step = _step(machine, b"USER ann\r\n")
    assert tap.doubt(step)
    assert quiet_tap.proxied and len(connects) == 2
    quiet_tap.from_client(b"PING\r\n")
    refused = Failure(error.ConnectionRefusedError())
    tap.connect_failed(refused)
    quiet_tap.connect_failed(refused)  # its own attempt fails too: ignored now
    assert proto.resumed == [(step, b"PING\r\n")] and proto.closed is None
    assert quiet.resumed == [(None, b"PING\r\n")] and quiet.closed is None
    assert not quiet_tap.proxied and proxy.relayed == 0
    assert [f["reason"] for e, f in events if e == "scriptgen.proxy.failed"] == ["host_refused"]


def test_a_client_that_half_closed_while_connecting_is_answered_then_closed(tmp_path: Path) -> None:
    h, _proxy, _connects, _events, clock = _doubting_harness(tmp_path)
    proto, transport = h.connect("127.0.7.5", 4000)
    transport.clear()
    proto.dataReceived(b"USER ann\r\n")
    proto.readConnectionLost()  # printf ... | nc: the request came with the FIN
    clock.advance(5)  # the host never accepts
    assert transport.value() == b"331 password?\r\n"
    assert proto.closing and proto.close_reason == "client_closed"


def test_a_host_that_refuses_leaves_no_empty_recording_behind(tmp_path: Path) -> None:
    """Each allocation opens a recording; one whose host never connected holds no
    flow. Kept pending, a dead pool host made one file per doubted (or
    unmatched) request, each learned again at every start."""
    from twisted.internet import error
    from twisted.python.failure import Failure

    proxy, _connects, events, learned, _ = make(tmp_path, doubt_samples=8, host_backoff=0)
    machine = _machine(2, {b"331 password?\r\n": 1, b"530 no\r\n": 1})
    for port in range(4000, 4005):  # host_backoff = 0: the dead host is tried every time
        tap = proxy.attach(ResumingProto(machine, "127.0.7.5", port))
        assert tap.doubt(_step(machine, b"USER ann\r\n"))
        tap.connect_failed(Failure(error.ConnectionRefusedError()))
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file() and "pcap" in p.name) == []
    released = [f for e, f in events if e == "scriptgen.proxy.released"]
    assert len(released) == 5 and all(f["recording"] is None for f in released)
    assert learned == []


def test_a_datagram_of_a_general_transition_from_too_few_requests_is_doubted() -> None:
    """The rest of a cluster once a recurring value was split off: a pattern with a
    mutating region and one or two samples, its state no content dependency (an
    id it cannot copy), whatever its answers -- for datagrams; on TCP only the
    answer shapes count."""
    from scriptgen.model import Pattern, Region

    general = Pattern((Region.mutating(2, 2), Region(b"\x01\x00 query")))
    one = _state({b"\x12\x34 answer": 1})

    def udp(samples: int, state, pattern=general, doubt_samples=8):  # type: ignore[no-untyped-def]
        return doubtful(Transition(pattern, 1, samples=samples), state, doubt_samples, True)

    assert udp(1, one) == {"samples": 1, "general": True}
    assert udp(2, one) == {"samples": 2, "general": True}
    assert udp(3, one) is None  # enough to prove a link
    copies = _state({b"\x12\x34 answer": 1})
    copies.dependencies = [{"kind": "copy", "at": 0, "len": 2, "request": 0, "offset": 0}]
    assert udp(2, copies) is None  # a link was proven
    assert udp(0, one) is None  # not counted: a hand-made model
    assert udp(1, one, Pattern.literal(b"PWD\r\n")) is None  # exact: generalises nothing
    assert udp(1, one, doubt_samples=0) is None  # doubt off
    mixed = _state({b":1\r\n": 1, b"$-1\r\n": 1, b"*0\r\n": 1})
    assert udp(3, mixed) is None  # shapes are not checked for datagrams
    assert doubtful(Transition(general, 1, samples=1), one, 8) is None  # TCP: one shape


def test_an_echo_nothing_proves_yet_is_doubted_on_tcp() -> None:
    """redis ECHO learned from one request: its answer holds the argument the client
    chose, no dependency copies it yet, so every later client would get the old
    argument back (one shape: the shape rule does not see it)."""
    from scriptgen.model import Pattern, Region

    echo = Pattern((Region(b"ECHO "), Region.mutating(1, 40), Region(b"\r\n")))
    heard = _state({b"$5\r\nhello\r\n": 1})

    def tcp(samples: int, state, examples=(b"ECHO hello\r\n",)):  # type: ignore[no-untyped-def]
        return doubtful(Transition(echo, 1, samples, list(examples)), state, 8)

    assert tcp(1, heard) == {"samples": 1, "echo": True}
    assert tcp(2, heard) == {"samples": 2, "echo": True}
    assert tcp(3, heard) is None  # enough requests for inference to prove the copy
    copies = _state({b"$5\r\nhello\r\n": 1})
    copies.dependencies = [{"kind": "copy-region", "at": 4, "len": 5, "request": 0, "region": 1}]
    assert tcp(1, copies) is None  # proven: the emulator echoes the live value
    assert tcp(1, _state({b"+OK\r\n": 1})) is None  # nothing of the request in the answer
    assert tcp(1, heard, examples=(b"ECHO hi\r\n",)) is None  # values under 3 bytes: chance
    assert tcp(1, heard, examples=()) is None  # no example kept: nothing to compare
