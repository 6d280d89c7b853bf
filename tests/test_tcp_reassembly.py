"""TCP reassembly and message cutting, on hand-built segment sequences."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scriptgen.trace.flows import ConversationTracker
from scriptgen.trace.segment import ACK, FIN, PSH, RST, SYN, TCP, Segment
from scriptgen.trace.tcp import TcpLimits
from scriptgen.trace.types import Conversation, Direction, Outcome

M32 = 0xFFFFFFFF
C_IP = bytes([10, 0, 0, 1])
S_IP = bytes([10, 0, 0, 2])
C_PORT = 40000
S_PORT = 80
CLIENT, SERVER = Direction.CLIENT, Direction.SERVER


def seg(
    ts: float, d: int, flags: int, seq: int, ack: int = 0, payload: bytes = b"", trunc: int = 0
):
    """One segment sent by the client (d=0) or the server (d=1)."""
    if d == 0:
        src, dst, sport, dport = C_IP, S_IP, C_PORT, S_PORT
    else:
        src, dst, sport, dport = S_IP, C_IP, S_PORT, C_PORT
    return Segment(ts, TCP, src, dst, sport, dport, flags, seq & M32, ack & M32, payload, trunc)


class Wire:
    """Builds a plausible TCP exchange, keeping both sides' sequence numbers."""

    def __init__(self, cisn: int = 1000, sisn: int = 50000, t0: float = 100.0) -> None:
        self.isn = [cisn & M32, sisn & M32]
        self.nxt = [cisn & M32, sisn & M32]
        self.t = t0
        self.segs: list[Segment] = []

    def ts(self) -> float:
        self.t += 0.01
        return self.t

    def add(self, d: int, flags: int, payload: bytes = b"", seq: int | None = None) -> Segment:
        s = seg(
            self.ts(),
            d,
            flags,
            self.nxt[d] if seq is None else seq,
            self.nxt[d ^ 1],
            payload,
        )
        self.segs.append(s)
        return s

    def syn(self, payload: bytes = b"") -> None:
        self.add(0, SYN, payload)
        self.nxt[0] = (self.nxt[0] + 1 + len(payload)) & M32

    def synack(self) -> None:
        self.add(1, SYN | ACK)
        self.nxt[1] = (self.nxt[1] + 1) & M32

    def handshake(self) -> None:
        self.syn()
        self.synack()
        self.add(0, ACK)

    def send(self, d: int, data: bytes) -> Segment:
        s = self.add(d, ACK | PSH, data)
        self.nxt[d] = (self.nxt[d] + len(data)) & M32
        return s

    def ack(self, d: int) -> Segment:
        return self.add(d, ACK)

    def fin(self, d: int) -> None:
        self.add(d, FIN | ACK)
        self.nxt[d] = (self.nxt[d] + 1) & M32

    def rst(self, d: int) -> None:
        self.add(d, RST | ACK)

    def close(self, first: int) -> None:
        """Orderly close started by ``first``: FIN, ACK+FIN, ACK."""
        self.fin(first)
        self.fin(first ^ 1)
        self.ack(first)


def track(segs, **kw) -> list[Conversation]:
    return list(ConversationTracker("test.pcap", **kw).run(segs))


def one(segs, **kw) -> Conversation:
    convs = track(segs, **kw)
    assert len(convs) == 1, convs
    return convs[0]


def dialog(conv: Conversation) -> list[tuple[Direction, bytes]]:
    return [(m.direction, m.data) for m in conv.messages]


# ---------------------------------------------------------------- basics


