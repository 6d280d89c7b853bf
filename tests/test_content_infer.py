"""Content dependencies on crafted machines: links found, coincidences refused,
length fields recomputed, server-chosen values filled; and the rewriter."""

from __future__ import annotations

import random
import time

from scriptgen.emulate.rewrite import History, Rewriter
from scriptgen.learn.content import ContentOptions, collect_samples, infer_dependencies
from scriptgen.learn.dialog import Dialog
from scriptgen.model import Machine, Pattern, Region, Suffix, Transition, Turn
from scriptgen.model.store import machine_from_json, machine_to_json
from scriptgen.render import dependency_line as describe


def fx(data: bytes) -> Region:
    return Region(data)


def mu(lo: int, hi: int | None = None) -> Region:
    return Region.mutating(lo, lo if hi is None else hi)


def chain(*patterns: Pattern) -> Machine:
    """root -p1-> 1 -p2-> 2 ..."""
    m = Machine("tcp", 9000)
    state = m.states[m.root]
    for p in patterns:
        nxt = m.new_state()
        state.transitions.append(Transition(p, nxt.id))
        state = nxt
    return m


def dialogs(turn_lists: list[list[tuple[bytes, bytes]]]) -> list[Dialog]:
    return [
        Dialog("tcp", 9000, b"", Suffix(tuple(Turn(r, a) for r, a in turns)))
        for turns in turn_lists
    ]


def templates(m: Machine, ds: list[Dialog]) -> None:
    """The template of each state: the answer of the first dialog that reached it (as consolidation would pick one)."""
    for sid, samples in collect_samples(m, ds).items():
        m.states[sid].answer = samples[0].answer


def learn(m: Machine, ds: list[Dialog], **opts: object) -> None:
    templates(m, ds)
    infer_dependencies(m, ds, ContentOptions(**opts))  # type: ignore[arg-type]


def live(m: Machine, requests: list[bytes], rewriter: Rewriter | None = None) -> list[bytes]:
    """Walk the machine with live requests and return the rewritten answers."""
    rw = rewriter or Rewriter(random.Random(1))
    history = History()
    state = m.states[m.root]
    out = []
    for req in requests:
        hit = state.best_transition(req)
        assert hit is not None, req
        state = m.states[hit[0].target]
        history.request(req, hit[1])
        answer = rw.apply(state.answer, state.dependencies, history)
        history.answer(answer)
        out.append(answer)
    return out


ID_PATTERN = Pattern((fx(b"ID"), mu(2), fx(b"END")))


def id_dialogs(ids: list[bytes]) -> list[Dialog]:
    return dialogs([[(b"ID" + i + b"END", b"OK" + i + b"!")] for i in ids])


def test_copy_from_current_request_found_and_applied() -> None:
    m = chain(ID_PATTERN)
    learn(m, id_dialogs([b"\x01\x02", b"\x03\x04", b"\x05\x06"]))
    deps = m.states[1].dependencies
    assert deps == [
        {
            "kind": "copy",
            "at": 2,
            "len": 2,
            "request": 0,
            "region": 1,
            "anchor": "start",
            "offset": 0,
            "order": "same",
            "groups": 3,
        }
    ]
    assert live(m, [b"ID\xaa\xbbEND"]) == [b"OK\xaa\xbb!"]
    assert "answer[2..3] <- request 0 region 1 offset 0" in describe(deps[0])


def test_coincidence_in_two_samples_is_not_a_link() -> None:
    m = chain(ID_PATTERN)
    learn(m, id_dialogs([b"\x01\x02", b"\x03\x04"]))
    assert m.states[1].dependencies == []
    assert live(m, [b"ID\xaa\xbbEND"]) == [b"OK\x01\x02!"]


def test_equal_values_prove_nothing() -> None:
    """Three samples but one value: the bytes never varied, no link."""
    m = chain(ID_PATTERN)
    learn(m, id_dialogs([b"\x01\x02"] * 5))
    assert m.states[1].dependencies == []


def test_chance_equality_in_one_sample_out_of_many_is_not_a_link() -> None:
    m = chain(ID_PATTERN)
    rng = random.Random(7)
    ds = []
    for i in range(8):
        rid = rng.randbytes(2)
        aid = rid if i == 0 else rng.randbytes(2)  # equal once, by chance
        ds += dialogs([[(b"ID" + rid + b"END", b"OK" + aid + b"!")]])
    learn(m, ds, server_values=False)
    assert m.states[1].dependencies == []


