"""Ports drawn per answer through the protocol (fake transport, fake clock): what is
logged and recorded is what the client read, and nothing is drawn after the stop.

The announcer's own bounds are in tests/test_dataport_emulate.py; real clients in
tests/test_dataport_ftp.py."""

from __future__ import annotations

import random
import re
from typing import Any

from twisted.internet.defer import succeed

from scriptgen.emulate.announce import Announcer
from scriptgen.emulate.gate import Gate
from scriptgen.model import Machine, Pattern, Transition
from tests.test_emulate_support import Harness

LEARNED = 40008
ANSWER = b"229 Entering Extended Passive Mode (|||40008|)\r\n"
SIG = {
    "kind": "session",
    "opens": f"tcp/{LEARNED}",
    "for": 5.0,
    "announce": {"at": ANSWER.index(b"40008"), "len": 5, "form": "decimal"},
}


class Listening:
    def __init__(self) -> None:
        self.stopped = False

    def stopListening(self) -> None:  # noqa: N802
        self.stopped = True


class Host:
    """The fake ``serve``: every port binds; records what listens."""

    def __init__(self) -> None:
        self.listening: dict[int, Listening] = {}

    def serve(self, key: tuple[str, int], port: int, gate: Any) -> Listening:
        self.listening[port] = Listening()
        return self.listening[port]

    def live(self) -> list[int]:
        return [p for p, lst in self.listening.items() if not lst.stopped]


def machine(banner_announces: bool = False) -> Machine:
    """Banner; ``EPSV\\r\\n`` -> the announcing answer (or the banner announces)."""
    m = Machine("tcp", 7000)
    root = m.states[0]
    root.answer = ANSWER if banner_announces else b"220 hi\r\n"
    if banner_announces:
        root.signals = [dict(SIG)]
    epsv = m.new_state()
    epsv.answer = ANSWER
    epsv.signals = [dict(SIG)]
    root.transitions.append(Transition(Pattern.literal(b"EPSV\r\n"), epsv.id))
    epsv.transitions.append(Transition(Pattern.literal(b"EPSV\r\n"), epsv.id))
    return m


def harness(m: Machine) -> tuple[Harness, Host, Announcer]:
    h = Harness(m, Machine("tcp", LEARNED))
    gate = Gate(h.events, h.clock, lambda f, *a: succeed(f(*a)), mechanism="fallback")
    gate.start({})
    host = Host()
    gate.announcer = Announcer(h.events, h.clock, host.serve, gate, rng=random.Random(3))
    h.factory.gate = gate
    return h, host, gate.announcer


def port_in(answer: bytes) -> int:
    return int(re.search(rb"\|\|\|(\d+)\|", answer).group(1))


def test_the_logged_answer_is_the_one_sent() -> None:
    h, host, _ = harness(machine())
    proto, t = h.connect()
    t.clear()
    proto.dataReceived(b"EPSV\r\n")
    sent = t.value()
    assert port_in(sent) in host.live() and port_in(sent) != LEARNED
    matched = h.events.of("scriptgen.request.matched")
    assert [m["answer"] for m in matched] == [sent]


def test_the_logged_banner_is_the_one_sent() -> None:
    h, host, _ = harness(machine(banner_announces=True))
    _proto, t = h.connect()
    banner = t.value()
    assert port_in(banner) in host.live()
    assert [e["answer"] for e in h.events.of("scriptgen.answer.sent")] == [banner]


def test_the_proxy_transcript_holds_the_drawn_port() -> None:
    """The tap records the emulated turns (replay, recording): as the client read them."""
    h, _, _ = harness(machine())
    seen: list[tuple[bytes, bytes]] = []

    class Tap:
        proxied = False

        def emulated(self, request: bytes, answer: bytes) -> None:
            seen.append((request, answer))

        def doubt(self, step: Any) -> bool:
            return False

    class Proxy:
        def attach(self, proto: Any) -> Tap:
            return Tap()

    h.factory.proxy = Proxy()
    proto, t = h.connect()
    t.clear()
    proto.dataReceived(b"EPSV\r\n")
    assert seen[-1] == (b"EPSV\r\n", t.value())


def test_nothing_is_drawn_after_the_stop() -> None:
    """A connection still open when the service stops must not bind a new port (it
    would listen, unowned, until its timer)."""
    h, host, ann = harness(machine())
    proto, t = h.connect()
    proto.dataReceived(b"EPSV\r\n")
    assert len(host.live()) == 1
    ann.stop()
    assert host.live() == []
    t.clear()
    proto.dataReceived(b"EPSV\r\n")
    assert t.value() == ANSWER  # the learned answer, as without drawing
    assert host.live() == [] and ann.live == {}


def test_a_restarted_gate_draws_again() -> None:
    """stop() then start() (a service stopped and started again, embedded): ports are
    drawn again, not the learned answer for ever."""
    h, host, _ = harness(machine())
    gate = h.factory.gate
    gate.stop()
    gate.start({})
    proto, t = h.connect()
    t.clear()
    proto.dataReceived(b"EPSV\r\n")
    assert port_in(t.value()) in host.live()