def test_handshake_dialog_and_close_by_client():
    w = Wire()
    w.handshake()
    w.send(0, b"HELO ")
    w.send(0, b"there\r\n")
    w.ack(1)
    w.send(1, b"250 hi\r\n")
    w.send(0, b"QUIT\r\n")
    w.send(1, b"221 bye\r\n")
    w.close(0)
    tracker = ConversationTracker("x.pcap")
    emitted_at = [i for i, s in enumerate(w.segs) if tracker.feed(s)]
    assert emitted_at == [len(w.segs) - 1]  # emitted on the last ACK, not at the end
    assert tracker.finish() == []
    c = one(w.segs)
    assert dialog(c) == [
        (CLIENT, b"HELO there\r\n"),
        (SERVER, b"250 hi\r\n"),
        (CLIENT, b"QUIT\r\n"),
        (SERVER, b"221 bye\r\n"),
    ]
    assert c.outcome is Outcome.CLOSED and c.closed_by is CLIENT
    assert not c.midstream
    assert (c.client.ip, c.client.port, c.server.ip, c.server.port) == (
        "10.0.0.1",
        40000,
        "10.0.0.2",
        80,
    )
    assert c.protocol == "tcp" and c.source == "test.pcap"
    assert c.start == w.segs[0].ts and c.end == w.segs[-1].ts
    assert all(not m.gaps for m in c.messages)


def test_close_by_server_and_message_timestamps():
    w = Wire()
    w.handshake()
    first = w.send(0, b"GET / HTTP/1.0\r\n\r\n")
    reply = w.send(1, b"HTTP/1.0 200 OK\r\n")
    w.send(1, b"\r\nbody")
    w.close(1)
    c = one(w.segs)
    assert c.outcome is Outcome.CLOSED and c.closed_by is SERVER
    assert [m.timestamp for m in c.messages] == [first.ts, reply.ts]
    assert c.messages[1].data == b"HTTP/1.0 200 OK\r\n\r\nbody"


def test_fin_without_final_ack_stays_until_end_of_capture():
    w = Wire()
    w.handshake()
    w.send(0, b"x")
    w.fin(0)
    w.fin(1)  # the last ACK is not in the capture
    tracker = ConversationTracker("x")
    assert not any(tracker.feed(s) for s in w.segs)
    (c,) = tracker.finish()
    assert c.outcome is Outcome.CLOSED and c.closed_by is CLIENT


def test_half_open_at_end_of_capture_is_open():
    w = Wire()
    w.handshake()
    w.send(0, b"abc")
    w.send(1, b"def")
    c = one(w.segs)
    assert c.outcome is Outcome.OPEN and c.closed_by is None
    assert dialog(c) == [(CLIENT, b"abc"), (SERVER, b"def")]


def test_data_on_syn_is_part_of_first_message():
    w = Wire()
    w.syn(b"early")
    w.synack()
    w.send(0, b"+more")
    w.send(1, b"ok")
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"early+more"), (SERVER, b"ok")]


def test_data_on_fin_is_kept():
    w = Wire()
    w.handshake()
    w.add(0, FIN | ACK | PSH, b"last words")
    w.nxt[0] += len(b"last words") + 1
    w.fin(1)
    w.ack(0)
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"last words")]
    assert c.outcome is Outcome.CLOSED


# ------------------------------------------------------- retransmission etc.


def test_retransmission_is_not_duplicated():
    w = Wire()
    w.handshake()
    s = w.send(0, b"hello")
    w.segs.append(s._replace(ts=w.ts()))  # exact copy
    w.segs.append(s._replace(ts=w.ts()))
    w.send(1, b"world")
    w.segs.append(s._replace(ts=w.ts()))  # very late copy, after the answer
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"hello"), (SERVER, b"world")]


def test_out_of_order_segments_are_reordered():
    w = Wire()
    w.handshake()
    a = w.send(0, b"one,")
    b = w.send(0, b"two,")
    c3 = w.send(0, b"three")
    w.segs[-3:] = [c3, a, b]
    w.send(1, b"ok")
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"one,two,three"), (SERVER, b"ok")]
    assert c.messages[0].timestamp == a.ts  # the segment carrying the first byte


def test_overlap_already_placed_bytes_win():
    w = Wire()
    w.handshake()
    base = w.nxt[0]
    w.send(0, b"AAAA")
    # A retransmission that disagrees on the old bytes and brings new ones.
    w.segs.append(seg(w.ts(), 0, ACK, base, w.nxt[1], b"XXXXBBBB"))
    w.nxt[0] = base + 8
    w.send(1, b"ok")
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"AAAABBBB"), (SERVER, b"ok")]


