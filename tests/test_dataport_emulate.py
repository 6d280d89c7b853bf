"""Ports drawn per answer, emulated: the drawn port is written where the learned answer
named its port, served for its source only, closed after its time, bounded per source
and in all. A fake clock and a fake listener (no sockets); the real clients are in
tests/test_dataport_ftp.py."""

from __future__ import annotations

import random
import re

from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock

from scriptgen.emulate.announce import Announcer, draw_port, spelt_at, spot_of
from scriptgen.emulate.eventlog import Endpoint
from tests.test_sessions_gate import Events

ANSWER = b"229 Entering Extended Passive Mode (|||40008|)\r\n"
AT = ANSWER.index(b"40008")
SIG = {
    "kind": "session",
    "opens": "tcp/40008",
    "for": 5.0,
    "announce": {"at": AT, "len": 5, "form": "decimal"},
}
PAIR = b"227 Entering Passive Mode (127,0,0,2,156,72).\r\n"
PAIR_SIG = dict(SIG, announce={"at": PAIR.index(b"156,72"), "len": 6, "form": "pair"})
OTHER = {"kind": "session", "opens": "tcp/4444", "for": 5.0}


class Listening:
    def __init__(self, port: int) -> None:
        self.port = port
        self.stopped = False

    def stopListening(self) -> None:  # noqa: N802
        self.stopped = True


class Host:
    """The fake ``serve``: records what listens; ports in ``taken`` are in use."""

    def __init__(self, taken: set[int] = frozenset(), models=("tcp", 40008)) -> None:
        self.taken = set(taken)
        self.models = {models}
        self.listening: dict[int, tuple[tuple[str, int], Listening, object]] = {}

    def serve(self, key, port, gate):
        if key not in self.models:
            return None
        if port in self.taken or port in self.listening:
            raise CannotListenError("127.0.0.1", port, OSError("in use"))
        listening = Listening(port)
        self.listening[port] = (key, listening, gate)
        return listening

    def live(self) -> list[int]:
        return [p for p, (_, lst, _) in self.listening.items() if not lst.stopped]


def where(ip: str = "127.0.0.5", port: int = 21) -> Endpoint:
    return Endpoint("tcp", ip, 50000, "127.0.0.1", port, "s1")


def make(host: Host | None = None, **kw) -> tuple[Announcer, Host, Events, Clock]:
    host = host or Host()
    events, clock = Events(), Clock()
    ann = Announcer(events, clock, host.serve, rng=random.Random(7), **kw)
    return ann, host, events, clock


def drawn_port(answer: bytes) -> int:
    return int(re.search(rb"\|\|\|(\d+)\|", answer).group(1))


def test_the_answer_names_the_port_that_is_served() -> None:
    ann, host, events, clock = make()
    answer, rest = ann.announce(where(), 13, [SIG, OTHER], ANSWER)
    assert rest == [OTHER]  # the gate opens the others as before
    port = drawn_port(answer)
    assert len(answer) == len(ANSWER) and answer.replace(b"%d" % port, b"40008") == ANSWER
    assert 10000 <= port <= 65535 and port != 40008
    key, _, gate = host.listening[port]
    assert key == ("tcp", 40008)  # the learned machine of the port the signal opens
    assert gate.admit(key, where()) and not gate.admit(key, where("127.0.0.6"))
    assert events.ids() == ["scriptgen.gate.opened", "scriptgen.gate.refused"]
    clock.advance(5.0)
    assert host.live() == [] and not gate.admit(key, where())
    assert "scriptgen.gate.expired" in events.ids()


def test_pair_form_keeps_its_digit_counts() -> None:
    ann, host, _, _ = make()
    for _ in range(20):
        answer, rest = ann.announce(where(), 1, [PAIR_SIG], PAIR)
        assert rest == [] and len(answer) == len(PAIR)
        high, low = map(int, re.search(rb",(\d+),(\d+)\)", answer).groups())
        assert 100 <= high <= 255 and 10 <= low <= 99
        assert high * 256 + low in host.listening


