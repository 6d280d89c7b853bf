"""The conversation tracker: UDP flows, timeouts, bounds, ordering, hostile input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scriptgen.trace import TraceError, TraceStats, read_conversations
from scriptgen.trace.flows import ConversationTracker, server_side
from scriptgen.trace.segment import ACK, FIN, RST, SYN, TCP, UDP, Segment
from scriptgen.trace.types import Direction, Outcome
from tests.test_tcp_reassembly import Wire, dialog

CAPTURES = Path(__file__).resolve().parent / "data" / "captures"
A = bytes([192, 168, 1, 10])
B = bytes([192, 168, 1, 53])


def dgram(ts: float, src: bytes, sport: int, dst: bytes, dport: int, data: bytes, trunc=0):
    return Segment(ts, UDP, src, dst, sport, dport, 0, 0, 0, data, trunc)


# -------------------------------------------------------------------- UDP


def test_udp_flow_one_datagram_one_message():
    segs = [
        dgram(1.0, A, 5000, B, 53, b"query"),
        dgram(1.1, B, 53, A, 5000, b"answer"),
        dgram(1.2, B, 53, A, 5000, b"answer2"),  # two datagrams in a row stay two messages
        dgram(1.3, A, 5000, B, 53, b"again"),
    ]
    (c,) = ConversationTracker("u").run(segs)
    assert c.protocol == "udp" and c.outcome is Outcome.OPEN
    assert (c.client.ip, c.client.port, c.server.ip, c.server.port) == (
        "192.168.1.10",
        5000,
        "192.168.1.53",
        53,
    )
    assert dialog(c) == [
        (Direction.CLIENT, b"query"),
        (Direction.SERVER, b"answer"),
        (Direction.SERVER, b"answer2"),
        (Direction.CLIENT, b"again"),
    ]
    assert [m.timestamp for m in c.messages] == [1.0, 1.1, 1.2, 1.3]
    assert c.start == 1.0 and c.end == 1.3 and c.closed_by is None and not c.midstream


def test_udp_client_is_first_sender_even_from_low_port():
    (c,) = ConversationTracker().run([dgram(1.0, B, 53, A, 5000, b"unsolicited")])
    assert c.client.port == 53 and c.messages[0].direction is Direction.CLIENT


def test_udp_idle_timeout_expires_on_sweep_and_on_arrival():
    t = ConversationTracker("u", udp_timeout=10.0, sweep_interval=1.0)
    assert t.feed(dgram(0.0, A, 5000, B, 53, b"q1")) == []
    assert t.feed(dgram(1.0, B, 53, A, 5000, b"r1")) == []
    # Another flow's traffic advances capture time: the sweep expires the first flow.
    assert t.feed(dgram(5.0, A, 6000, B, 53, b"other")) == []
    done = t.feed(dgram(11.5, A, 6000, B, 53, b"other2"))
    assert [(c.client.port, c.outcome) for c in done] == [(5000, Outcome.TIMEOUT)]
    assert len(done[0].messages) == 2 and done[0].end == 1.0
    # The same 5-tuple after the timeout is a new flow, even before a sweep runs.
    t2 = ConversationTracker("u", udp_timeout=10.0, sweep_interval=1000.0)
    t2.feed(dgram(0.0, A, 5000, B, 53, b"q1"))
    done = t2.feed(dgram(20.0, B, 53, A, 5000, b"late"))
    assert [c.outcome for c in done] == [Outcome.TIMEOUT]
    (rest,) = t2.finish()
    assert rest.outcome is Outcome.OPEN and rest.client.port == 53  # new flow, new client


def test_udp_truncated_datagram_has_a_gap():
    (c,) = ConversationTracker().run([dgram(1.0, A, 1, B, 2, b"abc", trunc=97)])
    assert c.messages[0].data == b"abc" and c.messages[0].gaps == [(3, 97)]


# ------------------------------------------------------------ tracker


def test_udp_datagrams_past_the_flow_bound_are_reported_not_silently_lost():
    from scriptgen.trace.tcp import TcpLimits

    segs = [dgram(1.0 + i, A, 5000, B, 53, b"x" * 100) for i in range(10)]
    stats = TraceStats()
    tracker = ConversationTracker(stats=stats, tcp_limits=TcpLimits(max_stream_bytes=500))
    (c,) = tracker.run(segs)
    assert len(c.messages) == 3  # 100 bytes + 64 of per-datagram cost each
    assert stats.warnings["udp_flow_bound"] == 1
    assert "7 datagrams" in stats.messages[0]


def test_mixed_protocols_completion_order():
    w = Wire(t0=10.0)
    w.handshake()
    w.send(0, b"req")
    w.send(1, b"resp")
    w.close(1)
    u = [dgram(9.0, A, 5000, B, 53, b"q")]  # starts first, still open at the end
    still_open = Wire(cisn=1, sisn=2, t0=9.5)
    still_open.handshake()
    segs = sorted(u + w.segs + [s._replace(sport=41000) for s in still_open.segs[:1]])
    segs = sorted(segs, key=lambda s: s.ts)
    convs = list(ConversationTracker().run(segs))
    # the closed TCP connection first (completion), then the leftovers by first packet
    assert [(c.protocol, c.outcome) for c in convs] == [
        ("tcp", Outcome.CLOSED),
        ("udp", Outcome.OPEN),
        ("tcp", Outcome.UNANSWERED),
    ]


def test_ipv6_endpoints_are_text():
    a6 = bytes.fromhex("20010db8000000000000000000000001")
    b6 = bytes.fromhex("20010db8000000000000000000000002")
    (c,) = ConversationTracker().run([dgram(1.0, a6, 5000, b6, 53, b"q")])
    assert c.client.ip == "2001:db8::1" and str(c.server) == "[2001:db8::2]:53"


def test_max_connections_evicts_longest_idle_and_warns():
    stats = TraceStats()
    t = ConversationTracker("x", max_connections=4, stats=stats)
    emitted = []
    for i in range(10):  # ten unanswered SYNs from distinct ports
        s = Segment(float(i), TCP, A, B, 10000 + i, 80, SYN, 1000 * i, 0, b"")
        emitted += t.feed(s)
    assert len(t._tcp) <= 2 * 4
    assert stats.warnings["tcp_evicted"] >= 1
    emitted += t.finish()
    assert sorted(c.client.port for c in emitted) == [10000 + i for i in range(10)]
    evicted = [c.client.port for c in emitted[: len(emitted) - 4]]
    assert evicted == sorted(evicted)  # the oldest went first
    assert all(c.outcome is Outcome.UNANSWERED for c in emitted)


def test_time_wait_table_is_bounded():
    t = ConversationTracker(max_connections=8)
    for i in range(200):
        w = Wire(t0=float(i))
        w.handshake()
        w.rst(1)
        for s in w.segs:
            t.feed(s._replace(sport=20000 + i) if s.sport == 40000 else s._replace(dport=20000 + i))
    assert len(t._closed) <= 2 * 8 + 2


@pytest.mark.parametrize(
    ("sport", "dport", "dst_is_server"),
    [(40000, 80, 1), (80, 40000, 0), (1023, 1024, 0), (5000, 8080, 0), (8080, 5000, 1), (7, 7, 1)],
)
def test_midstream_server_side_heuristic(sport, dport, dst_is_server):
    assert server_side(sport, dport) == dst_is_server


def test_land_packet_same_endpoint_both_sides_does_not_crash():
    segs = [
        Segment(1.0, TCP, A, A, 80, 80, SYN, 5, 0, b""),
        Segment(1.1, TCP, A, A, 80, 80, SYN | ACK, 9, 6, b""),
        Segment(1.2, TCP, A, A, 80, 80, ACK, 6, 10, b"hi"),
        Segment(1.3, TCP, A, A, 80, 80, RST, 8, 0, b""),
    ]
    convs = list(ConversationTracker().run(segs))
    assert len(convs) >= 1


_addr = st.sampled_from([A, B, bytes(16), bytes([10, 0, 0, 1])])
_seg = st.builds(
    Segment,
    ts=st.floats(0, 1e4, allow_nan=False),
    proto=st.sampled_from([TCP, UDP, 1]),
    src=_addr,
    dst=_addr,
    sport=st.sampled_from([80, 40000, 53]),
    dport=st.sampled_from([80, 40000, 53]),
    flags=st.integers(0, 0x3F),
    seq=st.one_of(st.integers(0, 0xFFFFFFFF), st.integers(990, 1100)),
    ack=st.one_of(st.integers(0, 0xFFFFFFFF), st.integers(990, 1100)),
    payload=st.binary(max_size=64),
    truncated=st.sampled_from([0, 0, 0, 5]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_seg, max_size=60))
def test_hostile_segment_soup_never_crashes_and_conserves_nothing_invented(segs):
    stats = TraceStats()
    convs = list(ConversationTracker("soup", stats=stats, max_connections=3).run(segs))
    sent = b"".join(s.payload for s in segs if s.proto in (TCP, UDP))
    total_kept = sum(len(m.data) for c in convs for m in c.messages)
    assert total_kept <= len(sent)  # reassembly never invents bytes
    for c in convs:
        assert c.protocol in ("tcp", "udp")
        for m in c.messages:
            assert m.data or m.gaps or c.protocol == "udp"  # an empty datagram is a message
            assert all(0 <= off <= len(m.data) and n > 0 for off, n in m.gaps)


# ----------------------------------------------------- files via the API


def test_read_conversations_unreadable_file_raises_trace_error(tmp_path):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"definitely not a pcap file")
    with pytest.raises(TraceError):
        read_conversations(bad)
    with pytest.raises(TraceError):
        read_conversations(tmp_path / "absent.pcap")


@pytest.mark.skipif(not (CAPTURES / "redis.pcap").exists(), reason="lab captures absent")
def test_lab_redis_capture_one_closed_conversation_per_run():
    runs = (CAPTURES / "redis.runs.jsonl").read_text().splitlines()
    stats = TraceStats()
    convs = list(read_conversations(CAPTURES / "redis.pcap", stats=stats))
    assert stats.damaged == 0
    assert len(convs) == len(runs)
    for c in convs:
        assert c.protocol == "tcp" and c.server.port == 6379 and not c.midstream
        assert c.outcome is Outcome.CLOSED
        assert c.messages[0].direction is Direction.CLIENT
        assert c.messages[0].data[:1] == b"*"  # RESP array: the client speaks first
        dirs = [m.direction for m in c.messages]
        assert all(a != b for a, b in zip(dirs, dirs[1:], strict=False))  # alternation
    ends = [c.end for c in convs]
    assert ends == sorted(ends)  # all closed in the capture: emitted in completion order


@pytest.mark.skipif(not (CAPTURES / "dns.pcap").exists(), reason="lab captures absent")
def test_lab_dns_capture_udp_and_tcp_flows():
    runs = [json.loads(line) for line in (CAPTURES / "dns.runs.jsonl").read_text().splitlines()]
    convs = list(read_conversations(CAPTURES / "dns.pcap"))
    assert len(convs) >= len(runs)
    udp = [c for c in convs if c.protocol == "udp"]
    assert udp and all(c.server.port == 53 for c in udp)
    for c in udp:
        # each dig query: one datagram out, one answer back, same transaction id
        assert [m.direction for m in c.messages][:2] == [Direction.CLIENT, Direction.SERVER]
        assert c.messages[0].data[:2] == c.messages[1].data[:2]


def test_fin_flags_constant_sanity():
    # The tests build segments with these bits; a wrong constant would make them vacuous.
    assert (FIN, SYN, RST, ACK) == (1, 2, 4, 16)


def test_segment_beyond_max_window_is_ignored_and_reported():
    from scriptgen.trace.tcp import TcpLimits

    w = Wire()
    w.handshake()
    w.send(0, b"abc")
    w.segs.append(w.segs[-1]._replace(seq=(w.nxt[0] + 5000) & 0xFFFFFFFF, payload=b"junk"))
    w.send(1, b"ok")
    stats = TraceStats()
    (c,) = ConversationTracker(stats=stats, tcp_limits=TcpLimits(max_window=1000)).run(w.segs)
    assert dialog(c) == [(Direction.CLIENT, b"abc"), (Direction.SERVER, b"ok")]
    assert all(not m.gaps for m in c.messages)
    assert stats.warnings["tcp_out_of_window"] == 1
    # by default (tshark's rule) the far segment is kept after a gap
    (c,) = ConversationTracker().run(w.segs)
    assert c.bytes_of(Direction.CLIENT) == b"abcjunk"
