"""Session-dependency inference on hand-built machines and contacts (no captures, no network)."""

from __future__ import annotations

from scriptgen.learn.sessions import (
    Contact,
    SessionOptions,
    SessionRecorder,
    announces,
    apply,
    infer,
    parse_target,
    request_times,
)
from scriptgen.model import Machine, Pattern, Transition
from scriptgen.trace.types import Conversation, Direction, Endpoint, Message, Outcome

A = ("tcp", 9139)
B = ("tcp", 4444)


def chain(key: tuple[str, int], requests: list[bytes], answers: list[bytes]) -> Machine:
    """A machine whose states follow ``requests`` one after the other."""
    m = Machine(*key)
    state = m.states[m.root]
    for req, ans in zip(requests, answers, strict=True):
        nxt = m.new_state()
        nxt.answer = ans
        state.transitions.append(Transition(Pattern.literal(req), nxt.id, 1))
        state = nxt
    return m


EXPLOIT = [b"HELLO\r\n", b"LOGIN\r\n", b"EXPLOIT\r\n"]


def exploit_machines() -> dict:
    return {
        A: chain(A, EXPLOIT, [b"hi", b"ok", b"boom"]),
        B: Machine(*B),
    }


def attempt(key, src, t, ok=True, reqs=(), end=None, step=0.01) -> Contact:
    times = tuple(t + step * (i + 1) for i in range(len(reqs)))
    return Contact(
        key[0], key[1], src, t, ok, end if end is not None else t + 1.0, tuple(reqs), times
    )


def exploit_run(src: str, t: float, check: bool = True, delay: float = 0.2) -> list[Contact]:
    runs = [attempt(B, src, t, ok=False)] if check else []
    runs.append(attempt(A, src, t + 0.1, reqs=EXPLOIT, end=t + 0.15))
    runs.append(attempt(B, src, t + 0.15 + delay))
    return runs


def test_exploit_then_shell_gives_a_signal_on_the_last_state() -> None:
    machines = exploit_machines()
    contacts = [c for i in range(10) for c in exploit_run(f"10.0.0.{i}", 100.0 * i)]
    report = infer(contacts, machines)
    assert len(report.findings) == 1, report.rejections
    f = report.findings[0]
    last = machines[A].states[3]
    assert (f.key, f.state, f.target, f.mode) == (A, last.id, B, "refused")
    assert f.samples == 10 and f.sources == 10 and f.refused == 10
    assert 0.2 < f.max_delay < 0.25
    assert f.duration == SessionOptions().min_for  # 2 x 0.22 s is below the floor
    assert apply(report.findings, machines) == 1
    assert last.signals == [f.signal()]
    assert last.signals[0]["opens"] == "tcp/4444"
    assert all(not s.signals for s in machines[A].states.values() if s is not last)


def test_port_that_is_always_open_gives_no_signal() -> None:
    machines = exploit_machines()
    contacts = [c for i in range(10) for c in exploit_run(f"10.0.0.{i}", 100.0 * i)]
    contacts.append(attempt(B, "10.0.0.99", 5000.0))  # open without any cause
    report = infer(contacts, machines)
    assert report.findings == []
    assert any("without a cause" in r.reason for r in report.rejections)


def test_unrelated_traffic_from_the_same_source_gives_no_signal() -> None:
    machines = exploit_machines()
    # Always A then B, B never refused and never named by A: a habit, not a dependency.
    contacts = [c for i in range(20) for c in exploit_run(f"10.0.0.{i}", 100.0 * i, check=False)]
    report = infer(contacts, machines)
    assert report.findings == []
    assert report.rejections and "no announcement" in report.rejections[0].reason


def test_refused_after_reaching_the_state_contradicts() -> None:
    machines = exploit_machines()
    contacts = [c for i in range(10) for c in exploit_run(f"10.0.0.{i}", 100.0 * i)]
    # One source is refused 1 s after reaching the final state: it does not open B.
    contacts.append(attempt(A, "10.0.0.50", 2000.0, reqs=EXPLOIT))
    contacts.append(attempt(B, "10.0.0.50", 2001.0, ok=False))
    report = infer(contacts, machines)
    assert report.findings == []
    assert any("refused attempts within" in r.reason for r in report.rejections)