def test_overlap_between_buffered_segments_lowest_offset_then_arrival():
    """tshark's rule: buffered segments are placed lowest offset first; a later one
    only adds the bytes past the stream end; equal offsets keep the first seen."""
    w = Wire()
    w.handshake()
    base = w.nxt[0]
    ack = w.nxt[1]
    w.segs += [
        seg(w.ts(), 0, ACK, base + 6, ack, b"ffff"),  # [6,10) first seen
        seg(w.ts(), 0, ACK, base + 4, ack, b"eeEEgg"),  # [4,10), overlaps [6,10)
        seg(w.ts(), 0, ACK, base + 4, ack, b"zzzzzz"),  # same offset, seen later
        seg(w.ts(), 0, ACK, base, ack, b"abcd"),  # fills the hole
    ]
    w.nxt[0] = base + 10
    w.send(1, b"ok")
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"abcdeeEEgg"), (SERVER, b"ok")]


def test_keepalives_are_ignored():
    w = Wire()
    w.handshake()
    w.send(0, b"ping")
    w.segs.append(seg(w.ts(), 0, ACK, w.nxt[0] - 1, w.nxt[1], b""))  # empty keep-alive
    w.segs.append(seg(w.ts(), 0, ACK, w.nxt[0] - 1, w.nxt[1], b"\x00"))  # 1-byte keep-alive
    w.ack(1)
    w.send(1, b"pong")
    w.segs.append(seg(w.ts(), 1, ACK, w.nxt[1] - 1, w.nxt[0], b"\x00"))
    w.send(0, b"ping2")
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"ping"), (SERVER, b"pong"), (CLIENT, b"ping2")]
    assert all(not m.gaps for m in c.messages)


def test_zero_window_probe_byte_is_stream_data_once():
    w = Wire()
    w.handshake()
    base = w.nxt[0]
    w.segs.append(seg(w.ts(), 0, ACK, base, w.nxt[1], b"Q"))  # probe: first byte only
    w.segs.append(seg(w.ts(), 0, ACK, base, w.nxt[1], b"QUERY"))  # window opened
    w.nxt[0] = base + 5
    w.send(1, b"ANSWER")
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"QUERY"), (SERVER, b"ANSWER")]


def test_sequence_wraparound_both_directions():
    w = Wire(cisn=M32 - 3, sisn=M32 - 1)
    w.handshake()
    a = w.send(0, b"0123")
    b = w.send(0, b"4567")  # crosses 2**32
    w.segs[-2:] = [b, a]  # and out of order across the wrap
    w.send(1, b"abcdefgh")
    w.send(0, b"89")
    w.close(0)
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"01234567"), (SERVER, b"abcdefgh"), (CLIENT, b"89")]
    assert c.outcome is Outcome.CLOSED


# ------------------------------------------------------------------ gaps


def test_lost_segment_acked_by_peer_is_a_gap_in_place():
    w = Wire()
    w.handshake()
    w.send(0, b"AAAA")
    lost = w.send(0, b"BBBB")
    w.send(0, b"CCCC")
    w.segs.remove(lost)
    w.send(1, b"reply")  # acks everything: the hole was lost by the capture only
    w.send(0, b"next")
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"AAAACCCC"), (SERVER, b"reply"), (CLIENT, b"next")]
    assert c.messages[0].gaps == [(4, 4)]
    assert c.messages[1].gaps == [] and c.messages[2].gaps == []


def test_lost_last_segment_of_a_request_is_a_gap_before_the_answer():
    """The answer acknowledges bytes the capture lacks at the end of the request:
    the gap belongs to the request (it is incomplete), not after the answer."""
    w = Wire()
    w.handshake()
    w.send(0, b"AAAA")
    lost = w.send(0, b"BBBB")
    w.segs.remove(lost)
    w.send(1, b"reply")
    w.send(0, b"next")
    w.ack(1)
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"AAAA"), (SERVER, b"reply"), (CLIENT, b"next")]
    assert [m.gaps for m in c.messages] == [[(4, 4)], [], []]


