"""Region analysis: crafted protocol-like requests, invariants, determinism, bounds.

Protocol facts (FTP commands, an SMB-like header, DNS-like ids) live here
only; scriptgen.learn.regions knows none of them.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scriptgen.learn.regions import Cluster, RegionOptions, analyse
from scriptgen.model import Pattern

CAPTURES = Path(__file__).resolve().parent / "data" / "captures"


def check_invariants(samples: list[bytes], clusters: list[Cluster]) -> None:
    """Every member fullmatches its pattern; members are valid, disjoint indices."""
    seen: set[int] = set()
    for c in clusters:
        assert c.members, "a cluster without members"
        assert list(c.members) == sorted(set(c.members))
        for i in c.members:
            assert 0 <= i < len(samples)
            assert i not in seen, "a sample in two clusters"
            seen.add(i)
            assert c.pattern.fullmatch(samples[i]) is not None, (c.pattern.describe(), samples[i])


def by_member(samples: list[bytes], clusters: list[Cluster], value: bytes) -> Cluster:
    (hit,) = [c for c in clusters if any(samples[i] == value for i in c.members)]
    return hit


def region_offsets(pattern: Pattern) -> list[tuple[int, bool, int, int]]:
    """(offset, fixed, min, max) of each region, offsets valid while lengths are fixed."""
    out, off = [], 0
    for r in pattern.regions:
        out.append((off, r.is_fixed, r.min_len, r.max_len))
        off += r.min_len
    return out


def ftp_requests(rng: random.Random) -> list[bytes]:
    names = [b"anonymous", b"bob", b"alice", b"root", b"admin", b"ftp", b"guest", b"oracle"]
    out = []
    for _ in range(12):
        out.append(b"USER %s%d\r\n" % (rng.choice(names), rng.randrange(100)))
        out.append(
            b"PASS %s\r\n" % bytes(rng.choice(b"abcdefgh1234") for _ in range(rng.randrange(3, 12)))
        )
    out += [b"LIST\r\n"] * 6 + [b"PWD\r\n"] * 5 + [b"QUIT\r\n"] * 7
    out += [b"RETR file%d.txt\r\n" % rng.randrange(1000) for _ in range(6)]
    return out


def test_text_commands_are_separated() -> None:
    samples = ftp_requests(random.Random(1))
    clusters = analyse(samples)
    check_invariants(samples, clusters)
    for c in clusters:
        verbs = {samples[i].split(b" ")[0].split(b"\r")[0] for i in c.members}
        assert len(verbs) == 1, (c.pattern.describe(), verbs)
    user = by_member(samples, clusters, next(s for s in samples if s.startswith(b"USER")))
    regions = user.pattern.regions
    assert regions[0].fixed == b"USER "
    assert regions[-1].fixed == b"\r\n"  # the mutating name did not swallow the terminator
    assert not regions[1].is_fixed
    assert by_member(samples, clusters, b"LIST\r\n").pattern == Pattern.literal(b"LIST\r\n")
    assert by_member(samples, clusters, b"QUIT\r\n").pattern == Pattern.literal(b"QUIT\r\n")
    retr = by_member(samples, clusters, next(s for s in samples if s.startswith(b"RETR")))
    assert retr.pattern.regions[0].fixed.startswith(b"RETR file")
    assert retr.pattern.regions[-1].fixed == b".txt\r\n"
    # every command family landed in a transition (random PASS words may stay in the bucket)
    placed = {samples[i] for c in clusters for i in c.members}
    assert all(s in placed for s in samples if not s.startswith(b"PASS"))


def smb_like(rng: random.Random, command: int, body: bytes) -> bytes:
    """NetBIOS length + an SMB1-like header: process id at 30-31, multiplex id at 34-35."""
    header = bytearray(32)
    header[0:4] = b"\xffSMB"
    header[4] = command
    header[9] = 0x18
    header[10:12] = b"\x43\xc8"
    header[26:28] = rng.randbytes(2)  # pid: offset 30 with the NetBIOS header
    header[28:30] = b"\x00\x08"  # uid
    header[30:32] = rng.randbytes(2)  # mid: offset 34
    payload = bytes(header) + body
    return len(payload).to_bytes(4, "big") + payload


def test_binary_id_fields_are_mutating_and_commands_split() -> None:
    rng = random.Random(2)
    negotiate = [smb_like(rng, 0x72, b"\x00\x0c\x00\x02NT LM 0.12\x00") for _ in range(20)]
    setup = [smb_like(rng, 0x73, b"\x0c\xff\x00" + b"\x00" * 20 + b"\x04\x00") for _ in range(15)]
    samples = negotiate + setup
    rng.shuffle(samples)
    clusters = analyse(samples)
    check_invariants(samples, clusters)
    assert len(clusters) == 2
    for group in (negotiate, setup):
        c = by_member(samples, clusters, group[0])
        assert {samples[i] for i in c.members} == set(group)
        layout = region_offsets(c.pattern)
        mutating = [(off, lo, hi) for off, fixed, lo, hi in layout if not fixed]
        assert mutating == [(30, 2, 2), (34, 2, 2)], c.pattern.describe()
        assert c.pattern.specificity == len(group[0]) - 4
        assert c.pattern.regions[0].fixed[4:9] == b"\xffSMB" + bytes([group[0][8]])


def test_leading_transaction_id_is_mutating() -> None:
    rng = random.Random(3)
    question = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03lab\x04test\x00\x00\x01\x00\x01"
    samples = [rng.randbytes(2) + question for _ in range(12)]
    (c,) = analyse(samples)
    check_invariants(samples, [c])
    assert c.pattern.regions[0] == c.pattern.regions[0].mutating(2, 2)
    assert c.pattern.regions[1].fixed == question


def test_microcluster_split_keeps_generic_parent() -> None:
    rng = random.Random(4)
    common = [b"USER anonymous\r\n"] * 10 + [b"USER ftpuser\r\n"] * 6
    rare = [b"USER %s\r\n" % rng.randbytes(rng.randrange(3, 9)).hex().encode() for _ in range(6)]
    samples = common + rare
    loose = RegionOptions(distance_threshold=0.6)  # one macrocluster for all USER requests
    clusters = analyse(samples, loose)
    check_invariants(samples, clusters)
    patterns = {c.pattern for c in clusters}
    assert Pattern.literal(b"USER anonymous\r\n") in patterns
    assert Pattern.literal(b"USER ftpuser\r\n") in patterns
    generic = by_member(samples, clusters, rare[0])
    assert {samples[i] for i in generic.members} == set(rare)
    assert generic.pattern.regions[0].fixed.startswith(b"USER ")
    # the generic parent also takes names nobody sent yet, and is less specific
    assert generic.pattern.fullmatch(b"USER mallory\r\n")
    assert generic.pattern.specificity < len(b"USER ftpuser\r\n")
    # without the generic parent, the few rare names are not a transition
    strict = analyse(
        samples, RegionOptions(distance_threshold=0.6, keep_generic=False, min_cluster_size=8)
    )
    check_invariants(samples, strict)
    assert {c.pattern for c in strict} == {
        Pattern.literal(b"USER anonymous\r\n"),
        Pattern.literal(b"USER ftpuser\r\n"),
    }


def test_microcluster_separates_command_word_next_to_shared_argument() -> None:
    # SIZE and RETR of the same files: the whole region value never recurs,
    # the fixed-width command word does.
    files = [b"readme.txt", b"notes.txt", b"a.bin", b"data.csv", b"x.tar.gz"]
    samples = [b"%s %s\r\n" % (verb, f) for verb in (b"SIZE", b"RETR") for f in files]
    clusters = analyse(samples, RegionOptions(distance_threshold=0.6))
    check_invariants(samples, clusters)
    for c in clusters:
        assert len({samples[i][:4] for i in c.members}) == 1, c.pattern.describe()


def island_samples(rng: random.Random) -> list[bytes]:
    alphabet = bytes(b for b in range(256) if b not in b"AxZ")
    return [
        b"A"
        + bytes(rng.choice(alphabet) for _ in range(4))
        + b"x"
        + bytes(rng.choice(alphabet) for _ in range(4))
        + b"Z"
        for _ in range(10)
    ]


def test_short_fixed_islands_are_folded() -> None:
    samples = island_samples(random.Random(5))
    (folded,) = analyse(samples, RegionOptions(distance_threshold=0.95, min_fixed_island=2))
    assert folded.pattern.describe() == '"A" <9> "Z"'
    (kept,) = analyse(samples, RegionOptions(distance_threshold=0.95, min_fixed_island=1))
    assert kept.pattern.describe() == '"A" <4> "x" <4> "Z"'
    check_invariants(samples, [folded])
    check_invariants(samples, [kept])


def test_variable_width_regions_are_widened_fixed_width_kept() -> None:
    samples = [b"GET /" + b"a" * n + b" X\r\n" for n in range(2, 9)] + [
        b"ID " + os.urandom(4) for _ in range(5)
    ]
    samples = [s.replace(b"a" * 2, b"bc", 1) if i % 2 else s for i, s in enumerate(samples)]
    clusters = analyse(samples, RegionOptions(distance_threshold=0.7, length_slack=1.0))
    check_invariants(samples, clusters)
    lengths = [
        (r.min_len, r.max_len) for c in clusters for r in c.pattern.regions if not r.is_fixed
    ]
    assert (4, 4) in lengths  # the 4-byte id stays exactly 4
    assert any(hi >= 2 * 8 for lo, hi in lengths if lo != hi)  # 2..8 widened to ≥ 16
    none = analyse(samples, RegionOptions(distance_threshold=0.7, length_slack=0.0))
    assert any((2, 8) == (r.min_len, r.max_len) for c in none for r in c.pattern.regions)


def canonical(samples: list[bytes], clusters: list[Cluster]) -> list[tuple[Pattern, list[bytes]]]:
    return [(c.pattern, sorted(samples[i] for i in c.members)) for c in clusters]


def test_deterministic_and_independent_of_input_order() -> None:
    rng = random.Random(6)
    samples = ftp_requests(rng) + [smb_like(rng, 0x72, b"\x00\x02") for _ in range(8)]
    first = analyse(samples)
    assert analyse(list(samples)) == first
    for seed in range(3):
        shuffled = samples[:]
        random.Random(seed).shuffle(shuffled)
        assert canonical(shuffled, analyse(shuffled)) == canonical(samples, first)


request = st.one_of(
    st.binary(max_size=40),
    st.builds(
        lambda verb, arg: verb + b" " + arg + b"\r\n",
        st.sampled_from([b"USER", b"PASS", b"LIST", b"CWD", b"RETR"]),
        st.binary(max_size=12),
    ),
    st.builds(
        lambda tid, tail: tid + b"\x01\x00\x00\x01" + tail,
        st.binary(min_size=2, max_size=2),
        st.binary(max_size=6),
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(request, max_size=40),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=3),
    st.floats(min_value=0.0, max_value=1.0),
    st.integers(min_value=8, max_value=48),
)
def test_invariants_property(samples, min_size, island, threshold, align_len) -> None:
    options = RegionOptions(
        distance_threshold=threshold,
        min_cluster_size=min_size,
        micro_min_count=min_size,
        min_fixed_island=island,
        max_align_len=align_len,
        max_distance_len=align_len,
        max_samples=25,
    )
    clusters = analyse(samples, options)
    check_invariants(samples, clusters)
    again = analyse(samples[::-1], options)
    assert canonical(samples[::-1], again) == canonical(samples, clusters)


answer = st.one_of(
    st.none(),
    st.sampled_from([b"250 ok\r\n", b"550 no\r\n", b":1\r\n", b"$-1\r\n", b""]),
    st.binary(max_size=30),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(request, answer), max_size=40),
    st.integers(min_value=1, max_value=3),
    st.floats(min_value=0.0, max_value=0.6),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_invariants_with_answers_property(pairs, min_size, threshold, link) -> None:
    """Answers (hostile, missing, empty) only ever link pairs: every member still
    fullmatches its pattern, and the result does not depend on the order."""
    samples, answers = [p[0] for p in pairs], [p[1] for p in pairs]
    options = RegionOptions(
        distance_threshold=threshold,
        answer_link_distance=link,
        min_cluster_size=min_size,
        micro_min_count=min_size,
        max_samples=25,
    )
    clusters = analyse(samples, options, answers)
    check_invariants(samples, clusters)
    again = analyse(samples[::-1], options, answers[::-1])
    assert canonical(samples[::-1], again) == canonical(samples, clusters)


def test_answers_must_match_the_samples() -> None:
    with pytest.raises(ValueError, match="one answer"):
        analyse([b"a", b"b"], RegionOptions(), [b"x"])


def test_small_inputs() -> None:
    assert analyse([]) == []
    assert analyse([b"hello"]) == []  # one request is not a cluster
    (one,) = analyse([b"hello"], RegionOptions(min_cluster_size=1))
    assert one.pattern == Pattern.literal(b"hello") and one.members == (0,)
    empties = [b""] * 4 + [b"a"] * 3
    clusters = analyse(empties)
    check_invariants(empties, clusters)
    assert {c.pattern for c in clusters} == {Pattern(()), Pattern.literal(b"a")}


def test_binary_noise_finishes_and_holds_invariants() -> None:
    rng = random.Random(7)
    samples = [rng.randbytes(rng.randrange(0, 1500)) for _ in range(300)]
    clusters = analyse(samples)
    check_invariants(samples, clusters)
    assert clusters == []  # nothing in common: all stays in the bucket


def test_many_distinct_one_offs_are_bounded() -> None:
    rng = random.Random(8)
    samples = [rng.randbytes(rng.randrange(20, 200)) for _ in range(10_000)]
    samples += [b"PING %d\r\n" % i for i in range(2000)]
    clusters = analyse(samples, RegionOptions(max_samples=300))
    check_invariants(samples, clusters)
    # the subsample found the PING family; leftovers beyond it joined by fullmatch
    ping = [c for c in clusters if c.pattern.regions[0].fixed == b"PING "]
    assert ping and sum(len(c.members) for c in ping) == 2000


def test_huge_messages_align_on_head_and_tail() -> None:
    rng = random.Random(9)
    size = 10_000_000
    head, tail = rng.randbytes(500), rng.randbytes(200)  # shared structure at both ends
    middle = [rng.randbytes(16) * (size // 16) for _ in range(3)]
    samples = [b"HEAD" + head + m[: size - i] + tail + b"TAIL" for i, m in enumerate(middle)]
    samples += [samples[0]]  # one duplicate
    (c,) = analyse(samples)
    check_invariants(samples, [c])
    regions = c.pattern.regions
    assert regions[0].fixed.startswith(b"HEAD") and regions[-1].fixed.endswith(b"TAIL")
    assert max(r.min_len for r in regions if not r.is_fixed) <= RegionOptions().max_align_len


def test_long_messages_beyond_align_bound() -> None:
    rng = random.Random(10)
    head, tail = rng.randbytes(40), rng.randbytes(20)
    samples = [b"HDR:" + head + rng.randbytes(200) + tail + b":END" for _ in range(6)]
    (c,) = analyse(samples, RegionOptions(max_align_len=32, max_distance_len=32))
    check_invariants(samples, [c])
    assert c.pattern.regions[0].fixed.startswith(b"HDR:")
    assert c.pattern.regions[-1].fixed.endswith(b":END")


def test_max_samples_subsample_and_leftovers_join() -> None:
    samples = [b"CMD %d\r\n" % i for i in range(400)]
    (c,) = analyse(samples, RegionOptions(max_samples=40))
    assert len(c.members) == 400
    check_invariants(samples, [c])


def test_options_json_round_trip_and_validation() -> None:
    opts = RegionOptions(distance_threshold=0.3, linkage="complete", keep_generic=False)
    assert RegionOptions.from_json(opts.to_json()) == opts
    assert RegionOptions.from_json({**opts.to_json(), "future_knob": 1}) == opts
    with pytest.raises(ValueError):
        RegionOptions(distance_threshold=2.0)
    with pytest.raises(ValueError):
        RegionOptions(linkage="centroid")
    with pytest.raises(ValueError):
        RegionOptions.from_json({"keep_generic": "yes"})


def _client_requests(path: Path, position: int) -> list[bytes]:
    from scriptgen.trace import Direction, read_conversations

    out = []
    for conv in read_conversations(path):
        reqs = [m.data for m in conv.messages if m.direction == Direction.CLIENT and m.data]
        if len(reqs) > position:
            out.append(reqs[position])
    return out


@pytest.mark.skipif(not (CAPTURES / "smb139.pcap").exists(), reason="lab captures absent")
def test_real_smb_session_setup_has_exactly_the_process_id_mutating() -> None:
    """SMB1 in NetBIOS framing: the process id is bytes 30-31 and varies per client.

    The multiplex id (bytes 34-35) is *not* checked here: in these captures
    every client sends the same request sequence, so at one dialog position
    the multiplex id is the same in all 50 runs and is rightly learned fixed.
    """
    samples = _client_requests(CAPTURES / "smb139.pcap", 2)  # session setup after negotiate
    assert {s[8] for s in samples} == {0x73}
    clusters = analyse(samples)
    check_invariants(samples, clusters)
    biggest = clusters[0]
    assert len(biggest.members) >= len(samples) // 2
    mutating = [
        (off, lo, hi) for off, fixed, lo, hi in region_offsets(biggest.pattern) if not fixed
    ]
    assert mutating == [(30, 2, 2)], biggest.pattern.describe()


@pytest.mark.skipif(not (CAPTURES / "ftp.pcap").exists(), reason="lab captures absent")
def test_real_ftp_requests_split_by_command() -> None:
    mixed = total = 0
    for position in range(6):  # requests at the same dialog position ≈ one state's bucket
        samples = _client_requests(CAPTURES / "ftp.pcap", position)
        clusters = analyse(samples)
        check_invariants(samples, clusters)
        for c in clusters:
            verbs = {samples[i].split(b" ")[0].split(b"\r")[0].upper() for i in c.members}
            mixed += len(verbs) > 1
            total += 1
    assert total >= 10
    assert mixed <= 1, (mixed, total)


def resp(*args: bytes) -> bytes:
    """A Redis RESP array of bulk strings."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def test_resp_commands_are_separated_and_lengths_mutate() -> None:
    rng = random.Random(11)

    def word() -> bytes:
        return bytes(rng.choice(b"abcdefghijklmnop:") for _ in range(rng.randrange(3, 12)))

    sets = [resp(b"SET", b"key:" + word(), word()) for _ in range(15)]
    gets = [resp(b"GET", b"key:" + word()) for _ in range(15)]
    samples = sets + gets
    clusters = analyse(samples)
    check_invariants(samples, clusters)
    for c in clusters:
        assert len({samples[i][:14] for i in c.members}) == 1, c.pattern.describe()
    for group, head in ((sets, b"*3\r\n$3\r\nSET\r\n$"), (gets, b"*2\r\n$3\r\nGET\r\n$")):
        # recurring key lengths may make microclusters; all of them keep the command fixed
        family = [c for c in clusters if c.pattern.regions[0].fixed.startswith(head)]
        assert {samples[i] for c in family for i in c.members} == set(group)
        generic = min(family, key=lambda c: c.pattern.specificity)
        assert generic.pattern.regions[0].fixed == head
        assert generic.pattern.regions[-1].fixed.endswith(b"\r\n")