def test_too_few_samples_give_no_signal() -> None:
    machines = exploit_machines()
    contacts = [c for i in range(2) for c in exploit_run(f"10.0.0.{i}", 100.0 * i)]
    report = infer(contacts, machines)
    assert report.findings == []
    assert "only 2 samples" in report.rejections[0].reason


def test_cause_outside_the_window_is_no_cause() -> None:
    machines = exploit_machines()
    contacts = [c for i in range(10) for c in exploit_run(f"10.0.0.{i}", 1000.0 * i, delay=120.0)]
    report = infer(contacts, machines, SessionOptions(window=60.0))
    assert report.findings == []


def test_duration_is_margin_times_longest_delay() -> None:
    machines = exploit_machines()
    contacts = [c for i in range(5) for c in exploit_run(f"10.0.0.{i}", 1000.0 * i, delay=4.0 + i)]
    (f,) = infer(contacts, machines).findings
    assert abs(f.max_delay - 8.02) < 1e-6  # reached at t + 0.13, B at t + 8.15
    assert abs(f.duration - 2 * 8.02) < 1e-6


PASV = [b"USER a\r\n", b"PASS b\r\n", b"EPSV\r\n"]
DATA = ("tcp", 40000)
CTRL = ("tcp", 2121)


def ftp_machines(epsv_answer: bytes = b"229 Entering Extended Passive Mode (|||40000|)\r\n"):
    return {
        CTRL: chain(CTRL, PASV, [b"331 pw\r\n", b"230 in\r\n", epsv_answer]),
        DATA: Machine(*DATA),
    }


def ftp_run(src: str, t: float, during: bool = True) -> list[Contact]:
    ctrl = attempt(CTRL, src, t, reqs=PASV + [b"LIST\r\n"], end=t + 1.0, step=0.05)
    data_at = t + 0.2 if during else t + 1.5
    return [ctrl, attempt(DATA, src, data_at, end=data_at + 0.01)]


def test_passive_data_port_is_announced() -> None:
    machines = ftp_machines()
    contacts = [c for i in range(6) for c in ftp_run("127.0.0.1", 10.0 * i)]
    (f,) = infer(contacts, machines).findings
    assert (f.key, f.state, f.target, f.mode, f.refused) == (CTRL, 3, DATA, "announced", 0)


def test_two_decimal_bytes_form_is_an_announcement() -> None:
    machines = ftp_machines(b"227 Entering Passive Mode (127,0,0,2,156,64).\r\n")
    contacts = [c for i in range(6) for c in ftp_run("127.0.0.1", 10.0 * i)]
    assert [f.mode for f in infer(contacts, machines).findings] == ["announced"]


def test_announcement_without_the_port_is_no_signal() -> None:
    machines = ftp_machines(b"229 Entering Extended Passive Mode (|||40001|)\r\n")
    contacts = [c for i in range(6) for c in ftp_run("127.0.0.1", 10.0 * i)]
    assert infer(contacts, machines).findings == []


def test_port_named_by_chance_after_the_conversation_is_no_signal() -> None:
    machines = ftp_machines()
    contacts = [c for i in range(6) for c in ftp_run("127.0.0.1", 10.0 * i, during=False)]
    assert infer(contacts, machines).findings == []


def test_announced_port_that_was_refused_needs_refused_evidence() -> None:
    machines = ftp_machines()
    contacts = [c for i in range(6) for c in ftp_run("127.0.0.1", 10.0 * i)]
    contacts.append(attempt(DATA, "127.0.0.9", 500.0, ok=False))
    assert infer(contacts, machines).findings == []


def test_announces() -> None:
    assert announces(b"(|||40000|)", 40000)
    assert announces(b"(127,0,0,1,156,64)", 40000)
    assert not announces(b"(|||140000|)", 40000)
    assert not announces(b"400001", 40000)
    assert not announces(b"\x9c\x40", 40000)


def test_apply_merges_with_a_signal_learned_before() -> None:
    machines = exploit_machines()
    contacts = [c for i in range(5) for c in exploit_run(f"10.0.0.{i}", 100.0 * i)]
    findings = infer(contacts, machines).findings
    apply(findings, machines)
    apply(findings, machines)
    (sig,) = machines[A].states[3].signals
    assert sig["samples"] == 10 and sig["opens"] == "tcp/4444"