def test_value_copied_from_two_requests_back() -> None:
    m = chain(
        Pattern((fx(b"HELLO "), mu(4), fx(b"\n"))),
        Pattern((fx(b"NEXT"),)),
        Pattern((fx(b"LAST"),)),
    )
    rng = random.Random(3)
    ds = []
    for _ in range(4):
        token = rng.randbytes(4)
        ds += dialogs(
            [[(b"HELLO " + token + b"\n", b"hi"), (b"NEXT", b"ok"), (b"LAST", b"bye " + token)]]
        )
    learn(m, ds)
    assert m.states[3].dependencies == [
        {
            "kind": "copy",
            "at": 4,
            "len": 4,
            "request": -2,
            "region": 1,
            "anchor": "start",
            "offset": 0,
            "order": "same",
            "groups": 3,
        }
    ]
    got = live(m, [b"HELLO wxyz\n", b"NEXT", b"LAST"])
    assert got[2] == b"bye wxyz"


def test_byte_swapped_copy() -> None:
    m = chain(ID_PATTERN)
    ids = [b"\x01\x02", b"\x13\x14", b"\x25\x06", b"\x37\x48"]
    ds = dialogs([[(b"ID" + i + b"END", b"OK" + i[::-1] + b"!")] for i in ids])
    learn(m, ds)
    (dep,) = m.states[1].dependencies
    assert dep["order"] == "swap" and dep["at"] == 2 and dep["len"] == 2
    assert live(m, [b"ID\xaa\xbbEND"]) == [b"OK\xbb\xaa!"]


def test_length_field_recomputed_when_a_name_is_echoed() -> None:
    """Answer: 2-byte big-endian length of what follows, then 'HELLO <name>\\n'."""
    m = chain(Pattern((fx(b"NAME "), mu(1, 30), fx(b"\n"))))
    names = [b"bob", b"alice", b"mallory", b"eve"]

    def answer(name: bytes) -> bytes:
        body = b"HELLO " + name + b"\n"
        return len(body).to_bytes(2, "big") + body

    learn(m, dialogs([[(b"NAME " + n + b"\n", answer(n))] for n in names]))
    kinds = {d["kind"] for d in m.states[1].dependencies}
    assert kinds == {"copy-region", "length"}
    for name in (b"x", b"a-much-longer-name-here"):
        assert live(m, [b"NAME " + name + b"\n"]) == [answer(name)]


def test_length_field_little_endian_behind_the_copy() -> None:
    """A 4-byte little-endian total length placed after the echoed name."""
    m = chain(Pattern((fx(b"N"), mu(2, 40))))
    names = [b"ab", b"abcdefg", b"xyz", b"0123456789"]

    def answer(name: bytes) -> bytes:
        head = b"R" + name + b"|"
        return head + (len(head) + 4 + 3).to_bytes(4, "little") + b"END"

    learn(m, dialogs([[(b"N" + n, answer(n))] for n in names]))
    for name in (b"qq", b"a" * 37):
        assert live(m, [b"N" + name]) == [answer(name)]


def test_server_random_and_answer_echo_within_the_connection() -> None:
    """A server-chosen token is random per connection and repeated in a later answer."""
    m = chain(Pattern((fx(b"LOGIN"),)), Pattern((fx(b"WHO"),)))
    rng = random.Random(5)
    ds = []
    for _ in range(6):
        token = rng.randbytes(8)
        ds += dialogs([[(b"LOGIN", b"T=" + token), (b"WHO", b"you are " + token)]])
    learn(m, ds)
    assert m.states[1].dependencies == [{"kind": "random", "at": 2, "len": 8}]
    assert m.states[2].dependencies[0]["kind"] == "answer"
    first = live(m, [b"LOGIN", b"WHO"], Rewriter(random.Random(1)))
    second = live(m, [b"LOGIN", b"WHO"], Rewriter(random.Random(2)))
    assert first[0] != second[0]  # varies across connections
    assert first[1] == b"you are " + first[0][2:]  # consistent within one
    assert second[1] == b"you are " + second[0][2:]


