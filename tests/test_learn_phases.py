"""Update and refinement phases, consolidation, and the paper's Figure 6."""

from __future__ import annotations

import json

import pytest

from scriptgen.learn.consolidate import consolidate
from scriptgen.learn.dialog import Dialog
from scriptgen.learn.phases import Learner, LearnOptions, StepReport, replay
from scriptgen.model import End, Machine, Pattern, Region, Suffix, Transition, Turn
from scriptgen.model.store import machine_from_json, machine_to_json
from tests.test_learn_standin import make_standin


def dialog(turns, banner=b"220 hi\r\n", end=None, origin="t"):
    return Dialog("tcp", 21, banner, Suffix(tuple(Turn(r, a) for r, a in turns), end, origin))


def figure6_flows(n=10):
    return [
        dialog(
            [
                (b"USER user%d\r\n" % i, b"331 pw?\r\n"),
                (b"PASS secret%03d\r\n" % i, b"230 ok\r\n"),
                (b"LIST -la%d\r\n" % i, b"150 here\r\n"),
            ]
        )
        for i in range(n)
    ]


def bucket_sizes(machine: Machine) -> dict[int, int]:
    return {sid: len(s.bucket) for sid, s in machine.states.items() if s.bucket}


def depth(machine: Machine) -> int:
    def d(sid: int) -> int:
        ts = machine.states[sid].transitions
        return 1 + max((d(t.target) for t in ts), default=0) if ts else 0

    return d(machine.root)


def real_analyser():
    """The real region analysis; a broken regions module fails, never skips."""
    from scriptgen.learn.regions import RegionOptions, analyse

    options = RegionOptions()
    return lambda samples, answers: analyse(samples, options, answers)


@pytest.mark.parametrize("which", ["standin", "real"])
def test_figure6_one_more_level_per_refinement_step(which):
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin() if which == "standin" else real_analyser())
    learner.add(figure6_flows())
    # step 1: the empty machine puts every flow in the root bucket
    assert bucket_sizes(machine) == {machine.root: 10}
    seen = []

    def on_step(report: StepReport) -> None:
        seen.append(
            (report.iteration, depth(machine), bucket_sizes(machine), report.new_transitions)
        )

    learner.refine(on_step)
    # steps 2..4: one new level each time; the 10 flows move one level down
    assert [s[1] for s in seen] == [1, 2, 3]
    assert [s[3] for s in seen] == [1, 1, 1]
    assert list(seen[0][2].values()) == [10] and list(seen[1][2].values()) == [10]
    assert seen[2][2] == {}  # complete: nothing left in any bucket
    assert len(machine.states) == 4
    chain = [machine.root]
    while machine.states[chain[-1]].transitions:
        (t,) = machine.states[chain[-1]].transitions
        assert t.samples == 10
        chain.append(t.target)
    assert len(chain) == 4
    assert machine.states[chain[-1]].ends == {"client": 10}
    for flow in figure6_flows():
        assert replay(machine, flow.suffix) == (3, None)


def test_refine_step_is_stepwise():
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin())
    learner.add(figure6_flows())
    r1 = learner.refine_step()
    assert r1.analysed == [machine.root] and r1.new_transitions == 1 and r1.bucketed == 10
    assert depth(machine) == 1
    r2 = learner.refine_step()
    assert depth(machine) == 2 and r2.bucketed == 10