def test_parse_target_rejects_hostile_values() -> None:
    assert parse_target("tcp/4444") == ("tcp", 4444)
    for bad in (None, 4444, "tcp", "tcp/0", "tcp/70000", "sctp/1", "tcp/-1", "tcp/1x", ["tcp/1"]):
        assert parse_target(bad) is None


def conv(port: int, src: str, t: float, msgs, outcome=Outcome.CLOSED) -> Conversation:
    return Conversation(
        "tcp",
        Endpoint(src, 40001),
        Endpoint("127.0.0.2", port),
        t,
        t + 1,
        [Message(d, data, ts) for d, data, ts in msgs],
        outcome,
        Direction.CLIENT,
    )


def test_recorder_keeps_refused_attempts_and_request_times() -> None:
    c, s = Direction.CLIENT, Direction.SERVER
    rec = SessionRecorder()
    seq = [
        conv(4444, "10.0.0.1", 1.0, [], Outcome.REFUSED),
        conv(
            9139,
            "10.0.0.1",
            2.0,
            [(s, b"hi", 2.0), (c, b"A", 2.1), (c, b"B", 2.2), (s, b"x", 2.3), (c, b"C", 2.4)],
        ),
    ]
    assert list(rec.tee(seq)) == seq
    refused, talk = rec.contacts
    assert not refused.accepted and refused.port == 4444
    assert talk.accepted and talk.requests == (b"AB", b"C") and talk.times == (2.1, 2.4)
    assert request_times(seq[1], 2) == (2.1, 2.4)


def test_recorder_is_bounded() -> None:
    rec = SessionRecorder(SessionOptions(max_contacts=3))
    for i in range(10):
        rec.observe(conv(4444, "10.0.0.1", float(i), [], Outcome.REFUSED))
    assert len(rec.contacts) == 3 and rec.dropped == 7


def sibling_contacts(runs: int, refused_for: set[int]) -> list[Contact]:
    contacts = []
    for i in range(runs):
        reqs = EXPLOIT[:2] + [b"EXPLOIT%d\r\n" % (1 + i % 2)]
        if i in refused_for:
            contacts += [attempt(B, f"10.0.0.{i}", 100.0 * i, ok=False)]
        contacts += [attempt(A, f"10.0.0.{i}", 100.0 * i + 0.1, reqs=reqs, end=100.0 * i + 0.2)]
        contacts += [attempt(B, f"10.0.0.{i}", 100.0 * i + 0.4)]
    return contacts


def sibling_machines() -> dict:
    m = chain(A, EXPLOIT[:2], [b"hi", b"ok"])
    for word in (b"EXPLOIT1\r\n", b"EXPLOIT2\r\n"):
        sibling = m.new_state()
        m.states[2].transitions.append(Transition(Pattern.literal(word), sibling.id, 1))
    return {A: m, B: Machine(*B)}


def test_sibling_states_share_the_port_thresholds() -> None:
    """A learned machine may split the last step in two; both siblings emit the signal."""
    report = infer(sibling_contacts(4, {0, 1, 2, 3}), sibling_machines())
    assert sorted((f.state, f.samples) for f in report.findings) == [(3, 2), (4, 2)]


def test_every_sibling_needs_evidence_of_its_own() -> None:
    # Runs through EXPLOIT2 (odd runs) never saw the port closed before: no signal at all.
    report = infer(sibling_contacts(6, {0, 2, 4}), sibling_machines())
    assert report.findings == []
    assert "state 4: 0 refused-before samples (3 in all" in report.rejections[0].reason


def test_a_port_scan_gives_no_signal() -> None:
    """Sources sweeping ports (most refused, every tenth open) in a fixed order: no signal."""
    contacts = []
    for s in range(30):
        t = 100.0 * s
        for p in range(40):
            ok = p % 10 == 0
            at = t + p * 0.01
            reqs = (b"x",) if ok else ()
            contacts.append(
                Contact("tcp", 1000 + p, f"10.0.{s}.1", at, ok, at + 0.1, reqs, (at + 0.01,) * ok)
            )
    machines = {("tcp", 1000 + p): Machine("tcp", 1000 + p) for p in range(0, 40, 10)}
    report = infer(contacts, machines)
    assert report.findings == []
    assert len(report.rejections) == 4