def test_lost_last_segment_before_the_answer_and_close():
    w = Wire()
    w.handshake()
    w.send(0, b"AAAA")
    lost = w.send(0, b"BBBB")
    w.segs.remove(lost)
    w.send(1, b"reply")
    w.close(0)
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"AAAA"), (SERVER, b"reply")]
    assert [m.gaps for m in c.messages] == [[(4, 4)], []]
    assert c.outcome is Outcome.CLOSED


def test_acknowledging_the_fin_is_no_gap():
    w = Wire()
    w.handshake()
    w.send(0, b"req")
    w.fin(0)  # half-close, then the server still answers (acking the FIN)
    w.send(1, b"answer")
    w.fin(1)
    w.ack(0)
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"req"), (SERVER, b"answer")]
    assert all(not m.gaps for m in c.messages)


def test_a_wild_ack_on_data_does_not_eat_the_stream():
    """An acknowledgement far beyond anything plausible is not taken as a lost hole."""
    w = Wire()
    w.handshake()
    w.send(0, b"req")
    s = w.send(1, b"answer")
    w.segs[-1] = s._replace(ack=(s.ack + 50_000_000) & M32)
    w.send(0, b"more")
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"req"), (SERVER, b"answer"), (CLIENT, b"more")]
    assert c.messages[0].gaps == [] and c.messages[1].gaps == []


def test_hole_at_end_of_connection_keeps_data_after_it():
    w = Wire()
    w.handshake()
    w.send(0, b"AAAA")
    lost = w.send(0, b"BBBB")
    w.send(0, b"CCCC")
    w.segs.remove(lost)
    c = one(w.segs)  # nobody acknowledges: the hole is skipped at the end
    assert dialog(c) == [(CLIENT, b"AAAACCCC")]
    assert c.messages[0].gaps == [(4, 4)]


def test_missing_first_segment_of_a_message_starts_with_a_gap():
    w = Wire()
    w.handshake()
    w.send(0, b"req")
    lost = w.send(1, b"HEAD")
    w.send(1, b"TAIL")
    w.segs.remove(lost)
    w.send(0, b"req2")  # acks the whole answer
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"req"), (SERVER, b"TAIL"), (CLIENT, b"req2")]
    assert c.messages[1].gaps == [(0, 4)]


def test_out_of_order_bound_forces_a_gap():
    limits = TcpLimits(max_ooo_bytes=8)
    w = Wire()
    w.handshake()
    w.send(0, b"aa")
    lost = w.send(0, b"bb")
    for chunk in (b"cccc", b"dddd", b"eeee"):
        w.send(0, chunk)
    w.segs.remove(lost)
    c = one(w.segs, tcp_limits=limits)
    assert dialog(c) == [(CLIENT, b"aaccccddddeeee")]
    assert c.messages[0].gaps == [(2, 2)]


def test_fin_after_missing_bytes_records_the_gap():
    w = Wire()
    w.handshake()
    w.send(0, b"abc")
    lost = w.send(0, b"def")
    w.segs.remove(lost)
    w.close(0)
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"abc")]
    assert c.messages[0].gaps == [(3, 3)]
    assert c.outcome is Outcome.CLOSED


def test_snaplen_truncated_segments_are_gaps():
    w = Wire()
    w.handshake()
    base = w.nxt[0]
    w.segs.append(seg(w.ts(), 0, ACK, base, w.nxt[1], b"head", trunc=6))
    w.segs.append(seg(w.ts(), 0, ACK, base + 10, w.nxt[1], b"tail", trunc=0))
    w.nxt[0] = base + 14
    w.send(1, b"ok")
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"headtail"), (SERVER, b"ok")]
    assert c.messages[0].gaps == [(4, 6)]


def test_stream_byte_cap_becomes_a_final_gap():
    limits = TcpLimits(max_stream_bytes=10)
    w = Wire()
    w.handshake()
    w.send(0, b"0123456789abcdef")
    w.send(1, b"ok")
    w.send(0, b"more")
    c = one(w.segs, tcp_limits=limits)
    assert dialog(c) == [(CLIENT, b"0123456789"), (SERVER, b"ok")]
    assert c.messages[0].gaps == [(10, 10)]


