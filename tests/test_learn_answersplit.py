"""Answer-aware microclustering (scriptgen.learn.answersplit) on hand-made machines."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scriptgen.learn import answersplit
from scriptgen.learn.answersplit import split_by_answer
from scriptgen.learn.consolidate import consolidate
from scriptgen.learn.dialog import Dialog
from scriptgen.learn.phases import Learner
from scriptgen.model import Machine, Pattern, Region, Suffix, Transition, Turn

GENERIC = Pattern((Region(b"CMD "), Region.mutating(1, 8), Region(b"\r\n")))


def machine_with_generic() -> Machine:
    """Root --CMD <1..8>\\r\\n--> [1] --QUIT\\r\\n--> [2]: what region analysis gives
    when the command word is a mutating region."""
    m = Machine("tcp", 7000)
    one, two = m.new_state(), m.new_state()
    m.states[0].transitions.append(Transition(GENERIC, one.id))
    one.transitions.append(Transition(Pattern.literal(b"QUIT\r\n"), two.id))
    return m


def dialog(word: bytes, answer: bytes) -> Dialog:
    turns = (Turn(b"CMD " + word + b"\r\n", answer), Turn(b"QUIT\r\n", b"BYE\r\n"))
    return Dialog("tcp", 7000, b"", Suffix(turns))


def answer_to(m: Machine, word: bytes) -> tuple[bytes, list[bytes]]:
    """(answer, what QUIT leads to) for one command, as the emulator would walk it."""
    transition, _ = m.states[0].best_transition(b"CMD " + word + b"\r\n")
    state = m.states[transition.target]
    quit_hit = state.best_transition(b"QUIT\r\n")
    return state.answer, [m.states[quit_hit[0].target].answer] if quit_hit else []


def test_a_command_word_that_predicts_the_answer_gets_its_own_transition() -> None:
    m = machine_with_generic()
    dialogs = [dialog(b"PING", b"+PONG\r\n")] * 3 + [dialog(b"DBSIZE", b":10\r\n")] * 4
    dialogs.append(dialog(b"ECHO", b"$1\r\n"))  # seen once: no evidence of its own
    Learner(m, lambda requests, answers: []).add(dialogs)  # the update phase's evidence
    assert len(split_by_answer(m, dialogs)) == 2
    consolidate(m)
    assert answer_to(m, b"PING")[0] == b"+PONG\r\n"
    assert answer_to(m, b"DBSIZE")[0] == b":10\r\n"
    assert answer_to(m, b"ECHO")[0] == b":10\r\n"  # the generic state: majority
    assert answer_to(m, b"NEW")[0] == b":10\r\n"  # the generic parent still takes new words
    # The dialog goes on after a split transition as after the generic one.
    assert answer_to(m, b"PING")[1] == [b"BYE\r\n"]


def test_answers_that_differ_only_by_a_per_connection_id_are_not_split() -> None:
    m = machine_with_generic()
    dialogs = [dialog(b"PING", b"OK id=%d\r\n" % i) for i in range(3)]
    dialogs += [dialog(b"SIZE", b"OK id=%d\r\n" % i) for i in range(3, 6)]
    assert split_by_answer(m, dialogs) == {}
    assert len(m.states[0].transitions) == 1


def test_a_split_never_takes_requests_a_more_specific_sibling_takes() -> None:
    m = machine_with_generic()
    ping = m.new_state()
    m.states[0].transitions.append(Transition(Pattern.literal(b"CMD PING\r\n"), ping.id))
    dialogs = [dialog(b"PING", b"+PONG\r\n")] * 3 + [dialog(b"SIZE", b":10\r\n")] * 3
    dialogs += [dialog(b"SET", b"+OK\r\n")] * 3
    split_by_answer(m, dialogs)
    fixed = [t.pattern for t in m.states[0].transitions]
    assert fixed.count(Pattern.literal(b"CMD PING\r\n")) == 1  # still the literal's
    assert Pattern((Region(b"CMD "), Region(b"SIZE"), Region(b"\r\n"))) in fixed


def test_split_is_deterministic() -> None:
    dialogs = [dialog(b"B", b"2\r\n")] * 3 + [dialog(b"A", b"1\r\n")] * 3
    a, b = machine_with_generic(), machine_with_generic()
    split_by_answer(a, dialogs)
    split_by_answer(b, list(reversed(dialogs)))
    assert [t.pattern for t in a.states[0].transitions] == [
        t.pattern for t in b.states[0].transitions
    ]


def test_a_split_state_inherits_its_parents_dependencies_when_it_cannot_prove_its_own() -> None:
    from scriptgen.learn.answersplit import inherit_dependencies

    m = machine_with_generic()
    dialogs = [dialog(b"PING", b"+PONG\r\n")] * 2 + [dialog(b"SIZE", b":10\r\n")] * 2
    parents = split_by_answer(m, dialogs)
    assert set(parents.values()) == {(1, (1,))}  # split from state 1 on region 1
    consolidate(m)
    ident = {"kind": "copy", "at": 0, "len": 1, "request": 0, "region": 0, "offset": 0}
    word = {"kind": "copy-region", "at": 1, "len": 4, "request": 0, "region": 1}
    late = {"kind": "copy", "at": 5, "len": 1, "request": 0, "region": 2, "offset": 0}
    m.states[1].answer = b"*PONG\r\n"
    m.states[1].dependencies = [ident, word, late]
    assert inherit_dependencies(m, parents) == 2
    by_answer = {m.states[c].answer: m.states[c].dependencies for c in parents}
    # The id at byte 0 is rewritten anyway; the split region's echo is not needed
    # (the value is fixed); byte 5 lies where the templates agree from the start
    # (+PONG) or from the end (:10, two bytes shorter: moved to byte 3).
    assert by_answer[b"+PONG\r\n"] == [ident, late]
    assert by_answer[b":10\r\n"] == [ident, {**late, "at": 3}]
    m.states[1].answer = b"*PONG\r!"  # the end differs too: nothing after the head
    for c in parents:
        m.states[c].dependencies = []
    inherit_dependencies(m, parents)
    assert {m.states[c].answer: m.states[c].dependencies for c in parents}[b":10\r\n"] == [ident]


def test_a_split_state_keeps_the_verbatim_flag_of_the_transitions_it_copies() -> None:
    """The split state copies the generic state's onward transitions: an exact
    (verbatim) one must stay exact, or a later training run would treat it as a
    generalisation and never absorb it."""
    m = machine_with_generic()
    m.states[1].transitions[0].verbatim = True
    dialogs = [dialog(b"PING", b"+PONG\r\n")] * 3 + [dialog(b"DBSIZE", b":10\r\n")] * 4
    Learner(m, lambda requests, answers: []).add(dialogs)
    parents = split_by_answer(m, dialogs)
    assert parents
    for split_state in parents:
        onward = m.states[split_state].transitions
        assert [t.verbatim for t in onward] == [True]


TYPED = Pattern(
    (Region(b"T"), Region.mutating(1, 1), Region(b" "), Region.mutating(0, 32), Region(b"\r\n"))
)


def typed_machine() -> Machine:
    """Root --T<1> <0..32>\\r\\n--> [1] --QUIT\\r\\n--> [2]: a one-byte type field that
    region analysis could not split (too few requests per value)."""
    m = Machine("tcp", 7000)
    one, two = m.new_state(), m.new_state()
    m.states[0].transitions.append(Transition(TYPED, one.id))
    one.transitions.append(Transition(Pattern.literal(b"QUIT\r\n"), two.id))
    return m


def typed(kind: bytes, arg: bytes, answer: bytes) -> Dialog:
    turns = (Turn(b"T" + kind + b" " + arg + b"\r\n", answer), Turn(b"QUIT\r\n", b"BYE\r\n"))
    return Dialog("tcp", 7000, b"", Suffix(turns))


def typed_answer(m: Machine, request: bytes) -> bytes:
    transition, _ = m.states[0].best_transition(request)
    return m.states[transition.target].answer


def test_a_narrow_type_field_seen_once_splits_when_it_predicts_both_shapes() -> None:
    """Two requests of one type, one of another: the type byte predicts the request's
    length and the answer's length, so even the single request gets its own state."""
    m = typed_machine()
    dialogs = [
        typed(b"Q", b"a7Fq0zPw3kLm", b"+" + b"x" * 60 + b"\r\n"),
        typed(b"Q", b"Zr81mB4tYc0e", b"+" + b"y" * 60 + b"\r\n"),
        typed(b"D", b"", b"+OK\r\n"),
    ]
    Learner(m, lambda requests, answers: []).add(dialogs)
    parents = split_by_answer(m, dialogs)
    assert len(parents) == 2
    consolidate(m)
    assert typed_answer(m, b"TD \r\n") == b"+OK\r\n"
    assert len(typed_answer(m, b"TQ 9kQw2ZrT0pLx\r\n")) == 63
    # Both split states go on like the generic one.
    for sid in parents:
        assert m.states[sid].best_transition(b"QUIT\r\n") is not None


