"""The model package: matching function, JSON round trip, damaged files."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scriptgen.model import (
    End,
    Machine,
    ModelError,
    Pattern,
    Region,
    Suffix,
    Transition,
    Turn,
    load_machine,
    load_model_dir,
    save_machine,
)
from scriptgen.model.store import dumps

USER = Pattern((Region(b"USER "), Region.mutating(1, 12), Region(b"\r\n")))
USER_ANON = Pattern((Region(b"USER anonymous\r\n"),))
ANY_LINE = Pattern((Region.mutating(1, 64), Region(b"\r\n")))


def _machine() -> Machine:
    m = Machine("tcp", 2121)
    m.states[0].answer = b"220 ready\r\n"
    for pattern in (ANY_LINE, USER, USER_ANON):
        s = m.new_state()
        s.answer = pattern.describe().encode()
        m.states[0].transitions.append(Transition(pattern, s.id, 5))
    m.states[0].bucket.append(Suffix((Turn(b"\x00\xff", b""),), End.RESET, "x.pcap#1"))
    m.states[2].end = End.CLOSE
    m.provenance = {"captures": [{"name": "x.pcap", "sha256": "00"}]}
    return m


def test_most_fixed_bytes_wins():
    state = _machine().states[0]
    assert state.best_transition(b"USER anonymous\r\n")[0].pattern == USER_ANON
    assert state.best_transition(b"USER bob\r\n")[0].pattern == USER
    assert state.best_transition(b"QUIT\r\n")[0].pattern == ANY_LINE
    # fixed regions must match exactly: no trailing CRLF, no match at all
    assert state.best_transition(b"USER bob") is None


def test_mutating_length_range_is_enforced():
    assert USER.fullmatch(b"USER \r\n") is None  # 0 < min 1
    assert USER.fullmatch(b"USER " + b"x" * 13 + b"\r\n") is None  # 13 > max 12
    assert USER.fullmatch(b"USER " + b"x" * 12 + b"\r\n") is not None


def test_mutating_regions_take_any_byte():
    assert USER.fullmatch(b"USER \n\x00\xff\r\n") is not None


def test_capture_groups_give_region_values():
    m = USER.fullmatch(b"USER alice\r\n")
    assert m.group(2) == b"alice"
    assert m.span(2) == (5, 10)


def test_could_extend_waits_for_the_rest_of_a_request():
    assert USER.could_extend(b"USE")
    assert USER.could_extend(b"USER al")
    assert not USER.could_extend(b"PASS")
    assert not USER.could_extend(b"USER " + b"x" * 13)


def test_walk_stops_at_first_unmatched_request():
    m = _machine()
    path = list(m.walk([b"USER bob\r\n", b"anything\r\n"]))
    assert len(path) == 2
    assert path[0][1].pattern == USER
    assert path[1][1] is None  # state 2 has no transitions


def test_json_round_trip_is_byte_identical(tmp_path):
    m = _machine()
    path = save_machine(m, tmp_path)
    assert path.name == "tcp-2121.json"
    again = load_machine(path)
    assert dumps(again) == dumps(m)
    assert again.states[0].bucket[0].end is End.RESET
    assert again.states[2].end is End.CLOSE
    assert [p.name for p in tmp_path.iterdir()] == ["tcp-2121.json"]  # no temp files left
    assert path.stat().st_mode & 0o777 == 0o644


def test_model_dir_loads_every_file(tmp_path):
    save_machine(_machine(), tmp_path)
    save_machine(Machine("udp", 53), tmp_path)
    (tmp_path / "notes.txt").write_text("ignored")
    assert sorted(load_model_dir(tmp_path)) == [("tcp", 2121), ("udp", 53)]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "invalid JSON"),
        (b'{"schema": "scriptgen.model/1", "protocol": "tcp"', "invalid JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b'{"hello": "world"}', "unknown schema"),
        (b"[1, 2, 3]", "not an object"),
        (
            b'{"schema": "scriptgen.model/1", "protocol": "sctp", "port": 1, "states": []}',
            "bad protocol",
        ),
        (b'{"schema": "scriptgen.model/1", "protocol": "tcp", "port": 1}', "missing key"),
        (
            b'{"schema": "scriptgen.model/1", "protocol": "tcp", "port": 1, "states": []}',
            "root state",
        ),
    ],
)
def test_damaged_or_foreign_files_name_the_file(tmp_path, content, problem):
    path = tmp_path / "tcp-1.json"
    path.write_bytes(content)
    with pytest.raises(ModelError) as err:
        load_machine(path)
    message = str(err.value)
    assert str(path) in message and problem in message
    assert "\n" not in message


def test_transition_to_missing_state_is_rejected(tmp_path):
    obj = json.loads(dumps(_machine()))
    obj["states"][0]["transitions"][0]["target"] = 99
    path = tmp_path / "tcp-2121.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(ModelError, match="missing state 99"):
        load_machine(path)


def test_file_name_must_match_content(tmp_path):
    save_machine(_machine(), tmp_path)
    (tmp_path / "tcp-2121.json").rename(tmp_path / "tcp-80.json")
    with pytest.raises(ModelError, match="does not match"):
        load_model_dir(tmp_path)


regions = st.one_of(
    st.binary(min_size=1, max_size=8).map(Region),
    st.tuples(st.integers(0, 5), st.integers(0, 5)).map(lambda t: Region.mutating(min(t), max(t))),
)


@given(st.lists(regions, max_size=6), st.data())
def test_pattern_matches_what_it_describes(rs, data):
    """A request built region by region always matches; JSON keeps the pattern."""
    pattern = Pattern(tuple(rs))
    parts = [
        r.fixed if r.is_fixed else data.draw(st.binary(min_size=r.min_len, max_size=r.max_len))
        for r in rs
    ]
    assert pattern.fullmatch(b"".join(parts)) is not None
    assert Pattern.from_json(pattern.to_json()) == pattern


def test_huge_regions_compile_fast_and_keep_their_bounds():
    """A hostile model with enormous region counts must not hang compilation."""
    import time

    pattern = Pattern((Region(b"A"), Region.mutating(9_995_905, 10_000_000), Region(b"Z")))
    started = time.monotonic()
    assert pattern.fullmatch(b"A" + b"x" * 9_995_905 + b"Z") is not None
    assert pattern.fullmatch(b"A" + b"x" * 10 + b"Z") is None
    assert pattern.could_extend(b"A" + b"x" * 1000)
    assert time.monotonic() - started < 5  # counted repeats took 10 s and 2.6 GB here


def test_loose_region_bounds_are_checked_per_region():
    pattern = Pattern(
        (Region.mutating(5000, 6000), Region(b"|"), Region.mutating(1, 2), Region(b"."))
    )
    assert pattern.fullmatch(b"x" * 5000 + b"|ab.") is not None
    # total length fits the pattern, but the first region is too short
    assert pattern.fullmatch(b"x" * 4999 + b"|ab." + b"") is None


small_regions = st.one_of(
    st.sampled_from([b"a", b"ab", b"ba", b"aa"]).map(Region),
    st.tuples(st.integers(0, 4), st.integers(0, 4)).map(lambda t: Region.mutating(min(t), max(t))),
)


@given(
    st.lists(small_regions, max_size=6),
    st.binary(max_size=24).map(lambda b: bytes(x % 3 + 97 for x in b)),
)
def test_feasible_agrees_with_the_regex(rs, data):
    """The linear-time check gives exactly the regex's answer (counted repeats, small)."""
    import regex

    pattern = Pattern(tuple(rs))
    body = b"".join(
        b"(" + regex.escape(r.fixed) + b")"
        if r.is_fixed
        else b"(.{%d,%d})" % (r.min_len, r.max_len)
        for r in rs
    )
    expected = regex.compile(b"(?s)" + body).fullmatch(data) is not None
    assert pattern.feasible(data) is expected


def test_a_long_request_that_does_not_match_a_loose_pattern_is_refused_fast():
    """Loose regions (.*) next to other regions backtracked for minutes on long input."""
    import time

    backtracks = Pattern(
        (
            Region.mutating(0, 4000),
            Region(b"X"),
            Region.mutating(0, 4000),
            Region(b"X"),
            Region.mutating(5000, 20_000_000),
            Region(b"Z"),
        )
    )
    tail = Pattern(
        (
            Region(b"HDR"),
            Region.mutating(5000, 20_000_000),
            Region.mutating(0, 1000),
            Region(b"END"),
        )
    )
    started = time.monotonic()
    assert backtracks.fullmatch(b"X" * 2_000_000) is None  # was 31 s for 1 MB
    assert tail.fullmatch(b"HDR" + b"E" * 5_000_000 + b"ENX") is None  # was 6 s per MB
    assert time.monotonic() - started < 5
    # and what matches still matches, with its groups
    m = backtracks.fullmatch(b"X" * 2_000_000 + b"Z")
    assert m is not None and m.end(6) == 2_000_001
    assert tail.fullmatch(b"HDR" + b"E" * 5_000_000 + b"END") is not None
