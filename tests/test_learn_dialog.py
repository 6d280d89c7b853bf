"""Conversation → dialog: banner, turns, server end, what is ignored and why, order."""

from __future__ import annotations

from scriptgen.learn.dialog import DialogStats, group_dialogs, to_dialog
from scriptgen.model import End, Turn
from scriptgen.trace.types import Conversation, Direction, Endpoint, Message, Outcome

C, S = Direction.CLIENT, Direction.SERVER


def conv(
    msgs, *, proto="tcp", port=21, cport=40000, start=1.0, outcome=Outcome.CLOSED, closed_by=C, **kw
):
    messages = [Message(d, data, start + i * 0.01) for i, (d, data) in enumerate(msgs)]
    return Conversation(
        proto,
        Endpoint("10.0.0.1", cport),
        Endpoint("10.0.0.2", port),
        start,
        start + 1,
        messages,
        outcome,
        closed_by,
        source="x.pcap",
        **kw,
    )


def test_banner_turns_and_client_end():
    d = to_dialog(conv([(S, b"220 hi\r\n"), (C, b"USER a\r\n"), (S, b"331\r\n"), (C, b"QUIT\r\n")]))
    assert d.banner == b"220 hi\r\n"
    assert d.suffix.turns == (Turn(b"USER a\r\n", b"331\r\n"), Turn(b"QUIT\r\n", b""))
    assert d.suffix.end is None
    assert d.key == ("tcp", 21)
    assert d.suffix.origin == "x.pcap#10.0.0.1:40000"


def test_server_close_and_reset_are_the_end():
    msgs = [(C, b"QUIT\r\n"), (S, b"221 bye\r\n")]
    assert to_dialog(conv(msgs, closed_by=S)).suffix.end is End.CLOSE
    assert to_dialog(conv(msgs, closed_by=S, outcome=Outcome.RESET)).suffix.end is End.RESET
    assert to_dialog(conv(msgs, closed_by=S, outcome=Outcome.OPEN)).suffix.end is None


def test_server_messages_after_a_request_are_one_answer():
    d = to_dialog(conv([(C, b"GET"), (S, b"part1"), (S, b"part2")]))
    assert d.banner == b"" and d.suffix.turns == (Turn(b"GET", b"part1part2"),)


def test_udp_datagrams_are_separate_requests_tcp_pieces_are_one():
    msgs = [(C, b"q1"), (C, b"q2"), (S, b"a2")]
    assert len(to_dialog(conv(msgs, proto="udp")).suffix.turns) == 2
    assert to_dialog(conv(msgs)).suffix.turns == (Turn(b"q1q2", b"a2"),)


def test_ignored_conversations_and_reasons():
    assert to_dialog(conv([], outcome=Outcome.REFUSED)) == "refused"
    assert to_dialog(conv([], outcome=Outcome.UNANSWERED)) == "unanswered"
    assert to_dialog(conv([])) == "no-messages"
    assert to_dialog(conv([(C, b"x")], midstream=True)) == "midstream"
    assert to_dialog(conv([(C, b"x")], midstream=True), include_midstream=True).suffix.turns


def test_banner_only_conversation_is_a_dialog_with_no_turns():
    d = to_dialog(conv([(S, b"421 busy\r\n")], closed_by=S))
    assert d.banner == b"421 busy\r\n" and d.suffix.turns == () and d.suffix.end is End.CLOSE


def test_a_message_with_capture_gaps_cuts_the_dialog():
    c = conv([(C, b"A"), (S, b"1"), (C, b"B"), (S, b"2")], closed_by=S)
    c.messages[2].gaps = [(0, 10)]
    d = to_dialog(c)
    assert d.suffix.turns == (Turn(b"A", b"1"),) and d.suffix.end is None
    c.messages[0].gaps = [(0, 1)]
    assert to_dialog(c) == "damaged"


def test_max_turns_cuts_long_dialogs():
    msgs = [(C, b"%d" % i) if i % 2 == 0 else (S, b"r") for i in range(40)]
    d = to_dialog(conv(msgs, closed_by=S), max_turns=5)
    assert len(d.suffix.turns) == 5 and d.suffix.end is None


def test_grouping_sorting_and_counting_are_deterministic():
    convs = [
        conv([(C, b"b")], start=2.0, cport=2),
        conv([(C, b"a")], start=1.0, cport=9),
        conv([(C, b"c")], start=1.0, cport=3),
        conv([(C, b"dns")], proto="udp", port=53),
        conv([], outcome=Outcome.REFUSED, port=4444),
        conv([(C, b"z")], port=80),
    ]
    stats = DialogStats()
    groups = group_dialogs(reversed(convs), ports=[21, 53, 4444], stats=stats)
    assert list(groups) == [("tcp", 21), ("udp", 53)]
    assert [d.suffix.turns[0].request for d in groups[("tcp", 21)]] == [b"c", b"a", b"b"]
    assert stats.used == {("tcp", 21): 3, ("udp", 53): 1}
    assert stats.ignored == {("tcp", 4444): {"refused": 1}}
    assert group_dialogs(convs, protocol="udp").keys() == {("udp", 53)}