def test_update_records_evidence_and_buckets_rest():
    machine = Machine("tcp", 21)
    root = machine.states[0]
    child = machine.new_state()
    root.transitions.append(
        Transition(Pattern((Region(b"USER "), Region.mutating(1, 9))), child.id)
    )
    learner = Learner(machine, make_standin())
    learner.add(
        [
            dialog([(b"USER a", b"331\r\n"), (b"PASS x", b"230\r\n")]),
            dialog([(b"USER bb", b"331\r\n")], end=End.CLOSE),
            dialog([(b"HELP", b"214\r\n")], banner=b"220 other\r\n"),
            dialog([], banner=b"421 busy\r\n", end=End.CLOSE),
        ]
    )
    assert root.samples == 4
    assert root.answers == {b"220 hi\r\n": 2, b"220 other\r\n": 1, b"421 busy\r\n": 1}
    assert root.ends == {"close": 1}
    assert [s.turns[0].request for s in root.bucket] == [b"HELP"]
    assert child.samples == 2 and child.answers == {b"331\r\n": 2}
    assert child.ends == {"close": 1}
    assert len(child.bucket) == 1 and child.bucket[0].turns == (Turn(b"PASS x", b"230\r\n"),)
    assert root.transitions[0].samples == 2
    assert learner.dirty == {root.id, child.id}


def test_bucket_is_bounded_and_drops_are_counted():
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin(), LearnOptions(max_bucket=5, max_answers=2))
    learner.add([dialog([(b"X%d" % i, b"")], banner=b"b%d" % i) for i in range(12)])
    assert len(machine.states[0].bucket) == 5
    assert machine.states[0].dropped == 7
    assert machine.states[0].answers == {b"b0": 1, b"b1": 1}
    assert machine.states[0].samples == 12


@pytest.mark.parametrize("verbatim", [False, True])
def test_a_bucket_full_of_junk_still_learns_a_later_recurring_request(verbatim):
    """One-offs fill the bucket first; requests that recur later must still get in
    (a share of them), be analysed and become a transition. With verbatim
    leftovers the first one-offs become exact transitions, up to the bound; the
    rest of the flood stays in the bucket."""
    junk = [dialog([(b"%04d-junk" % i, b"")], origin=f"j{i}") for i in range(300)]
    hello = [dialog([(b"HELLO", b"hi")], origin=f"h{i}") for i in range(100)]
    machine = Machine("tcp", 21)
    options = LearnOptions(max_bucket=50, verbatim=verbatim, max_verbatim=20)
    learner = Learner(machine, make_standin(min_size=3), options)
    learner.add(junk[:50])  # full
    learner.refine()
    root = machine.states[0]
    exact = [t for t in root.transitions if t.verbatim]
    assert len(exact) == (20 if verbatim else 0)
    assert len(root.bucket) == (30 if verbatim else 50)
    learner.add(junk[50:] + hello)
    assert len(root.bucket) == 50 and root.dropped == (330 if verbatim else 350)
    learner.refine()
    general = [t.pattern for t in root.transitions if not t.verbatim]
    assert general == [Pattern.literal(b"HELLO")]
    assert [t for t in root.transitions if t.verbatim] == exact  # the bound holds
    assert all(t.samples == 1 and t.pattern.specificity == 9 for t in exact)


def test_a_full_bucket_keeps_the_same_sample_whatever_the_arrival_order():
    flows = [dialog([(b"REQ%d" % i, b"")], origin=f"o{i}") for i in range(40)]
    kept = []
    for order in (flows, flows[::-1], flows[::2] + flows[1::2]):
        machine = Machine("tcp", 21)
        Learner(machine, make_standin(), LearnOptions(max_bucket=10)).add(order)
        kept.append(sorted(s.turns[0].request for s in machine.states[0].bucket))
        assert machine.states[0].dropped == 30
    assert kept[0] == kept[1] == kept[2] and len(kept[0]) == 10


def test_refinement_resumes_from_the_bucket_state_not_the_root():
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin())
    # Requests at depth 2 look like root requests: if suffixes re-entered from
    # the root they would take the root's transition and never build depth 2.
    flows = [dialog([(b"AAAA%d" % i, b"1"), (b"AAAA%d" % (i + 1), b"2")]) for i in range(5)]
    learner.add(flows)
    learner.refine()
    assert depth(machine) == 2
    assert bucket_sizes(machine) == {}
    (t,) = machine.states[0].transitions
    (t2,) = machine.states[t.target].transitions
    assert machine.states[t2.target].answers == {b"2": 5}