def test_server_random_keeps_a_text_field_text() -> None:
    """A server-chosen number printed in decimal (a passive port) is refilled with
    digits: raw random bytes there made clients reject the reply line."""
    m = chain(Pattern((fx(b"PASV"),)))
    ds = dialogs([[(b"PASV", b"229 port (|||%d|)\r\n" % (40000 + 13 * i))] for i in range(6)])
    learn(m, ds)
    assert [d["kind"] for d in m.states[1].dependencies] == ["random"]
    answers = {live(m, [b"PASV"], Rewriter(random.Random(seed)))[0] for seed in range(20)}
    assert len(answers) > 1  # still fresh per answer
    for answer in answers:
        assert answer.startswith(b"229 port (|||") and answer.endswith(b"|)\r\n")
        assert answer[13:-4].isdigit(), answer


def test_random_like_keeps_binary_binary() -> None:
    rw = Rewriter(random.Random(3))
    values = [rw.random_like(b"\x00\xff\x10\x80") for _ in range(20)]
    assert any(not all(0x21 <= b < 0x7F for b in v) for v in values)
    assert all(len(v) == 4 for v in values)


def test_random_value_echoed_in_a_fixed_request_region_stays() -> None:
    """If the client sent the value back where the matching function requires it exactly,
    randomising it would break the next match: keep the template's."""
    token = b"\x11\x22\x33\x44"
    m = chain(Pattern((fx(b"LOGIN"),)), Pattern((fx(b"USE " + token),)))
    rng = random.Random(5)
    ds = []
    for _ in range(5):
        other = rng.randbytes(4)
        ds += dialogs([[(b"LOGIN", b"T=" + other), (b"USE " + token, b"ok")]])
    ds[0] = dialogs([[(b"LOGIN", b"T=" + token), (b"USE " + token, b"ok")]])[0]
    learn(m, ds)
    assert m.states[1].dependencies == []


def test_clock_field_set_to_now() -> None:
    m = chain(Pattern((fx(b"TIME"),)))
    base = 1_700_000_000
    ds = dialogs([[(b"TIME", b"T" + (base + 37 * i).to_bytes(4, "big") + b".")] for i in range(5)])
    learn(m, ds)
    assert m.states[1].dependencies == [
        {"kind": "clock", "at": 1, "width": 4, "endian": "big", "unit": "s"}
    ]
    (got,) = live(m, [b"TIME"], Rewriter(random.Random(1), clock=lambda: 1_800_000_000.5))
    assert got == b"T" + (1_800_000_000).to_bytes(4, "big") + b"."


def test_three_addresses_in_capture_order_are_no_clock() -> None:
    """192.0.2.45, .53, .79 read as big-endian seconds fall in 2072 and happen to grow
    in capture order (one time in six): with fewer than CLOCK_SAMPLES samples no
    clock is inferred, so the learned address is sent, not the current time."""
    from scriptgen.learn.content import CLOCK_SAMPLES

    m = chain(Pattern((fx(b"ADDR"),)))
    addrs = [bytes([192, 0, 2, last]) for last in (45, 53, 79, 90, 101)]
    few = dialogs([[(b"ADDR", b"A" + a + b".")] for a in addrs[: CLOCK_SAMPLES - 1]])
    learn(m, few)
    assert not any(d["kind"] == "clock" for d in m.states[1].dependencies)
    m = chain(Pattern((fx(b"ADDR"),)))
    learn(m, dialogs([[(b"ADDR", b"A" + a + b".")] for a in addrs[:CLOCK_SAMPLES]]))
    assert any(d["kind"] == "clock" for d in m.states[1].dependencies)  # the limit of the rule


def test_link_borrowed_by_a_state_with_too_few_samples() -> None:
    """Three states prove 'answer[0:2] <- request[0:2]'; a fourth with one sample borrows it."""
    m = Machine("udp", 53)
    root = m.states[m.root]
    rng = random.Random(9)
    ds = []
    for word, n in ((b"aaaa", 3), (b"bbbb", 3), (b"cccc", 1)):
        target = m.new_state()
        root.transitions.append(Transition(Pattern((mu(2), fx(word))), target.id))
        for _ in range(n):
            tid = rng.randbytes(2)
            ds.append(Dialog("udp", 53, b"", Suffix((Turn(tid + word, tid + word.upper()),))))
    learn(m, ds)
    lonely = m.states[3].dependencies
    assert len(lonely) == 1 and lonely[0]["borrowed"] and lonely[0]["at"] == 0
    assert live(m, [b"\x99\x98cccc"]) == [b"\x99\x98CCCC"]


