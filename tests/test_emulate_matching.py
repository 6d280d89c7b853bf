"""The per-state index must give exactly State.best_transition's answer, and
must look at few candidates when a state has many anchored transitions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scriptgen.emulate.dialog import Dialog, Matched, Unmatched, Waiting
from scriptgen.emulate.matching import CompiledMachine, StateIndex
from scriptgen.model import Machine, Pattern, Region, State, Transition
from tests.test_emulate_support import line_machine

ALPHABET = b"ab\x00\r\n"
small_bytes = st.binary(min_size=0, max_size=6).map(
    lambda b: bytes(ALPHABET[x % len(ALPHABET)] for x in b)
)
fixed_region = st.binary(min_size=1, max_size=3).map(
    lambda b: Region(bytes(ALPHABET[x % len(ALPHABET)] for x in b))
)
mutating_region = st.tuples(st.integers(0, 3), st.integers(0, 3)).map(
    lambda t: Region.mutating(min(t), max(t))
)
patterns = st.lists(st.one_of(fixed_region, mutating_region), min_size=1, max_size=4).map(
    lambda rs: Pattern(tuple(rs))
)


@settings(max_examples=150, deadline=None)
@given(st.lists(patterns, min_size=1, max_size=8), st.lists(small_bytes, min_size=1, max_size=10))
def test_index_agrees_with_best_transition(pats: list[Pattern], requests: list[bytes]) -> None:
    state = State(0, transitions=[Transition(p, 0) for p in pats])
    index = StateIndex.build(state)
    for req in requests:
        expected = state.best_transition(req)
        got = index.best(req)
        if expected is None:
            assert got is None
        else:
            assert got is not None and got.transition is expected[0]
        assert index.could_extend(req) == any(p.could_extend(req) for p in pats)


def test_many_anchored_transitions_meet_few_candidates() -> None:
    state = State(0)
    for i in range(1000):
        state.transitions.append(
            Transition(
                Pattern((Region(b"CMD%04d " % i), Region.mutating(0, 8), Region(b"\r\n"))), 0
            )
        )
    index = StateIndex.build(state)
    assert len(index.candidates(b"CMD0512 xyz\r\n")) <= 10
    assert index.best(b"CMD0512 xyz\r\n").order == 512


def test_constant_offset_anchor_after_fixed_length_mutating_region() -> None:
    """A binary header (2 varying id bytes, then a fixed command) is still indexed."""
    state = State(0)
    for i in range(200):
        state.transitions.append(
            Transition(Pattern((Region.mutating(2, 2), Region(bytes([1, i, 0xEE])))), 0)
        )
    index = StateIndex.build(state)
    assert not index.floating
    data = b"\x12\x34" + bytes([1, 77, 0xEE])
    assert len(index.candidates(data)) == 1
    assert index.best(data).order == 77


def test_unanchored_patterns_still_match() -> None:
    state = State(0, transitions=[Transition(Pattern((Region.mutating(1, 50),)), 0)])
    index = StateIndex.build(state)
    assert index.floating and index.best(b"anything") is not None


def dialog(machine: Machine | None = None) -> Dialog:
    return Dialog(CompiledMachine.build(machine or line_machine()), 1000)


def test_dialog_waits_for_incomplete_request() -> None:
    d = dialog()
    assert d.feed(b"USER b") == []
    assert d.waiting is Waiting.MORE
    steps = d.feed(b"ob\r\n")
    assert [type(s) for s in steps] == [Matched] and steps[0].request == b"USER bob\r\n"
    assert d.waiting is Waiting.NOTHING


def test_dialog_expire_declares_incomplete_unmatched() -> None:
    d = dialog()
    d.feed(b"USER b")
    steps = d.expire()
    assert isinstance(steps[0], Unmatched) and steps[0].reason == "request_timeout"
    assert d.buffer == b""


def test_dialog_settle_takes_match() -> None:
    d = dialog()
    assert d.feed(b"PING") == [] and d.waiting is Waiting.SETTLE
    steps = d.settle()
    assert isinstance(steps[0], Matched) and steps[0].target.answer == b"+PONG\r\n"


def test_open_ended_payload_waits_for_settle() -> None:
    """A request whose final mutating region has room may be cut by a segment boundary."""
    m = Machine("tcp", 1)
    s = m.new_state()
    m.states[0].transitions.append(
        Transition(Pattern((Region(b"\x00\x01"), Region.mutating(1, 500))), s.id)
    )
    d = dialog(m)
    assert d.feed(b"\x00\x01" + b"x" * 100) == []
    assert d.waiting is Waiting.SETTLE
    steps = d.feed(b"y" * 50)
    assert steps == [] and d.waiting is Waiting.SETTLE
    (step,) = d.settle()
    assert len(step.request) == 152


def test_generic_pattern_does_not_swallow_pipelined_specific_requests() -> None:
    m = Machine("tcp", 1)
    ping = m.new_state()
    other = m.new_state()
    for s in (m.states[0], ping, other):
        s.transitions.append(Transition(Pattern.literal(b"PING\r\n"), ping.id))
        s.transitions.append(
            Transition(Pattern((Region.mutating(1, 100), Region(b"\r\n"))), other.id)
        )
    d = dialog(m)
    steps = d.feed(b"PING\r\nPING\r\nHELLO\r\n")
    assert [s.request for s in steps] == [b"PING\r\n", b"PING\r\n", b"HELLO\r\n"]
    assert [s.target.id for s in steps] == [ping.id, ping.id, other.id]


def test_udp_datagram_is_one_request() -> None:
    d = dialog(line_machine(protocol="udp"))
    step = d.datagram(b"PING\r\nPING\r\n")
    assert isinstance(step, Unmatched)
    step = d.datagram(b"PING\r\n")
    assert isinstance(step, Matched) and d.state.id == 1


requests_of_line_machine = st.lists(
    st.sampled_from(
        [b"PING\r\n", b"PING", b"PINGALL\r\n", b"USER ab\r\n", b"USER x\r\n", b"\x00junk"]
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=100, deadline=None)
@given(requests_of_line_machine, st.lists(st.integers(1, 7), min_size=1, max_size=30))
def test_decision_cache_never_changes_the_outcome(reqs: list[bytes], cuts: list[int]) -> None:
    """Where requests end depends only on (state, buffer): a warm cache gives the same steps."""
    stream = b"".join(reqs)
    chunks, i = [], 0
    for c in cuts * (len(stream) // max(1, sum(cuts)) + 1):
        if i >= len(stream):
            break
        chunks.append(stream[i : i + c])
        i += c

    def run(compiled: CompiledMachine) -> list[tuple[str, bytes]]:
        d = Dialog(compiled, 1000)
        out = []
        for chunk in chunks:
            out += [(type(s).__name__, getattr(s, "request", b"")) for s in d.feed(chunk)]
        out += [(type(s).__name__, getattr(s, "request", b"")) for s in d.settle()]
        return out

    cold = CompiledMachine.build(line_machine())
    first = run(cold)
    second = run(cold)  # same machine: its caches are warm now
    assert first == second
    cold.decisions.clear()
    assert run(cold) == first


def test_decision_cache_is_bounded() -> None:
    from scriptgen.emulate.matching import CACHE_ENTRIES

    compiled = CompiledMachine.build(line_machine())
    for i in range(CACHE_ENTRIES * 3):
        Dialog(compiled, 1000).feed(b"junk%d" % i)
    assert 0 < len(compiled.decisions) <= CACHE_ENTRIES


def test_trickled_big_request_is_judged_a_logarithmic_number_of_times() -> None:
    """One byte per segment into a request that may be 100 kB long: re-judging the
    whole buffer on every byte would be quadratic work."""
    m = Machine("tcp", 1)
    s = m.new_state()
    s.answer = b"ok"
    m.states[0].transitions.append(
        Transition(Pattern((Region(b"X "), Region.mutating(1, 100000), Region(b"\r\n"))), s.id)
    )
    d = Dialog(CompiledMachine.build(m), 70000)
    d.feed(b"X ")
    for _ in range(60000):
        assert d.feed(b"a") == []
    assert d.judgements < 4096 + 100  # every byte up to LAZY_FROM, then ~log(n) more
    assert d.waiting is Waiting.SETTLE  # the transport's settle timer judges a pause
    steps = d.feed(b"\r\n")
    if not steps:
        steps = d.settle()
    assert isinstance(steps[0], Matched) and len(steps[0].request) == 60004


def test_backtracking_pattern_runs_out_of_time_as_unmatched() -> None:
    """Several mutating regions between repeated fixed bytes: hostile input makes
    the regex engine backtrack for a long time; a deadline turns that into
    an unmatched request instead of a stalled reactor."""
    import time

    m = Machine("tcp", 1)
    s = m.new_state()
    regions: list[Region] = []
    for _ in range(4):
        regions += [Region(b"A"), Region.mutating(0, 5000)]
    m.states[0].transitions.append(Transition(Pattern((*regions, Region(b"B"))), s.id))
    d = Dialog(CompiledMachine.build(m, timeout=0.005), 70000)
    started = time.monotonic()
    steps = d.feed(b"A" * 4000 + b"C")
    assert time.monotonic() - started < 1.0
    assert len(steps) == 1 and isinstance(steps[0], Unmatched)
    assert steps[0].reason == "match_timeout"


def test_trickled_big_payload_that_already_matches_is_judged_lazily() -> None:
    """A payload pattern (open-ended tail) matches after its header: waiting to
    settle must not turn into re-judging the whole buffer on every byte."""
    m = Machine("tcp", 1)
    s = m.new_state()
    m.states[0].transitions.append(
        Transition(Pattern((Region(b"\x00\x01"), Region.mutating(1, 100000))), s.id)
    )
    d = Dialog(CompiledMachine.build(m), 70000)
    d.feed(b"\x00\x01x")
    assert d.waiting is Waiting.SETTLE
    for _ in range(60000):
        assert d.feed(b"y") == []
    assert d.judgements < 4096 + 100
    (step,) = d.settle()
    assert isinstance(step, Matched) and len(step.request) == 60003


def test_wide_region_patterns_split_and_check_lengths() -> None:
    """Regions wider than a counted repeat compile to ``.*`` (Region.is_loose):
    splitting pipelined requests and the length bound still hold."""
    m = Machine("tcp", 1)
    s = m.new_state()
    for st_ in (m.states[0], s):
        st_.transitions.append(
            Transition(Pattern((Region(b"X "), Region.mutating(2, 10000), Region(b"\r\n"))), s.id)
        )
    assert m.states[0].transitions[0].pattern.regions[1].is_loose
    d = Dialog(CompiledMachine.build(m), 70000)
    steps = d.feed(b"X ab\r\nX cd\r\n")
    assert [st.request for st in steps] == [b"X ab\r\n", b"X cd\r\n"]
    d = Dialog(CompiledMachine.build(m), 70000)
    steps = d.feed(b"X a\r\n")  # 'a' is shorter than the region's minimum: not this request
    assert not any(isinstance(st, Matched) for st in steps)