def test_small_clusters_stay_in_the_bucket_and_refinement_stops():
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin(min_size=3), LearnOptions(verbatim=False))
    flows = figure6_flows(4) + [dialog([(b"ODD1", b"?")]), dialog([(b"WEIRD", b"?")])]
    learner.add(flows)
    reports = learner.refine()
    assert len(reports) <= 5
    left = sorted(s.turns[0].request for s in machine.states[0].bucket)
    assert left == [b"ODD1", b"WEIRD"]


def test_small_clusters_become_verbatim_transitions_by_default():
    """What formed no cluster becomes one exact transition per distinct request;
    the rest of those dialogs is learned below them; nothing stays in a bucket."""
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin(min_size=3))
    odd = dialog([(b"ODD1", b"?1"), (b"MORE", b"!")])
    flows = figure6_flows(4) + [odd, dialog([(b"WEIRD", b"?2")]), dialog([(b"WEIRD", b"?2")])]
    learner.add(flows)
    reports = learner.refine()
    assert sum(r.verbatim for r in reports) == 3  # ODD1, WEIRD, then MORE below ODD1
    assert bucket_sizes(machine) == {}
    root = machine.states[0]
    exact = [t for t in root.transitions if t.verbatim]
    # the most frequent first, then shorter, then bytewise
    assert [t.pattern for t in exact] == [Pattern.literal(b"WEIRD"), Pattern.literal(b"ODD1")]
    assert [t.samples for t in exact] == [2, 1]
    assert not exact[0].pattern.fullmatch(b"WEIRD!") and not exact[0].pattern.fullmatch(b"WEIRE")
    (more,) = machine.states[exact[1].target].transitions
    assert more.verbatim and more.pattern == Pattern.literal(b"MORE")
    for flow in flows:
        assert replay(machine, flow.suffix)[1] is None
    assert not any(t.verbatim for t in root.transitions if t.pattern.regions[0].fixed == b"USER ")


def test_identical_pattern_is_reused_not_duplicated():
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin(min_size=2))
    learner.add([dialog([(b"PING", b"PONG")]), dialog([(b"PING", b"PONG")])])
    learner.refine()
    assert len(machine.states[0].transitions) == 1
    # A pattern already present with a bucket entry it does not match is not re-added.
    learner.add([dialog([(b"PING", b"PONG")])])
    learner.refine()
    assert len(machine.states[0].transitions) == 1
    assert machine.states[0].transitions[0].samples == 3


def test_widening_takes_a_longer_value_of_a_known_field():
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin())
    learner.add(figure6_flows(5))
    learner.refine()
    (t,) = machine.states[0].transitions
    before = t.pattern
    learner.add([dialog([(b"USER user12345\r\n", b"331 pw?\r\n")])])
    reports = learner.refine()
    assert reports[0].widened == 1
    assert t.pattern != before and t.pattern.specificity == before.specificity
    assert replay(machine, Suffix((Turn(b"USER user12345\r\n", b""),))) == (1, None)
    assert machine.states[0].bucket == []
    # Beyond the slack (here 8 bytes) it is new data, not a near miss.
    learner.options = LearnOptions(regeneralise=False, verbatim=False)
    learner.add([dialog([(b"USER user" + b"x" * 40 + b"\r\n", b"")])])
    assert learner.refine()[0].widened == 0
    assert len(machine.states[0].bucket) == 1


def test_widening_can_be_switched_off():
    machine = Machine("tcp", 21)
    options = LearnOptions(widen=False, regeneralise=False, verbatim=False)
    learner = Learner(machine, make_standin(), options)
    learner.add(figure6_flows(5))
    learner.refine()
    learner.add([dialog([(b"USER user12345\r\n", b"331 pw?\r\n")])])
    learner.refine()
    assert len(machine.states[0].bucket) == 1