@pytest.mark.parametrize(
    ("kinds", "args"),
    [
        # Same request shape, different answers (an error for one id, a success for
        # another): with one request per value that may be chance.
        ((b"Q", b"Q", b"D"), (b"a7Fq0zPw", b"Zr81mB4t", b"k3Lp9QwE")),
        # Every value seen once (an id, a counter) is no type field, whatever the shapes
        # (arguments of one length: no exception either, see the tests below).
        ((b"A", b"B", b"C"), (b"a7Fq0zPw3kLm", b"Zr81mB4tYc0e", b"Qm2x8TbN4wRz")),
    ],
)
def test_a_narrow_field_without_evidence_of_a_type_does_not_split(kinds, args) -> None:
    m = typed_machine()
    answers = (b"+" + b"x" * 60 + b"\r\n", b"+" + b"y" * 60 + b"\r\n", b"+OK\r\n")
    dialogs = [typed(k, a, ans) for k, a, ans in zip(kinds, args, answers, strict=True)]
    assert split_by_answer(m, dialogs) == {}


def test_a_split_state_copies_the_splits_its_generic_state_gained() -> None:
    """Splits at two successive transitions: the first split state must also have
    the second's sub-transitions, or merging it back into the generic state
    (incremental training) lets them steal requests it learned to continue."""
    m = machine_with_generic()
    one = m.states[1]
    three = m.new_state()
    one.transitions = [Transition(GENERIC, three.id)]
    dialogs = []
    for word, answer in ((b"PING", b"+PONG\r\n"), (b"SIZE", b":10\r\n")):
        turns = (Turn(b"CMD " + word + b"\r\n", answer), Turn(b"CMD " + word + b"\r\n", answer))
        dialogs += [Dialog("tcp", 7000, b"", Suffix(turns))] * 2
    parents = split_by_answer(m, dialogs)
    first = [sid for sid, (generic, _) in parents.items() if generic == 1]
    assert first and len(one.transitions) == 3
    for sid in first:
        assert [t.pattern for t in m.states[sid].transitions] == [
            t.pattern for t in one.transitions
        ]


