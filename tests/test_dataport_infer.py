"""Ports drawn per answer, learned: where an answer names the port the client connects
to next, which learned machine serves it, and content inference leaving those bytes alone.

Hand-built machines and contacts (no captures, no network); the real-server
case is tests/test_dataport_ftp.py.
"""

from __future__ import annotations

from scriptgen.learn.content import infer_dependencies
from scriptgen.learn.dialog import Dialog
from scriptgen.learn.sessions import (
    Contact,
    SessionOptions,
    announced_at,
    apply,
    infer,
    read_port,
)
from scriptgen.model import Machine, Pattern, Suffix, Transition, Turn

CTRL = ("tcp", 2121)
REQUESTS = [b"USER a\r\n", b"PASS b\r\n", b"EPSV\r\n"]
FIRST = 40000


def epsv(port: int) -> bytes:
    return b"229 Entering Extended Passive Mode (|||%d|)\r\n" % port


def pasv(port: int) -> bytes:
    return b"227 Entering Passive Mode (127,0,0,2,%d,%d).\r\n" % (port >> 8, port & 0xFF)


def machines(template: bytes, contents: dict[int, bytes]) -> dict:
    """The control machine (a chain ending on ``template``) and one machine per data port
    whose root answer is its content."""
    m = Machine(*CTRL)
    state = m.states[m.root]
    m.states[m.root].answer = b"220 hi\r\n"
    for req, ans in zip(REQUESTS, [b"331 pw\r\n", b"230 in\r\n", template], strict=True):
        nxt = m.new_state()
        nxt.answer = ans
        state.transitions.append(Transition(Pattern.literal(req), nxt.id, 1))
        state = nxt
    out = {CTRL: m}
    for port, content in contents.items():
        data = Machine("tcp", port)
        data.states[data.root].answer = content
        out[("tcp", port)] = data
    return out


def run(src: str, t: float, port: int, said: bytes, content: bytes) -> list[Contact]:
    """One client run: control connection (the announcement at t + 0.15), then the
    data connection right after, while the control connection is still open."""
    times = (t + 0.05, t + 0.1, t + 0.15)
    answers = (b"220 hi\r\n", b"331 pw\r\n", b"230 in\r\n", said)
    ctrl = Contact("tcp", CTRL[1], src, t, True, t + 1.0, tuple(REQUESTS), times, answers)
    data = Contact("tcp", port, src, t + 0.2, True, t + 0.3, (), (), (content,))
    return [ctrl, data]


def runs(n: int, spell=epsv, ports=None, content=b"file\n") -> list[Contact]:
    ports = ports or [FIRST + i for i in range(n)]
    return [
        c for i, p in enumerate(ports) for c in run("127.0.0.1", 10.0 * i, p, spell(p), content)
    ]


def drawn(findings):
    return [f for f in findings if f.announce is not None]


def test_the_place_of_a_port_drawn_per_answer_is_learned() -> None:
    ms = machines(epsv(FIRST), {FIRST + i: b"file\n" for i in range(6)})
    report = infer(runs(6), ms)
    (f,) = drawn(report.findings)
    assert (f.key, f.state, f.target, f.mode) == (CTRL, 3, ("tcp", FIRST), "announced")
    assert f.announce == {"at": epsv(FIRST).index(b"40000"), "len": 5, "form": "decimal"}
    assert f.samples == 6 and f.sources == 1
    assert apply(report.findings, ms) >= 1
    (sig,) = [s for s in ms[CTRL].states[3].signals if "announce" in s]
    assert sig["opens"] == "tcp/40000" and sig["announce"] == f.announce


def test_two_decimal_bytes_form_is_learned_with_its_length() -> None:
    ms = machines(pasv(FIRST), {FIRST + i: b"file\n" for i in range(6)})
    (f,) = drawn(infer(runs(6, spell=pasv), ms).findings)
    assert f.announce == {"at": pasv(FIRST).index(b"156,64"), "len": 6, "form": "pair"}


def test_a_fixed_port_is_not_drawn() -> None:
    """The server always named the same port: it is announced and gated as learned."""
    ms = machines(epsv(FIRST), {FIRST: b"file\n"})
    report = infer(runs(6, ports=[FIRST] * 6), ms)
    assert drawn(report.findings) == []
    assert [f.target for f in report.findings] == [("tcp", FIRST)]  # the per-port signal stays
    assert any("too few to draw ports" in r.reason for r in report.rejections)