def test_most_specific_transition_wins_during_update():
    machine = Machine("tcp", 21)
    generic, micro = machine.new_state(), machine.new_state()
    root = machine.states[0]
    root.transitions.append(Transition(Pattern((Region(b"U"), Region.mutating(1, 8))), generic.id))
    root.transitions.append(Transition(Pattern.literal(b"Uanon"), micro.id))
    Learner(machine, make_standin()).add([dialog([(b"Uanon", b"m")]), dialog([(b"Ubob", b"g")])])
    assert micro.answers == {b"m": 1} and generic.answers == {b"g": 1}


def test_consolidation_majority_and_deterministic_ties():
    machine = Machine("tcp", 21)
    s = machine.states[0]
    s.samples = 5
    s.answers = {b"bb": 2, b"a": 2, b"c": 1}
    s.ends = {"close": 3, "client": 1}
    consolidate(machine)
    assert s.answer == b"a"  # tie on count: shorter wins
    assert s.end is End.CLOSE
    s.ends = {"close": 2, "reset": 1}
    consolidate(machine)
    assert s.end is End.OPEN  # 2 open vs 2 close: open wins ties
    s.ends = {"reset": 4}
    consolidate(machine)
    assert s.end is End.RESET


def test_silence_loses_a_tie_where_the_server_mostly_spoke():
    """Fifteen answers that differ only by a server id, and one turn left
    unanswered: all count 1, and the shortest would be silence."""
    machine = Machine("tcp", 445)
    s = machine.states[0]
    s.answers = {b"OK id=%02d" % i: 1 for i in range(15)}
    s.answers[b""] = 1
    consolidate(machine)
    assert s.answer == b"OK id=00"
    s.answers = {b"": 2, b"OK id=01": 1, b"OK id=02": 1}
    consolidate(machine)
    assert s.answer == b""  # silence is the majority: it wins on count
    s.answers = {b"": 1, b"OK id=01": 1}
    consolidate(machine)
    assert s.answer == b""  # as often silent as not: the shorter, as before


def test_silent_state_answers_empty():
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin())
    learner.add([dialog([(b"NOOP1", b""), (b"NOOP2", b"x")], banner=b"") for _ in range(4)])
    learner.refine()
    consolidate(machine)
    assert machine.states[0].answer == b""
    (t,) = machine.states[0].transitions
    assert machine.states[t.target].answer == b""


@pytest.mark.parametrize("n", [1, 2])
def test_tiny_inputs_learn_nothing_and_keep_the_data(n):
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin(), LearnOptions(verbatim=False))
    learner.add(figure6_flows(n))
    learner.refine()
    assert machine.states[0].transitions == []
    assert len(machine.states[0].bucket) == n


@pytest.mark.parametrize("n", [1, 2])
def test_tiny_inputs_are_learned_verbatim_and_generalised_once_enough_arrive(n):
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin())
    learner.add(figure6_flows(n))
    learner.refine()
    root = machine.states[0]
    assert len(root.transitions) == n and all(t.verbatim for t in root.transitions)
    assert all(len(s.transitions) <= n for s in machine.states.values())
    assert bucket_sizes(machine) == {}
    # a later run brings the third USER: now a cluster, the verbatim ones give way
    learner = Learner(machine, make_standin())
    learner.add(figure6_flows(3)[n:])
    reports = learner.refine()
    (user,) = root.transitions
    assert not user.verbatim and user.pattern.describe() == '"USER user" <1> "\\r\\n"'
    assert user.samples == 3 and sum(r.absorbed for r in reports) >= n
    # the verbatim states below were merged into one chain: USER, PASS, LIST
    assert depth(machine) == 3
    for flow in figure6_flows(3):
        assert replay(machine, flow.suffix) == (3, None)