# -------------------------------------------------- beginnings and endings


def test_midstream_pickup_client_is_the_high_port():
    w = Wire()
    w.send(1, b"tail of an answer")  # capture starts here: the server speaks first
    w.send(0, b"another request")
    w.send(1, b"another answer")
    c = one(w.segs)
    assert c.midstream and c.outcome is Outcome.OPEN
    assert c.client.port == C_PORT and c.server.port == S_PORT
    assert dialog(c) == [
        (SERVER, b"tail of an answer"),
        (CLIENT, b"another request"),
        (SERVER, b"another answer"),
    ]


def test_midstream_stream_starts_at_first_data_not_at_keepalive():
    w = Wire()
    w.ack(0)  # pure ACK, no data: does not fix the stream start
    w.send(0, b"data")
    w.send(1, b"more")
    c = one(w.segs)
    assert c.midstream
    assert dialog(c) == [(CLIENT, b"data"), (SERVER, b"more")]


def test_midstream_keepalive_behind_a_seen_ack_is_not_data():
    w = Wire()
    w.ack(1)  # the server's first segment: a pure ACK at its next sequence number
    w.segs.append(seg(w.ts(), 1, ACK, w.nxt[1] - 1, w.nxt[0], b"\x00"))  # keep-alive
    w.send(0, b"request")
    w.send(1, b"reply")
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"request"), (SERVER, b"reply")]


def test_synack_without_syn_is_not_midstream():
    w = Wire()
    w.nxt[0] += 1  # the client's SYN is missing from the capture
    w.synack()
    w.ack(0)
    w.send(0, b"hello")
    w.send(1, b"hi")
    c = one(w.segs)
    assert not c.midstream
    assert c.client.port == C_PORT
    assert dialog(c) == [(CLIENT, b"hello"), (SERVER, b"hi")]


def test_refused():
    w = Wire()
    w.syn()
    w.rst(1)
    tracker = ConversationTracker("x")
    assert not tracker.feed(w.segs[0])
    (c,) = tracker.feed(w.segs[1])  # emitted immediately
    assert c.outcome is Outcome.REFUSED and c.closed_by is SERVER
    assert c.messages == []


def test_refused_retry_with_same_isn_is_one_attempt():
    w = Wire()
    w.syn()
    w.rst(1)
    w.nxt[0] = w.isn[0]
    w.syn()  # Windows retries the refused SYN with the same ISN
    w.rst(1)
    c = one(w.segs)
    assert c.outcome is Outcome.REFUSED


def test_unanswered_syn_retransmissions_are_one_attempt():
    w = Wire()
    for _ in range(3):
        w.nxt[0] = w.isn[0]
        w.syn()
    c = one(w.segs)
    assert c.outcome is Outcome.UNANSWERED and c.closed_by is None
    assert c.messages == []
    assert c.start == w.segs[0].ts and c.end == w.segs[-1].ts


def test_reset_by_client_after_data():
    w = Wire()
    w.handshake()
    w.send(0, b"req")
    w.send(1, b"resp")
    w.rst(0)
    c = one(w.segs)
    assert c.outcome is Outcome.RESET and c.closed_by is CLIENT
    assert dialog(c) == [(CLIENT, b"req"), (SERVER, b"resp")]


def test_reset_by_server_right_after_handshake():
    w = Wire()
    w.handshake()
    w.rst(1)
    c = one(w.segs)
    assert c.outcome is Outcome.RESET and c.closed_by is SERVER


def test_fin_then_rst_closed_by_first_fin_sender():
    w = Wire()
    w.handshake()
    w.send(0, b"req")
    w.send(1, b"resp")
    w.fin(1)
    w.rst(0)
    c = one(w.segs)
    assert c.outcome is Outcome.RESET and c.closed_by is SERVER


def test_stray_segments_after_close_are_swallowed():
    w = Wire()
    w.handshake()
    w.send(0, b"a")
    w.send(1, b"b")
    w.close(0)
    last_ack = w.segs[-1]
    w.segs.append(last_ack._replace(ts=w.ts()))  # duplicate final ACK
    w.rst(1)  # and a late RST
    c = one(w.segs)
    assert c.outcome is Outcome.CLOSED