def test_many_values_of_a_narrow_field_split_in_bounded_time() -> None:
    """Hostile: thousands of requests, a 2-byte field with thousands of values seen
    twice each, every answer alike. Comparing every value's group with every other's
    (answer signatures, length ranges) took ~50 s for 6000 requests; nothing differs,
    so nothing splits, and that must be found in about linear time."""
    wide = Pattern(
        (Region(b"T"), Region.mutating(2, 2), Region(b" "), Region.mutating(0, 32), Region(b"\r\n"))
    )
    m = typed_machine()
    m.states[0].transitions[0] = Transition(wide, 1)
    dialogs = [
        typed((i // 2).to_bytes(2, "big"), b"abc", b"+" + b"x" * 40 + b"\r\n") for i in range(6000)
    ]
    started = time.perf_counter()
    assert split_by_answer(m, dialogs) == {}
    assert time.perf_counter() - started < 10.0


def test_splits_of_successive_transitions_do_not_multiply() -> None:
    """Hostile: two successive turns whose 2-byte field takes hundreds of values, each
    predicting the request and answer lengths. Every split state copies its generic
    state's transitions, splits included: without a bound per transition, 800 requests
    made ~160,000 transitions (quadratic in the values, and so in the model's size)."""
    wide = Pattern(
        (Region(b"T"), Region.mutating(2, 2), Region(b" "), Region.mutating(0, 40), Region(b"\r\n"))
    )
    m = Machine("tcp", 7000)
    one, two = m.new_state(), m.new_state()
    m.states[0].transitions.append(Transition(wide, one.id))
    one.transitions.append(Transition(wide, two.id))
    dialogs = []
    for i in range(800):
        value = i // 2
        turn = Turn(
            b"T" + value.to_bytes(2, "big") + b" " + b"a" * (value % 41) + b"\r\n",
            b"+" + b"x" * (value % 41) + b"\r\n",
        )
        dialogs.append(Dialog("tcp", 7000, b"", Suffix((turn, turn))))
    parents = split_by_answer(m, dialogs)
    assert parents  # the field does split
    assert sum(len(s.transitions) for s in m.states.values()) < 2000


def test_a_small_transition_keeps_exceptions_for_arguments_that_pick_the_answer() -> None:
    """Online learning sees each argument once: ``SIZE``-like requests of three names
    got three answers. No value recurs, so no region split; but the argument
    varies in length (a name, not an id), so each name seen gets its own answer
    back, and a name never seen still matches the generic transition."""
    m = typed_machine()
    dialogs = [
        typed(b"S", b"readme.txt", b"213 46\r\n"),
        typed(b"S", b"notes.txt", b"213 29\r\n"),
        typed(b"S", b"docs/guide.txt", b"213 891\r\n"),
    ]
    Learner(m, lambda requests, answers: []).add(dialogs)
    parents = split_by_answer(m, dialogs)
    assert set(parents.values()) == {(1, (1, 3))}  # every mutating region fixed
    exact = [t for t in m.states[0].transitions if t.target in parents]
    assert len(exact) == 3 and all(t.exception and not t.verbatim for t in exact)
    consolidate(m)
    assert typed_answer(m, b"TS readme.txt\r\n") == b"213 46\r\n"
    assert typed_answer(m, b"TS notes.txt\r\n") == b"213 29\r\n"
    assert typed_answer(m, b"TS docs/guide.txt\r\n") == b"213 891\r\n"
    transition, _ = m.states[0].best_transition(b"TS other.txt\r\n")
    assert transition.target == 1  # the generic one
    for sid in parents:  # the dialog goes on as after the generic transition
        assert m.states[sid].best_transition(b"QUIT\r\n") is not None


@pytest.mark.parametrize(
    ("args", "answers"),
    [
        # One answer for every argument (CWD of two directories): nothing to keep apart.
        ((b"pub", b"docs", b"images"), (b"250 ok\r\n",) * 3),
        # Arguments of one width (ids, counters): no exceptions, whatever the answers.
        ((b"a7Fq", b"Zr81", b"k3Lp"), (b"+1\r\n", b"+2\r\n", b"+3\r\n")),
    ],
)
def test_no_exceptions_without_answers_or_lengths_that_differ(args, answers) -> None:
    m = typed_machine()
    dialogs = [typed(b"S", a, ans) for a, ans in zip(args, answers, strict=True)]
    Learner(m, lambda requests, answers: []).add(dialogs)
    assert split_by_answer(m, dialogs) == {}


NAMES = (b"www", b"mail", b"files")


def named(id_min: int, id_max: int, answers) -> tuple[Machine, list[Dialog]]:  # type: ignore[no-untyped-def]
    """Root --<id> <name>\r\n--> [1], and one dialog per name (id = its index) with
    its answer, learned as the update phase's evidence."""
    pattern = Pattern(
        (Region.mutating(id_min, id_max), Region(b" "), Region.mutating(0, 32), Region(b"\r\n"))
    )
    m = Machine("tcp", 7000)
    m.states[0].transitions.append(Transition(pattern, m.new_state().id))
    dialogs = [
        Dialog("tcp", 7000, b"", Suffix((Turn(b"%02d %s\r\n" % (i, n), ans),)))
        for i, (n, ans) in enumerate(zip(NAMES, answers, strict=True))
    ]
    Learner(m, lambda requests, answers: []).add(dialogs)
    return m, dialogs


def test_an_exception_leaves_a_field_drawn_per_request_mutating() -> None:
    """A query id new in every request: fixed, the exception would never match again.
    It stays mutating, the name is fixed: a new query for a name seen gets that
    name's answer; a new name gets the generic one. Judged on the values, not the
    pattern (small clusters widen fixed-width regions: <1..4> here)."""
    m, dialogs = named(1, 4, [b"A 10.0.0.%d\r\n" % i for i in range(len(NAMES))])
    parents = split_by_answer(m, dialogs)
    assert set(parents.values()) == {(1, (2,))}  # the name region, not the id
    consolidate(m)
    for i, n in enumerate(NAMES):
        transition, _ = m.states[0].best_transition(b"99 %s\r\n" % n)
        assert transition.exception
        assert m.states[transition.target].answer == b"A 10.0.0.%d\r\n" % i
    transition, _ = m.states[0].best_transition(b"42 db\r\n")
    assert transition.target == 1  # a name never seen: the generic transition


ANSWERS = (b"A 00 A\r\n", b"BB 01 BB\r\n", b"CCC 02 CCC\r\n")


def test_an_exception_that_cannot_inherit_every_dependency_is_dropped() -> None:
    """The generic state echoes the live id; an exception whose template does not line
    up with the generic one where the id is would send the recorded id: dropped."""
    from scriptgen.learn.answersplit import drop_incomplete_exceptions, inherit_dependencies

    m, dialogs = named(2, 2, ANSWERS)
    parents = split_by_answer(m, dialogs)
    assert len(parents) == 3
    consolidate(m)
    # the id echoed between two name-dependent parts: it lines up from neither end
    m.states[1].answer = ANSWERS[0]
    m.states[1].dependencies = [
        {"kind": "copy", "at": 2, "len": 2, "request": 0, "region": 0, "offset": 0}
    ]
    inherit_dependencies(m, parents)
    assert drop_incomplete_exceptions(m, parents) == 2  # BB..., CCC...: the id moved
    kept = [t for t in m.states[0].transitions if t.exception]
    assert len(kept) == 1 and m.states[kept[0].target].dependencies  # A...: lines up
    assert set(parents) == {kept[0].target}


def test_a_large_transition_keeps_no_exceptions() -> None:
    """Exceptions are for the few requests of online learning: from ``EXCEPTION_ROWS``
    requests on, only values that recur may split (module doc)."""
    m = typed_machine()
    dialogs = [
        typed(b"S", b"n" * (i + 1), b"213 %d\r\n" % i) for i in range(answersplit.EXCEPTION_ROWS)
    ]
    Learner(m, lambda requests, answers: []).add(dialogs)
    assert split_by_answer(m, dialogs) == {}
    fewer = dialogs[: answersplit.EXCEPTION_ROWS - 1]
    m = typed_machine()
    Learner(m, lambda requests, answers: []).add(fewer)
    assert len(split_by_answer(m, fewer)) == answersplit.EXCEPTION_ROWS - 1


_arg = st.binary(min_size=0, max_size=12).filter(lambda b: b"\r" not in b)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(_arg, st.binary(max_size=20)), min_size=1, max_size=12))
def test_splits_never_change_what_replays_property(pairs) -> None:
    """Hostile arguments and answers: after the split every dialog still walks to its
    end, and exceptions are exact, at most one per distinct request."""
    m = typed_machine()
    dialogs = [typed(b"S", a, ans) for a, ans in pairs]
    Learner(m, lambda requests, answers: []).add(dialogs)
    split_by_answer(m, dialogs)
    for d in dialogs:
        state = m.states[m.root]
        for turn in d.suffix.turns:
            hit = state.best_transition(turn.request)
            assert hit is not None, turn.request
            state = m.states[hit[0].target]
    exceptions = [t for t in m.states[0].transitions if t.exception]
    assert all(len(t.pattern.regions) == 1 and t.pattern.regions[0].is_fixed for t in exceptions)
    assert len(exceptions) <= len({a for a, _ in pairs})