def test_regeneralise_joins_new_requests_to_the_state_of_their_kind():
    """A then B: B's single long USER cannot form a cluster alone, but with the
    remembered USER examples it does, and it leads to the USER state, whose
    learned continuation then takes the rest of B's dialog (as A+B would)."""
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin())
    learner.add(figure6_flows(5))
    learner.refine()
    (user,) = machine.states[0].transitions
    assert user.examples[0] == b"USER user0\r\n"
    # a new Learner (as in a second training run) reads the examples back from the machine
    learner = Learner(machine, make_standin())
    long_user = b"USER " + b"y" * 60 + b"\r\n"
    b = dialog([(long_user, b"331 pw?\r\n"), (b"PASS secret001\r\n", b"230 ok\r\n")])
    learner.add([b])
    learner.refine()
    root = machine.states[0]
    assert len(root.transitions) == 2 and root.transitions[1].target == user.target
    assert replay(machine, b.suffix) == (2, None)
    assert all(not s.bucket for s in machine.states.values())


def test_regeneralise_off_keeps_the_lone_request_in_the_bucket():
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin(), LearnOptions(regeneralise=False, verbatim=False))
    learner.add(figure6_flows(5))
    learner.refine()
    learner.add([dialog([(b"USER " + b"y" * 60 + b"\r\n", b"")])])
    learner.refine()
    assert len(machine.states[0].transitions) == 1 and len(machine.states[0].bucket) == 1


def two_siblings(second: bytes = b"NEXT%d") -> Machine:
    """AAAA.. and ABBB.. learned apart (key_len=4), each followed by ``second``."""
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin(key_len=4))
    learner.add([dialog([(b"AAAA%d" % i, b"a"), (second % i, b"n")]) for i in range(3)])
    learner.add([dialog([(b"ABBB%d" % i, b"b"), (second % i, b"m")]) for i in range(3)])
    learner.refine()
    assert len(machine.states[0].transitions) == 2
    return machine


def test_a_cluster_joining_two_known_transitions_merges_their_states():
    """A learned AAAA.. and ABBB.. apart; B's lone ACCC1 with the remembered examples
    forms one cluster "A.." (as A+B at once would): one state for all three, whose
    equal-pattern children (NEXT..) are merged too; the old transitions stay."""
    machine = two_siblings()
    assert len(machine.states) == 5
    learner = Learner(machine, make_standin(key_len=1))
    b = dialog([(b"ACCC1", b"c"), (b"NEXT7", b"o")])
    learner.add([b])
    reports = learner.refine()
    assert sum(r.merged for r in reports) == 2
    root = machine.states[0]
    assert len(root.transitions) == 3
    (target,) = {t.target for t in root.transitions}
    merged = machine.states[target]
    assert merged.answers == {b"a": 3, b"b": 3, b"c": 1} and merged.samples == 7
    (nxt,) = merged.transitions
    assert nxt.samples == 7 and machine.states[nxt.target].answers == {b"n": 3, b"m": 3, b"o": 1}
    assert len(machine.states) == 3
    assert replay(machine, b.suffix) == (2, None)
    assert all(not s.bucket for s in machine.states.values())


def test_a_merge_that_would_make_a_cycle_is_refused():
    machine = Machine("tcp", 21)
    root = machine.states[0]
    x, y = machine.new_state(), machine.new_state()
    root.transitions.append(Transition(Pattern.literal(b"AAAA0"), x.id, 3, [b"AAAA0"]))
    root.transitions.append(Transition(Pattern.literal(b"ABBB0"), y.id, 3, [b"ABBB0"]))
    x.transitions.append(Transition(Pattern.literal(b"Z"), y.id, 3, [b"Z"]))
    learner = Learner(machine, make_standin(key_len=1))
    learner.add([dialog([(b"ACCC1", b"c")])])
    reports = learner.refine()
    assert sum(r.merged for r in reports) == 0
    assert set(machine.states) == {0, x.id, y.id, 3}
    assert [t.target for t in root.transitions[:2]] == [x.id, y.id]
    # the lone request formed no usable cluster: it is learned verbatim
    assert root.transitions[2].verbatim and root.transitions[2].pattern == Pattern.literal(b"ACCC1")