def test_state_reached_by_two_paths() -> None:
    """Two transitions with different patterns lead to one state: only what every path
    shares is linked, and a link learned on one pattern is not applied to the other."""
    m = Machine("tcp", 9000)
    root, target = m.states[m.root], m.new_state()
    short = Pattern((fx(b"A"), mu(2), fx(b"!")))
    longer = Pattern((fx(b"B"), mu(1), fx(b"-"), mu(2), fx(b"!")))
    root.transitions += [Transition(short, target.id), Transition(longer, target.id)]
    rng = random.Random(2)
    turns = []
    for k in range(8):
        v = rng.randbytes(2)
        req = b"A" + v + b"!" if k % 2 else b"Bx-" + v + b"!"
        turns.append([(req, b"=" + v)])
    learn(m, dialogs(turns))
    assert m.states[1].dependencies == []  # region numbers differ between the paths
    dep = {"kind": "copy", "at": 1, "len": 2, "request": 0, "region": 1, "offset": 0, "groups": 3}
    m.states[1].dependencies = [dep]
    m.states[1].answer = b"=??"
    assert live(m, [b"A\x01\x02!"]) == [b"=\x01\x02"]
    assert live(m, [b"Bx-\x01\x02!"]) == [b"=??"]  # 5 groups: not the learned pattern


def test_without_enough_evidence_old_dependencies_are_kept() -> None:
    m = chain(ID_PATTERN)
    learn(m, id_dialogs([b"\x01\x02", b"\x03\x04", b"\x05\x06"]))
    before = list(m.states[1].dependencies)
    infer_dependencies(m, id_dialogs([b"\x07\x08"]))
    assert m.states[1].dependencies == before


def test_dependencies_survive_the_model_round_trip() -> None:
    m = chain(ID_PATTERN)
    learn(m, id_dialogs([b"\x01\x02", b"\x03\x04", b"\x05\x06"]))
    again = machine_from_json(machine_to_json(m))
    assert again.states[1].dependencies == m.states[1].dependencies


def test_rewriter_skips_what_does_not_fit() -> None:
    """Damaged entries and short histories never raise; the template goes out unpatched."""
    rw = Rewriter(random.Random(1))
    history = History()
    template = b"0123456789"
    bad = [
        {"kind": "copy", "at": 0, "len": 2, "request": -5, "region": 0, "offset": 0},
        {"kind": "copy", "at": 8, "len": 4, "request": 0, "region": 0, "offset": 0},
        {"kind": "copy-region", "at": 3, "len": 2, "request": 0, "region": 9},
        {"kind": "length", "at": 9, "width": 4, "endian": "big", "base": 0},
        {"kind": "length", "at": 0, "width": 1, "endian": "big", "base": -1000},
        {"kind": "answer", "at": 0, "len": 3, "answer": -1, "offset": 0},
        {"kind": "clock", "at": 8, "width": 8, "endian": "little", "unit": "nt"},
        {"kind": "random", "at": "x"},
        {"kind": "nonsense"},
        {},
    ]
    assert rw.apply(template, bad, history) == template
    history.request(b"abc", None)
    assert rw.apply(template, bad, history) == template
    for dep in bad:
        describe(dep)  # never raises either


def test_inference_is_fast_enough_on_wide_samples() -> None:
    """64 samples of 2 KB requests and answers, 8 requests deep: bounded work."""
    rng = random.Random(11)
    pats = [Pattern((fx(bytes([65 + k]) * 4), mu(2000))) for k in range(8)]
    m = chain(*pats)
    ds = []
    for _ in range(64):
        turns = []
        for k in range(8):
            body = rng.randbytes(2000)
            turns.append((bytes([65 + k]) * 4 + body, body[:1000][::-1] + rng.randbytes(1000)))
        ds += dialogs([turns])
    started = time.monotonic()
    learn(m, ds)
    assert time.monotonic() - started < 10


def test_live_answers_reads_matches_lazily_and_can_be_switched_off() -> None:
    from scriptgen.emulate.rewrite import LiveAnswers

    m = chain(ID_PATTERN)
    learn(m, id_dialogs([b"\x01\x02", b"\x03\x04", b"\x05\x06"]))
    req = b"ID\xaa\xbbEND"
    calls = []

    def lazy() -> object:
        calls.append(1)
        return ID_PATTERN.fullmatch(req)

    on = LiveAnswers(m.states, True, Rewriter(random.Random(1)))
    assert on.answer(1, m.states[1].answer, req, lazy) == b"OK\xaa\xbb!"
    assert calls == [1]
    off = LiveAnswers(m.states, False)
    assert off.answer(1, m.states[1].answer, req, lazy) == m.states[1].answer
    assert calls == [1]  # never computed when off
    odd = LiveAnswers(m.states, True)
    assert odd.answer(1, m.states[1].answer, req, lambda: lazy) == m.states[1].answer