@pytest.mark.skipif(not (CAPTURES / "dns.pcap").exists(), reason="lab captures absent")
def test_real_dns_queries_start_with_a_mutating_transaction_id() -> None:
    from scriptgen.trace import Direction, read_conversations

    samples = [
        m.data
        for conv in read_conversations(CAPTURES / "dns.pcap")
        if conv.protocol == "udp"
        for m in conv.messages[:1]
        if m.direction == Direction.CLIENT
    ]
    clusters = analyse(samples)
    check_invariants(samples, clusters)
    assert sum(len(c.members) for c in clusters) >= len(samples) * 0.9
    for c in clusters:
        first = c.pattern.regions[0]
        assert not first.is_fixed and first.min_len >= 2, c.pattern.describe()


def test_answer_linking_joins_one_field_pairs_answered_alike_only() -> None:
    """CWD docs / CWD pub are 0.37 apart (past the 0.35 cut): linked when both were
    answered in one shape, not when the answers differ in shape, not without answers."""
    samples = [b"CWD docs\r\n", b"CWD pub\r\n", b"CWD images\r\n"]
    ok = [b"250 Directory successfully changed.\r\n"] * 3
    opts = RegionOptions(min_cluster_size=2)
    assert len(analyse(samples, opts, ok)) == 1
    assert analyse(samples, opts) == []  # requests alone: three one-offs
    mixed = [ok[0], b"550 Failed to change directory.\r\n", b"+\x00\x01\r\n"]
    assert all(len(c.members) < 3 for c in analyse(samples, opts, mixed))


def test_one_span_looks_at_head_and_tail_windows_only() -> None:
    """Long requests cost no more than short ones: head and tail are searched in a
    window, and a pair too long for the span bound is refused at once."""
    from scriptgen.learn.regions import LINK_SPAN, _one_span

    assert _one_span(b"CWD docs\r\n", b"CWD pub\r\n")
    assert not _one_span(b"GET a\r\n", b"SET a\r\n")  # head shorter than LINK_HEAD
    long_a = b"HEAD" + b"a" * 5000 + b"\r\n"
    long_b = b"HEAD" + b"b" * 5000 + b"\r\n"
    assert not _one_span(long_a, long_b, window=16)  # 5006 > (LINK_SPAN + 1) * 2 * 16
    framed = b"x" * 200
    assert _one_span(framed + b"1" * 10 + framed, framed + b"2" * 12 + framed, window=256)
    assert LINK_SPAN >= 1