def test_merging_redirects_every_edge_and_is_deterministic():
    """Another state's edge into a merged-away state follows it; same input, same JSON."""
    outs = []
    for _ in range(2):
        machine = two_siblings()
        root = machine.states[0]
        other = machine.new_state()
        b_target = root.transitions[1].target
        other.transitions.append(Transition(Pattern.literal(b"GO"), b_target, 1, [b"GO"]))
        root.transitions.append(Transition(Pattern.literal(b"OTHER"), other.id, 1, [b"OTHER"]))
        learner = Learner(machine, make_standin(key_len=1))
        learner.add([dialog([(b"ACCC1", b"c")])])
        learner.refine()
        assert other.transitions[0].target == root.transitions[0].target != b_target
        assert b_target not in machine.states
        outs.append(json.dumps(machine_to_json(machine), sort_keys=True))
    assert outs[0] == outs[1]


def test_examples_are_bounded_and_ignored_when_stale():
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin(), LearnOptions(max_examples=3, max_example_bytes=12))
    learner.add(figure6_flows(10))
    learner.refine()
    kept = [t.examples for s in machine.states.values() for t in s.transitions]
    assert any(kept) and all(len(v) <= 3 for v in kept)
    assert all(len(e) <= 12 for v in kept for e in v)
    # a stale or edited example in a model file is not trusted on load
    obj = machine_to_json(machine)
    obj["states"][0]["transitions"][0]["examples"] = [
        (b"NOT A USER").hex(),
        (b"USER user7\r\n").hex(),
    ]
    loaded = machine_from_json(json.loads(json.dumps(obj)))
    fresh = Learner(loaded, make_standin())
    (t,) = loaded.states[0].transitions
    assert fresh.examples_of(t) == [b"USER user7\r\n"]


def test_widening_never_takes_the_requests_of_a_less_specific_sibling():
    machine = Machine("tcp", 21)
    narrow, broad = machine.new_state(), machine.new_state()
    root = machine.states[0]
    # "GET " + 1..2 bytes (4 fixed bytes) and a broad "anything ending in Z" (1 fixed byte)
    root.transitions.append(
        Transition(Pattern((Region(b"GET "), Region.mutating(1, 2))), narrow.id)
    )
    root.transitions.append(Transition(Pattern((Region.mutating(1, 20), Region(b"Z"))), broad.id))
    learner = Learner(machine, make_standin(min_size=99), LearnOptions(widen_slack=8))
    learner.add([dialog([(b"GET abcdZ", b"b")])])  # the broad one takes it
    assert broad.samples == 1
    # A near miss of the narrow one (within the slack) that the broad one does not take:
    learner.add([dialog([(b"GET " + b"x" * 9, b"?")])])
    learner.refine()
    # widening "GET " to <1..9> would also take "GET abcdZ" from the broad one: refused
    assert root.transitions[0].pattern.regions[1].max_len == 2
    assert machine.states[0].best_transition(b"GET abcdZ")[0].target == broad.id
    # without that conflict the same near miss widens
    machine.states[0].transitions[1].pattern = Pattern((Region.mutating(1, 20), Region(b"Q")))
    for t in root.transitions:
        t.examples.clear()
    learner.add([dialog([(b"GET " + b"y" * 9, b"?")])])
    learner.refine()
    assert root.transitions[0].pattern.regions[1].max_len == 9