def test_tuple_reuse_after_close_is_a_new_conversation():
    w = Wire()
    w.handshake()
    w.send(0, b"first")
    w.close(0)
    w2 = Wire(cisn=777777, sisn=888888, t0=w.t + 1)
    w2.handshake()
    w2.send(0, b"second")
    w2.rst(1)
    convs = track(w.segs + w2.segs)
    assert [dialog(c) for c in convs] == [[(CLIENT, b"first")], [(CLIENT, b"second")]]
    assert [c.outcome for c in convs] == [Outcome.CLOSED, Outcome.RESET]


def test_tuple_reuse_seen_from_the_synack_only():
    w = Wire()
    w.handshake()
    w.send(0, b"first")
    w.rst(0)
    w.segs.append(w.segs[1]._replace(ts=w.ts()))  # late copy of the old SYN/ACK: swallowed
    w2 = Wire(cisn=424242, sisn=5555, t0=w.t + 1)
    w2.handshake()
    w2.send(0, b"second")
    convs = track(w.segs + w2.segs[1:])  # the new SYN is missing from the capture
    assert [dialog(c) for c in convs] == [[(CLIENT, b"first")], [(CLIENT, b"second")]]
    assert [c.outcome for c in convs] == [Outcome.RESET, Outcome.OPEN]
    assert not convs[1].midstream


def test_new_syn_on_open_tuple_with_other_isn_starts_a_new_conversation():
    w = Wire()
    w.handshake()
    w.send(0, b"first")  # never closed in the capture
    w2 = Wire(cisn=123456789, sisn=987654321, t0=w.t + 1)
    w2.handshake()
    w2.send(0, b"second")
    convs = track(w.segs + w2.segs)
    assert [dialog(c) for c in convs] == [[(CLIENT, b"first")], [(CLIENT, b"second")]]
    assert convs[0].outcome is Outcome.OPEN


def test_late_copy_of_original_syn_is_ignored():
    w = Wire()
    w.handshake()
    syn = w.segs[0]
    w.send(0, b"abc")
    w.segs.append(syn._replace(ts=w.ts()))
    w.send(1, b"def")
    c = one(w.segs)
    assert dialog(c) == [(CLIENT, b"abc"), (SERVER, b"def")]


def test_lone_rst_makes_no_conversation():
    assert track([seg(1.0, 1, RST | ACK, 5, 6)]) == []


# ------------------------------------------------------- property tests


def _segments_for(
    msgs: list[tuple[int, bytes]], isn: tuple[int, int], rnd: random.Random
) -> list[Segment]:
    """Cut a dialog into segments, with reordering, duplicates and overlapping
    retransmissions that a real (lossy but loss-free-in-capture) link produces."""
    nxt = [isn[0], isn[1]]
    sent = [b"", b""]  # whole stream so far per direction
    t = [0.0]

    def mk(d: int, off: int, data: bytes, flags: int = ACK) -> Segment:
        t[0] += 0.001
        return seg(t[0], d, flags, (isn[d] + 1 + off), nxt[d ^ 1], data)

    out = [mk(0, -1, b"", SYN)]
    t[0] += 0.001
    out.append(seg(t[0], 1, SYN | ACK, isn[1], isn[0] + 1))
    nxt = [isn[0] + 1, isn[1] + 1]
    for d, data in msgs:
        start = len(sent[d])
        pieces = []
        pos = 0
        while pos < len(data):
            n = rnd.randint(1, max(1, min(len(data) - pos, 40)))
            pieces.append((start + pos, data[pos : pos + n]))
            pos += n
        sent[d] += data
        stream = sent[d]
        extra = []
        for _ in range(rnd.randint(0, 3)):  # duplicates and overlapping retransmissions
            a = rnd.randrange(len(stream))
            b = rnd.randint(a + 1, min(len(stream), a + 60))
            extra.append((a, stream[a:b]))
        pieces += extra
        # reorder within a small window (a permutation of nearby elements)
        keyed = sorted(enumerate(pieces), key=lambda ip: ip[0] + rnd.uniform(0, 4))
        nxt[d] = isn[d] + 1 + len(sent[d])
        for _, (off, chunk) in keyed:
            out.append(mk(d, off, chunk))
        if rnd.random() < 0.3:  # an idle side probes with a garbage keep-alive byte
            k = rnd.randrange(2)
            out.append(mk(k, len(sent[k]) - 1, b"\xee"))
    if rnd.random() < 0.5:  # orderly close by a random side, acknowledged
        first = rnd.randrange(2)
        for k in (first, first ^ 1):
            out.append(mk(k, len(sent[k]), b"", FIN | ACK))
            nxt[k] += 1
        out.append(mk(first, len(sent[first]) + 1, b"", ACK))
    return out