def test_clock_echoed_in_a_fixed_request_region_stays() -> None:
    """A server time the client sends back inside a fixed region (its high bytes were the
    same in every capture) must keep the learned value, or the next request would not match."""
    base = 1_700_000_000
    times = [(base + 3 * i).to_bytes(4, "big") for i in range(4)]
    m = chain(
        Pattern((fx(b"TIME"),)),
        Pattern((fx(b"AUTH " + times[0][:3]), mu(1))),
    )
    ds = dialogs([[(b"TIME", b"T" + t), (b"AUTH " + t, b"ok")] for t in times])
    learn(m, ds)
    assert m.states[1].dependencies == []


def test_rewriter_never_raises_on_hostile_entries_and_requests() -> None:
    """Whatever the model file and the client hold, apply() returns bytes of bounded size."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    scalar = st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=4), st.none(), st.booleans())
    dep = st.dictionaries(
        st.sampled_from(
            ["kind", "at", "len", "request", "region", "anchor", "offset", "order", "groups"]
            + ["width", "endian", "base", "unit", "answer"]
        ),
        scalar,
    ).map(lambda d: {**d, "kind": d.get("kind") or "copy"})
    kinds = st.sampled_from(["copy", "copy-region", "length", "answer", "clock", "random", "x"])

    @settings(max_examples=150, deadline=None)
    @given(
        st.binary(max_size=64),
        st.lists(st.tuples(dep, kinds), max_size=6),
        st.lists(st.binary(max_size=40), max_size=4),
    )
    def check(template: bytes, entries: list, requests: list[bytes]) -> None:
        history = History()
        for req in requests:
            history.request(req, ID_PATTERN.fullmatch(req) if req[:1] == b"I" else None)
            history.answer(req[::-1])
        deps: list = [{**d, "kind": k} for d, k in entries] + [["not", "a", "dict"], 7]
        out = Rewriter(random.Random(0)).apply(template, deps, history)
        assert isinstance(out, bytes)
        assert len(out) <= len(template) + sum(len(r) for r in requests) * len(deps) + 8

    check()


def test_inference_never_raises_on_odd_dialogs() -> None:
    """Random answers and region values (empty, long, repeated) through a 3-step machine."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    pats = [
        Pattern((fx(b"A"), mu(0, 6), fx(b"|"), mu(2))),
        Pattern((mu(1, 3), fx(b"B"))),
        Pattern((fx(b"C"), mu(0, 4))),
    ]
    turn = st.tuples(
        st.binary(min_size=0, max_size=6), st.binary(min_size=2, max_size=2), st.binary(max_size=24)
    )

    @settings(max_examples=80, deadline=None)
    @given(st.lists(st.lists(turn, min_size=1, max_size=3), min_size=1, max_size=8))
    def check(raw: list) -> None:
        m = chain(*pats)
        ds = []
        for conv in raw:
            turns = []
            for k, (v, w, answer) in enumerate(conv):
                req = [b"A" + v + b"|" + w, (v or b"x")[:3] + b"B", b"C" + v[:4]][k]
                turns.append((req, answer + v + w))
            ds += dialogs([turns])
        learn(m, ds)
        for state in m.states.values():
            for dep in state.dependencies:
                assert 0 <= dep["at"] <= len(state.answer)

    check()


def test_content_inference_does_not_walk_verbatim_transitions() -> None:
    """A verbatim transition is one recorded request: what its state saw proves no
    link, and a server value echoed inside it must not read as a value the client
    sends back fixed. Called directly (not only from the trainer), inference walks
    the general transition beside it."""
    m = Machine("tcp", 7000)
    exact, general = m.new_state(), m.new_state()
    root = m.states[0]
    root.transitions.append(Transition(Pattern.literal(b"ID 42\r\n"), exact.id, verbatim=True))
    root.transitions.append(Transition(Pattern((fx(b"ID "), mu(1, 4), fx(b"\r\n"))), general.id))
    dialogs = [
        Dialog("tcp", 7000, b"", Suffix((Turn(b"ID %d\r\n" % n, b"OK %d\r\n" % n),)))
        for n in (42, 7, 19)
    ]
    samples = collect_samples(m, dialogs)
    assert exact.id not in samples
    assert len(samples[general.id]) == 3
