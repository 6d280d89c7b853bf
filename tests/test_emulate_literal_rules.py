"""Rules whose pattern is all fixed (verbatim transitions: one recorded request,
up to max_verbatim_bytes long, thousands per machine) are matched by byte
comparison; building them must not compile their literal into a regex (the
regex module parses it in Python: ~12 ms per 4 KiB, twice per rule)."""

from __future__ import annotations

import time

from scriptgen.emulate.dialog import Dialog, Matched
from scriptgen.emulate.matching import CompiledMachine
from scriptgen.model import Machine, Pattern, Region, Transition


def _chain(n: int, size: int) -> Machine:
    machine = Machine("tcp", 7000)
    state = machine.states[machine.root]
    for i in range(n):
        nxt = machine.new_state()
        nxt.answer = b"a%d" % i
        literal = Pattern.literal(b"%05d" % i + b"x" * size)
        state.transitions.append(Transition(literal, nxt.id, 1, verbatim=True))
        state = nxt
    return machine


def test_building_long_literal_rules_compiles_no_long_regex() -> None:
    machine = _chain(64, 4096)
    started = time.process_time()
    compiled = CompiledMachine.build(machine)
    assert time.process_time() - started < 1.0  # was ~2.4 s (37 ms per rule)
    dialog = Dialog(compiled, 1 << 20)
    steps = dialog.feed(b"00000" + b"x" * 4096 + b"00001" + b"x" * 4096)
    assert [s.target.id for s in steps if isinstance(s, Matched)] == [1, 2]
    assert dialog.feed(b"00002" + b"x" * 100) == []  # could still become the next one
    assert dialog.feed(b"x" * 3996)[0].target.id == 3


def test_a_literal_rule_gives_the_same_match_as_its_pattern() -> None:
    machine = Machine("tcp", 7000)
    root = machine.states[machine.root]
    target = machine.new_state()
    body = bytes(range(256)) * 80  # longer than a counted repeat may be (4096)
    pattern = Pattern((Region(b"GET "), Region(b"/x"), Region(body), Region(b"\r\n")))
    root.transitions.append(Transition(pattern, target.id, 3))
    (rule,) = CompiledMachine.build(machine).states[machine.root].rules
    request = b"GET /x" + body + b"\r\n"
    m, expected = rule.match(request), pattern.fullmatch(request)
    assert m is not None and expected is not None
    assert [m.span(i) for i in range(5)] == [expected.span(i) for i in range(5)]
    assert m.group(2) == b"/x" and m.group(3) == body
    assert rule.match(b"GET /y\r\n") is None


def test_the_learner_matches_a_literal_without_compiling_it() -> None:
    """The learner walks every dialog through Pattern.fullmatch (State.best_transition)."""
    request = b"%05d" % 7 + b"y" * 4096
    pattern = Pattern.literal(request)
    m = pattern.fullmatch(request)
    assert m is not None and m.span(1) == (0, len(request))
    assert pattern.fullmatch(request[:-1] + b"z") is None
    assert "compiled" not in pattern.__dict__  # the literal was never parsed as a regex
    empty = Pattern.literal(b"")
    assert empty.fullmatch(b"") is not None and empty.fullmatch(b"x") is None