def test_widening_a_long_request_that_fits_nothing_is_fast():
    """A bucketed multi-megabyte request near a wide pattern: the relaxed match must
    not backtrack (the regex form took ~6 s per MB)."""
    import time

    machine = Machine("tcp", 21)
    root = machine.states[0]
    target = machine.new_state()
    wide = Pattern(
        (
            Region(b"HDR"),
            Region.mutating(5000, 3_000_000),
            Region.mutating(0, 1000),
            Region(b"END"),
        )
    )
    root.transitions.append(Transition(wide, target.id))
    long_request = b"HDR" + b"E" * 2_000_000 + b"ENX"
    # a bucket may hold a message this long when allowed (or loaded from an older model)
    learner = Learner(machine, make_standin(), LearnOptions(max_message_bytes=4 << 20))
    learner.add([dialog([(long_request, b"")])])
    started = time.monotonic()
    report = learner.refine_step()
    assert time.monotonic() - started < 5
    assert report.widened == 0 and len(root.bucket) == 1


def test_huge_unclustered_requests_give_a_small_model_file(tmp_path):
    """Six lone 10 MB requests were kept raw in the bucket: a 120 MB model file."""
    from scriptgen.model import save_machine

    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin())
    big = [dialog([(b"%d" % i + b"A" * 10_000_000, b"ok")], origin=f"o{i}") for i in range(6)]
    learner.add(big)
    learner.refine()
    path = save_machine(machine, tmp_path)
    assert path.stat().st_size < 100_000
    root = machine.states[0]
    assert root.bucket == [] and root.dropped == 6 and root.samples == 6


def test_a_message_over_the_cap_ends_what_the_bucket_keeps_of_a_conversation():
    options = LearnOptions(max_message_bytes=100)
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin(), options)
    turns = [(b"A", b"a"), (b"B", b"b" * 101), (b"C", b"c")]
    learner.add([dialog(turns, end=End.CLOSE)])
    root = machine.states[0]
    assert [t.request for t in root.bucket[0].turns] == [b"A"]
    assert root.bucket[0].end is None and root.dropped == 1


def test_answers_over_the_cap_are_not_kept_as_evidence():
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin(), LearnOptions(max_message_bytes=10))
    learner.add([dialog([(b"X", b"")], banner=b"B" * 11), dialog([(b"X", b"")], banner=b"hi")])
    root = machine.states[0]
    assert root.answers == {b"hi": 1} and root.samples == 2


def _bucket_bytes(state):
    return sum(len(t.request) + len(t.answer) for s in state.bucket for t in s.turns)


def test_the_bucket_byte_budget_is_respected_and_drops_are_counted():
    options = LearnOptions(max_bucket_bytes=1000, max_message_bytes=100)
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin(), options)
    flows = [dialog([(b"R%03d" % i + b"x" * 96, b"")], origin=f"o{i}") for i in range(50)]
    learner.add(flows)
    root = machine.states[0]
    assert _bucket_bytes(root) <= 1000
    assert len(root.bucket) == 10 and root.dropped == 40


def test_no_one_conversation_takes_more_than_a_share_of_the_budget():
    options = LearnOptions(max_bucket_bytes=800, max_message_bytes=100)
    machine = Machine("tcp", 21)
    learner = Learner(machine, make_standin(), options)
    learner.add([dialog([(b"R%02d" % i, b"a" * 40) for i in range(30)])])
    root = machine.states[0]
    assert _bucket_bytes(root) <= 100 and len(root.bucket[0].turns) == 2
    assert root.dropped == 1


def test_the_byte_budget_keeps_the_same_sample_whatever_the_arrival_order():
    options = LearnOptions(max_bucket_bytes=2000, max_message_bytes=250)
    flows = [
        dialog([(b"REQ%d" % i + b"y" * (i * 37 % 200), b"")], origin=f"o{i}") for i in range(60)
    ]
    kept = []
    for order in (flows, flows[::-1], flows[::2] + flows[1::2]):
        machine = Machine("tcp", 21)
        Learner(machine, make_standin(), options).add(order)
        root = machine.states[0]
        assert _bucket_bytes(root) <= 2000
        assert root.dropped == 60 - len(root.bucket)
        kept.append(sorted(s.turns[0].request for s in root.bucket))
    assert kept[0] == kept[1] == kept[2] and 5 < len(kept[0]) < 60