def test_sources_at_once_get_their_own_ports() -> None:
    ann, host, _, _ = make()
    ports = {drawn_port(ann.announce(where(f"127.0.0.{i}"), 1, [SIG], ANSWER)[0]) for i in range(9)}
    assert len(ports) == 9 and sorted(ports) == sorted(host.live())
    for port in ports:
        _, _, gate = host.listening[port]
        assert sum(gate.admit(("tcp", 40008), where(f"127.0.0.{i}")) for i in range(9)) == 1


def test_a_source_at_its_bound_replaces_its_oldest_port() -> None:
    ann, host, events, _ = make(per_source=3)
    ports = [drawn_port(ann.announce(where(), 1, [SIG], ANSWER)[0]) for _ in range(5)]
    assert host.live() == ports[2:]
    assert [f["reason"] for e, f in events.seen if e == "scriptgen.gate.expired"] == [
        "replaced",
        "replaced",
    ]


def test_beyond_the_total_the_learned_answer_goes_out() -> None:
    ann, host, events, _ = make(total=2)
    for i in range(2):
        ann.announce(where(f"127.0.0.{i}"), 1, [SIG], ANSWER)
    answer, rest = ann.announce(where("127.0.0.9"), 1, [SIG], ANSWER)
    assert (answer, rest) == (ANSWER, [SIG])  # the gate opens the learned port instead
    assert len(host.live()) == 2 and events.ids()[-1] == "scriptgen.gate.error"


def test_a_port_in_use_is_drawn_again() -> None:
    ann, host, _, _ = make()
    rng = random.Random(7)
    first = draw_port(b"40008", "decimal", rng, ())
    host.taken.add(first)
    answer, _ = ann.announce(where(), 1, [SIG], ANSWER)
    assert drawn_port(answer) != first and drawn_port(answer) in host.live()


def test_nothing_drawn_without_a_machine_or_the_learned_shape() -> None:
    ann, host, _, _ = make(Host(models=("tcp", 1)))
    assert ann.announce(where(), 1, [SIG], ANSWER) == (ANSWER, [SIG])
    ann, host, _, _ = make()
    other = b"229 Entering Extended Passive Mode (|||4000|)\r\n"  # 4 digits where 5 were
    assert ann.announce(where(), 1, [SIG], other) == (other, [SIG])
    assert host.listening == {}


def test_hostile_signals_are_ignored() -> None:
    bad = [
        dict(SIG, announce={"at": -1, "len": 5, "form": "decimal"}),
        dict(SIG, announce={"at": AT, "len": 500, "form": "decimal"}),
        dict(SIG, announce={"at": AT, "len": 5, "form": "hex"}),
        dict(SIG, announce=[AT, 5]),
        dict(SIG, opens="udp/53"),
        dict(SIG, opens="tcp/0"),
        dict(SIG, opens="tcp/99999"),
        dict(SIG, **{"for": "soon"}),
        dict(SIG, **{"for": -1}),
        "opens tcp/40008",
    ]
    for sig in bad:
        assert spot_of(sig) is None, sig
    assert spot_of(dict(SIG, **{"for": 1e9})).seconds == 300.0  # capped
    ann, host, _, _ = make()
    assert ann.announce(where(), 1, bad, ANSWER) == (ANSWER, bad)
    assert not spelt_at(ANSWER, AT + 1, 4, "decimal") and spelt_at(ANSWER, AT, 5, "decimal")


def test_draws_never_give_a_privileged_port() -> None:
    rng = random.Random(1)
    assert draw_port(b"21", "decimal", rng, ()) is None  # no 2-digit port >= 1024
    pairs = [draw_port(b"4,1", "pair", rng, ()) for _ in range(200)]
    assert all(p is None or 1024 <= p <= 9 * 256 + 9 for p in pairs) and any(pairs)
    assert all(1024 <= draw_port(b"8080", "decimal", rng, ()) <= 9999 for _ in range(200))


def test_stop_closes_every_drawn_port() -> None:
    ann, host, _, _ = make()
    for i in range(3):
        ann.announce(where(f"127.0.0.{i}"), 1, [SIG], ANSWER)
    ann.stop()
    assert host.live() == [] and ann.live == {}
