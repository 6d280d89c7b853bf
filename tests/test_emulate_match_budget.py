"""One request's regex work is bounded in total (matching.Budget), not per evaluation:
a hostile request used to cost one match timeout per candidate rule, per pass of
the dialog and per back-off state."""

from __future__ import annotations

import itertools
import time

import pytest

from scriptgen.emulate.dialog import Dialog, Matched, Unmatched
from scriptgen.emulate.matching import Budget, CompiledMachine, MatchTimeout, StateIndex
from scriptgen.model import Machine, Pattern, Region, Transition


def _backtracking(arms: int, width: int, tail: bytes = b"B") -> Pattern:
    """``A<0..width>`` repeated ``arms`` times, then ``tail``: on ``A`` * n the lazy
    prefix search backtracks polynomially (n ** arms)."""
    regions: list[Region] = []
    for _ in range(arms):
        regions += [Region(b"A"), Region.mutating(0, width)]
    return Pattern((*regions, Region(tail)))


def _chain(depth: int, rules: int, arms: int) -> tuple[Machine, list[bytes]]:
    """States 0..depth, each left by ``STEPi`` and by ``rules`` backtracking
    patterns; the steps lead to the last state, whose back-off visits them all."""
    m = Machine("tcp", 1)
    state = m.states[m.root]
    steps = []
    for d in range(depth):
        nxt = m.new_state()
        nxt.answer = b"ok"
        for i in range(rules):
            state.transitions.append(Transition(_backtracking(arms, 5000 - i), nxt.id))
        state.transitions.append(Transition(Pattern((Region(b"STEP%d\r\n" % d),)), nxt.id))
        steps.append(b"STEP%d\r\n" % d)
        state = nxt
    return m, steps


def _walk(compiled: CompiledMachine, steps: list[bytes]) -> Dialog:
    d = Dialog(compiled, 70000, backoff=True)
    for step in steps:
        (got,) = d.feed(step)
        assert isinstance(got, Matched)
    return d


def test_back_off_states_share_one_budget() -> None:
    """20 earlier states, each with a pattern that surely times out: each back-off
    state used to cost a whole timeout (21 x 20 ms = 0.42 s); now about one."""
    timeout = 0.02
    m, steps = _chain(depth=20, rules=1, arms=4)
    compiled = CompiledMachine.build(m, timeout=timeout)
    d = _walk(compiled, steps)
    started = time.perf_counter()
    out = d.feed(b"A" * 4000 + b"C")
    elapsed = time.perf_counter() - started
    assert len(out) == 1 and isinstance(out[0], Unmatched)
    assert elapsed < 5 * timeout, elapsed
    # The next request, on another connection, has a budget of its own.
    d2 = _walk(compiled, steps[:1])
    (got,) = d2.feed(b"STEP1\r\n")
    assert isinstance(got, Matched)


def test_many_slow_candidates_stop_at_the_budget() -> None:
    """20 candidate rules whose evaluations each stay under the per-run timeout (1 s)
    but take milliseconds: without a total they all run, twice (splits and prefix
    matches); with a 20 ms budget the request is unmatched after about 20 ms."""
    m, _ = _chain(depth=1, rules=20, arms=3)
    probe = StateIndex.build(m.states[m.root], timeout=5.0).rules[0]
    size = 150
    while True:  # a request long enough that one evaluation takes a few ms here
        started = time.perf_counter()
        probe.shortest_prefix(b"A" * size + b"C")
        one = time.perf_counter() - started
        if one >= 0.004 or size > 2000:
            break
        size += 50
    assert one < 1.0
    budget = Budget(0.02)
    states = {sid: StateIndex.build(s, 1.0, budget) for sid, s in m.states.items()}
    compiled = CompiledMachine(m, states, m.root, budget=budget)
    d = Dialog(compiled, 70000, backoff=True)
    started = time.perf_counter()
    out = d.feed(b"A" * size + b"C") + d.settle() + d.expire()
    elapsed = time.perf_counter() - started
    assert isinstance(out[0], Unmatched) and out[0].reason == "match_timeout"
    assert elapsed < 0.02 + 3 * one + 0.05, (elapsed, one)  # was >= 40 x one


def test_budget_applies_only_inside_a_judgement() -> None:
    """Live values of a match (content dependencies) are read after the judgement
    closed: a spent budget does not make them fail."""
    m = Machine("tcp", 1)
    s = m.new_state()
    pattern = Pattern((Region(b"GET "), Region.mutating(1, 20), Region(b"\r\n")))
    m.states[m.root].transitions.append(Transition(pattern, s.id))
    compiled = CompiledMachine.build(m, timeout=0.05)
    (step,) = Dialog(compiled, 1000).feed(b"GET abc\r\n")
    assert isinstance(step, Matched)
    compiled.budget.spent = 10.0  # as if the last judgement had spent everything
    assert step.match() is not None
    compiled.budget.open(b"other")  # a new judgement: a new budget
    assert compiled.budget.allowance(1.0) == 0.05


def test_spent_budget_is_a_match_timeout() -> None:
    budget = Budget(0.01)
    request = bytes(range(40))
    budget.open(request)
    budget.charge(0.02)
    with pytest.raises(MatchTimeout):
        budget.allowance(0.05)
    budget.close()
    assert budget.allowance(0.05) == 0.05  # outside a judgement: the per-run timeout
    budget.open(request)  # the same buffer object again (back-off, settled): the same request
    assert budget.spent == 0.02
    budget.open(bytes(range(40)))  # equal bytes of another request: a budget of its own
    assert budget.spent == 0.0


def test_a_datagram_and_its_back_off_states_share_one_budget() -> None:
    """Dialog.datagram asks each state (current, then back-off) for the best rule;
    each ask spends the budget of that datagram. A clock that says every regex
    run took 1 s: a budget of 1.5 s allows two runs, so the root's matching rule
    (a third run) is never reached; a bigger budget reaches it."""
    ticks = itertools.count()

    def clock() -> float:  # read before and after each run: 1 s per run
        return float(next(ticks))

    m = Machine("udp", 1)
    one, two = m.new_state(), m.new_state()
    general = Pattern((Region(b"Q"), Region.mutating(1, 10)))
    m.states[m.root].transitions.append(Transition(general, one.id))
    for state, nxt in ((one, two), (two, two)):
        state.transitions.append(
            Transition(Pattern((Region(b"Q"), Region.mutating(1, 5), Region(b"!"))), nxt.id)
        )
    for seconds, expected in ((1.5, Unmatched), (10.0, Matched)):
        budget = Budget(seconds, clock)
        states = {sid: StateIndex.build(s, 1.0, budget) for sid, s in m.states.items()}
        d = Dialog(CompiledMachine(m, states, m.root, budget=budget), 1000, backoff=True)
        assert isinstance(d.datagram(b"Q ab!"), Matched)  # root -> one
        assert isinstance(d.datagram(b"Q cd!"), Matched)  # one -> two
        step = d.datagram(b"Q yyy")  # no "!": only the root's general rule matches
        assert isinstance(step, expected), (seconds, step)
        if expected is Unmatched:
            assert step.reason == "match_timeout"