def test_byte_bounds_are_validated_and_recorded():
    with pytest.raises(ValueError):
        LearnOptions(max_bucket_bytes=0)
    with pytest.raises(ValueError):
        LearnOptions(max_message_bytes=0)
    recorded = LearnOptions(max_bucket_bytes=123, max_message_bytes=45).to_json()
    assert recorded["max_bucket_bytes"] == 123 and recorded["max_message_bytes"] == 45


def test_verbatim_bounds_per_machine_and_per_request_size():
    """A flood of one-off dialogs: at most max_verbatim_total exact transitions in the
    whole machine (each dialog's chain counts), requests over max_verbatim_bytes
    never become one; the rest stays in the buckets, counted."""
    flood = [
        dialog([(b"%03d-first" % i, b"a"), (b"%03d-second" % i, b"b")], origin=f"f{i}")
        for i in range(40)
    ]
    big = dialog([(b"B" * 300, b"big")], origin="big")
    machine = Machine("tcp", 21)
    options = LearnOptions(max_verbatim=100, max_verbatim_total=25, max_verbatim_bytes=200)
    learner = Learner(machine, make_standin(min_size=99), options)
    learner.add([*flood, big])
    learner.refine()
    exact = [t for s in machine.states.values() for t in s.transitions]
    assert all(t.verbatim for t in exact) and len(exact) == 25
    assert all(t.pattern.max_len <= 200 for t in exact)
    assert machine.counts()["bucketed"] >= 41 - 25
    # a later run does not grow past the bound either
    learner = Learner(machine, make_standin(min_size=99), options)
    learner.add([dialog([(b"new-%d" % i, b"n")], origin=f"n{i}") for i in range(10)])
    learner.refine()
    assert machine.counts()["verbatim"] == 25


def test_verbatim_off_in_a_later_run_keeps_existing_ones_and_adds_none():
    machine = Machine("tcp", 21)
    Learner(machine, make_standin()).add(figure6_flows(1))
    learner = Learner(machine, make_standin())
    learner.add(figure6_flows(1))
    learner.refine()
    assert machine.counts()["verbatim"] == 3
    learner = Learner(machine, make_standin(), LearnOptions(verbatim=False))
    learner.add([dialog([(b"HELP", b"?")])])
    learner.refine()
    assert machine.counts()["verbatim"] == 3 and machine.counts()["bucketed"] == 1


def test_absorbing_thousands_of_verbatim_transitions_is_not_quadratic():
    """Each absorb merges two states; checking the whole machine for a cycle (and
    recounting its verbatim transitions) per merge made 2048 absorbs in a
    2k-state machine take ~5 s (4096 in 4k states: 30 s). Only what the merged
    states reach can close a cycle."""
    import time

    machine = Machine("tcp", 21)
    root = machine.states[0]
    mids = []
    for a in range(32):
        mid = machine.new_state()
        root.transitions.append(Transition(Pattern.literal(b"A%03d" % a), mid.id, 5))
        for j in range(64):
            leaf = machine.new_state()
            leaf.answers = {b"x%d" % j: 1}
            literal = Pattern.literal(b"%04d" % j)
            mid.transitions.append(Transition(literal, leaf.id, 1, [b"%04d" % j], verbatim=True))
        general = machine.new_state()
        mid.transitions.append(Transition(Pattern((Region.mutating(4, 4),)), general.id, 10))
        mids.append(mid)
    learner = Learner(machine, make_standin())
    started = time.process_time()
    assert sum(learner._absorb(mid) for mid in mids) == 32 * 64
    assert time.process_time() - started < 1.5
    assert len(machine.states) == 1 + 32 * 2 and machine.counts()["verbatim"] == 0
    assert learner._verbatim_total == 0
    (general,) = machine.states[mids[0].id].transitions
    assert general.samples == 10 + 64 and len(machine.states[general.target].answers) == 16