_dialogs = st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=8).map(
    lambda ms: [(i % 2, m) for i, m in enumerate(ms)]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    msgs=_dialogs,
    cisn=st.integers(0, M32),
    sisn=st.integers(0, M32),
    seed=st.integers(0, 2**32),
)
def test_property_random_dialog_survives_segmentation(msgs, cisn, sisn, seed):
    segs = _segments_for(msgs, (cisn, sisn), random.Random(seed))
    c = one(segs)
    assert dialog(c) == [(_dir, data) for _dir, data in msgs]
    assert all(not m.gaps for m in c.messages)
    assert not c.midstream
    closed = any(s.flags & FIN for s in segs)
    assert c.outcome is (Outcome.CLOSED if closed else Outcome.OPEN)


@settings(max_examples=100, deadline=None)
@given(
    msgs=_dialogs,
    cisn=st.integers(0, M32),
    seed=st.integers(0, 2**32),
    drop=st.integers(0, 10**6),
)
def test_property_lost_segment_becomes_exact_gap(msgs, cisn, seed, drop):
    """Drop one data segment (no retransmissions): the data is the original minus
    those bytes, and the gaps say exactly where and how many bytes are missing."""
    rnd = random.Random(seed)
    nxt = [cisn, 5000]
    segs = [seg(0.0, 0, SYN, cisn), seg(0.001, 1, SYN | ACK, 4999, cisn + 1)]
    nxt = [cisn + 1, 5000]
    t = 0.01
    spans = []  # (message index, offset in message, length) per data segment
    for i, (d, data) in enumerate(msgs):
        pos = 0
        while pos < len(data):
            n = rnd.randint(1, len(data) - pos)
            t += 0.001
            segs.append(seg(t, d, ACK, nxt[d] + pos, nxt[d ^ 1], data[pos : pos + n]))
            spans.append((len(segs) - 1, i, pos, n))
            pos += n
        nxt[d] += len(data)
    # a final ACK from each side acknowledges everything
    segs.append(seg(t + 0.01, 0, ACK, nxt[0], nxt[1]))
    segs.append(seg(t + 0.02, 1, ACK, nxt[1], nxt[0]))
    idx, mi, off, n = spans[drop % len(spans)]
    del segs[idx]
    c = one(segs)
    expected = [bytearray(m) for _, m in msgs]
    del expected[mi][off : off + n]
    # Whole streams per direction, and where the gap sits in the stream.
    for d in (0, 1):
        want = b"".join(bytes(e) for (dd, _), e in zip(msgs, expected, strict=True) if dd == d)
        assert c.bytes_of(Direction(d)) == want
    gaps = [
        (sum(len(x.data) for x in c.messages[:k] if x.direction == m.direction) + g[0], g[1])
        for k, m in enumerate(c.messages)
        for g in m.gaps
    ]
    lost_dir = msgs[mi][0]
    stream_off = sum(len(m) for dd, m in msgs[:mi] if dd == lost_dir) + off
    assert gaps == [(stream_off, n)]
    gap_msg = [m for m in c.messages if m.gaps][0]
    assert gap_msg.direction == lost_dir
    # in the very message that lost the bytes (before the answer that acknowledged them)
    assert len(c.messages) == len(msgs) and c.messages[mi].gaps