def test_a_connection_its_answer_did_not_announce_spoils_the_state() -> None:
    ms = machines(epsv(FIRST), {FIRST + i: b"file\n" for i in range(6)})
    contacts = runs(6)
    contacts += run("127.0.0.1", 100.0, FIRST + 7, epsv(FIRST + 8), b"file\n")  # named another
    assert drawn(infer(contacts, ms).findings) == []


def test_a_port_also_used_without_a_cause_is_no_evidence() -> None:
    ms = machines(epsv(FIRST), {FIRST + i: b"file\n" for i in range(6)})
    contacts = runs(6)
    contacts.append(Contact("tcp", FIRST + 2, "127.0.0.9", 500.0, True, 501.0, (), (), (b"",)))
    assert drawn(infer(contacts, ms).findings) == []


def test_the_served_machine_is_the_one_that_gave_what_the_state_saw() -> None:
    """Each data port's machine was learned from whichever runs got that number; the
    one that answers what this state's connections carried serves its drawn port."""
    contents = {FIRST + i: b"listing\n" for i in range(6)}
    contents[FIRST + 4] = b"the file\n"
    ms = machines(epsv(FIRST), contents)
    (f,) = drawn(infer(runs(6, content=b"the file\n"), ms).findings)
    assert f.target == ("tcp", FIRST + 4)


def test_apply_drops_content_dependencies_on_the_announced_bytes() -> None:
    ms = machines(epsv(FIRST), {FIRST + i: b"file\n" for i in range(6)})
    at = epsv(FIRST).index(b"40000")
    state = ms[CTRL].states[3]
    state.dependencies = [
        {"kind": "random", "at": at + 3, "len": 2},
        {"kind": "random", "at": 0, "len": 3},
    ]
    apply(infer(runs(6), ms).findings, ms)
    assert state.dependencies == [{"kind": "random", "at": 0, "len": 3}]


def epsv_dialogs(n: int) -> list[Dialog]:
    turns = [b"331 pw\r\n", b"230 in\r\n"]
    return [
        Dialog(
            "tcp",
            CTRL[1],
            b"220 hi\r\n",
            Suffix(
                tuple(
                    Turn(r, a)
                    for r, a in zip(REQUESTS, [*turns, epsv(FIRST + 11 * i)], strict=True)
                )
            ),
        )
        for i in range(n)
    ]


def test_content_inference_leaves_the_announced_port_alone() -> None:
    ms = machines(epsv(FIRST), {})
    state = ms[CTRL].states[3]
    infer_dependencies(ms[CTRL], epsv_dialogs(6))
    assert [d["kind"] for d in state.dependencies] == ["random"]  # the digits, without a signal
    at = epsv(FIRST).index(b"40000")
    state.signals = [{"kind": "session", "opens": "tcp/40000", "for": 5.0,
                      "announce": {"at": at, "len": 5, "form": "decimal"}}]  # fmt: skip
    infer_dependencies(ms[CTRL], epsv_dialogs(6))
    assert state.dependencies == []


def test_spelling_helpers() -> None:
    assert announced_at(b"(|||40000|) 400001", 40000) == {("decimal", 4)}
    assert announced_at(b"(1,2,3,4,156,64)", 40000) == {("pair", 9)}
    assert read_port(b"(|||40000|)", 4, "decimal") == (40000, 5)
    assert read_port(b"(|||40000|)", 5, "decimal") is None  # inside a number
    assert read_port(b"x 156,64)", 2, "pair") == (40000, 6)
    assert read_port(b"x 256,1)", 2, "pair") is None  # not a byte
    assert read_port(b"x 0,80)", 2, "pair") == (80, 4)
    for bad in (b"x 070000", b"x 00021", b"x 99999", b"x 0)"):
        assert read_port(bad, 2, "decimal") is None, bad


def test_recorded_answers_are_bounded() -> None:
    from scriptgen.learn.sessions import SessionRecorder
    from scriptgen.trace.types import Direction
    from tests.test_sessions_infer import conv

    rec = SessionRecorder(SessionOptions(max_answer_bytes=4))
    c, s = Direction.CLIENT, Direction.SERVER
    rec.observe(conv(21, "10.0.0.1", 1.0, [(s, b"220 hello", 1.0), (c, b"X", 1.1), (s, b"5", 1.2)]))
    rec.observe(conv(40000, "10.0.0.1", 2.0, []))  # accepted, nothing said either way
    assert rec.contacts[0].answers == (b"220 ", b"5")
    assert rec.contacts[1].answers == (b"",)
