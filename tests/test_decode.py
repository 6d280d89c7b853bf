"""Packet decoding: link types, IPv4/IPv6, TCP/UDP, fragments, snaplen cuts.

Packets are built with scapy (tests only) and link headers with ``struct``,
then fed to ``iter_segments`` as records.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from scriptgen.trace.decode import FragmentReassembler, iter_segments
from scriptgen.trace.errors import TraceStats
from scriptgen.trace.pcapfile import Record, iter_records
from scriptgen.trace.segment import ACK, PSH, SYN, Segment
from scriptgen.trace.segment import TCP as P_TCP
from scriptgen.trace.segment import UDP as P_UDP

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"

A4 = bytes([192, 0, 2, 1])
B4 = bytes([198, 51, 100, 7])
A6 = bytes.fromhex("20010db8000000000000000000000001")
B6 = bytes.fromhex("20010db8000000000000000000000002")
MAC = b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb"


def tcp4(payload: bytes = b"hello", **kw) -> bytes:
    return bytes(
        IP(src="192.0.2.1", dst="198.51.100.7", **kw)
        / TCP(sport=1234, dport=80, seq=1000, ack=2000, flags="PA")
        / payload
    )


def tcp6(payload: bytes = b"hello6", ext=None) -> bytes:
    pkt = IPv6(src="2001:db8::1", dst="2001:db8::2")
    if ext is not None:
        pkt = pkt / ext
    return bytes(pkt / TCP(sport=1234, dport=80, seq=5, ack=6, flags="S") / payload)


def eth(ip: bytes, ethertype: int = 0x0800) -> bytes:
    return MAC + struct.pack("!H", ethertype) + ip


def decode(frames: list, linktype: int = 1, stats: TraceStats | None = None) -> list[Segment]:
    """frames: bytes, or (bytes, orig_len); timestamps are 1.0, 2.0, ..."""
    stats = stats if stats is not None else TraceStats()
    recs = []
    for i, f in enumerate(frames, 1):
        data, orig = (f, len(f)) if isinstance(f, bytes) else f
        recs.append(Record(float(i), linktype, data, orig))
    return list(iter_segments(recs, stats))


# ------------------------------------------------------------------ basics


def test_ethernet_ipv4_tcp_fields() -> None:
    stats = TraceStats()
    (seg,) = decode([eth(tcp4(b"GET /"))], stats=stats)
    assert seg == Segment(1.0, P_TCP, A4, B4, 1234, 80, PSH | ACK, 1000, 2000, b"GET /", 0)
    assert stats.packets_decoded == 1 and not stats.warnings


def test_ethernet_ipv4_udp_and_padding_ignored() -> None:
    ip = bytes(IP(src="192.0.2.1", dst="198.51.100.7") / UDP(sport=53, dport=5353) / b"q")
    frame = eth(ip) + b"\0" * (60 - 14 - len(ip))  # Ethernet minimum-size padding
    (seg,) = decode([frame])
    assert (seg.proto, seg.sport, seg.dport, seg.payload, seg.truncated) == (
        P_UDP,
        53,
        5353,
        b"q",
        0,
    )
    assert (seg.flags, seg.seq, seg.ack) == (0, 0, 0)


def test_tcp_options_and_ip_options_are_skipped() -> None:
    ip = bytes(
        IP(src="192.0.2.1", dst="198.51.100.7", options=[b"\x01\x01\x01\x00"])
        / TCP(sport=1, dport=2, flags="S", options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7)])
        / b"data"
    )
    assert ip[0] & 15 == 6  # really has IP options
    (seg,) = decode([eth(ip)])
    assert seg.payload == b"data" and seg.flags == SYN


@pytest.mark.parametrize(
    "tags",
    [
        [(0x8100, 10)],
        [(0x88A8, 100), (0x8100, 10)],  # 802.1ad QinQ
        [(0x9100, 5), (0x8100, 6)],  # old QinQ
        [(0x8100, 1), (0x8100, 2), (0x8100, 3)],
    ],
)
def test_vlan_tags(tags: list[tuple[int, int]]) -> None:
    frame = MAC
    for tpid, vid in tags:
        frame += struct.pack("!HH", tpid, vid)
    frame += b"\x08\x00" + tcp4()
    (seg,) = decode([frame])
    assert seg.payload == b"hello"


def test_vlan_with_scapy_layers_ipv6() -> None:
    frame = bytes(Ether() / Dot1AD(vlan=3) / Dot1Q(vlan=4) / IPv6(tcp6()))
    (seg,) = decode([frame])
    assert seg.src == A6 and seg.payload == b"hello6"


def test_llc_snap_pppoe_and_mpls() -> None:
    snap = MAC + struct.pack("!H", 100) + b"\xaa\xaa\x03\x00\x00\x00\x08\x00" + tcp4(b"snap")
    pppoe = MAC + b"\x88\x64" + b"\x11\x00\x00\x01\x00\x20" + b"\x00\x21" + tcp4(b"pppoe")
    mpls = MAC + b"\x88\x47" + b"\x00\x01\x00\x40" + b"\x00\x02\x01\x40" + tcp4(b"mpls")
    assert [s.payload for s in decode([snap, pppoe, mpls])] == [b"snap", b"pppoe", b"mpls"]


def test_linux_cooked_v1_and_v2() -> None:
    sll = struct.pack("!HHH8sH", 0, 1, 6, MAC[:6] + b"\0\0", 0x0800) + tcp4(b"v1")
    sll6 = struct.pack("!HHH8sH", 4, 1, 6, MAC[:6] + b"\0\0", 0x86DD) + tcp6(b"v1six")
    sll2 = struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, MAC[:8]) + tcp4(b"v2")
    assert [s.payload for s in decode([sll, sll6], linktype=113)] == [b"v1", b"v1six"]
    assert [s.payload for s in decode([sll2], linktype=276)] == [b"v2"]


@pytest.mark.parametrize("linktype", [0, 108])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_null_and_loop_in_both_byte_orders(linktype: int, endian: str) -> None:
    frames = [struct.pack(endian + "I", 2) + tcp4(b"four")]
    frames += [struct.pack(endian + "I", af) + tcp6(b"six") for af in (10, 23, 24, 28, 30)]
    frames.append(struct.pack(endian + "I", 7) + tcp4(b"unknown family"))
    stats = TraceStats()
    segs = decode(frames, linktype=linktype, stats=stats)
    assert [s.payload for s in segs] == [b"four"] + [b"six"] * 5
    assert stats.skipped["non-ip"] == 1


@pytest.mark.parametrize("linktype", [101, 12, 14])
def test_raw_ip_by_version_nibble(linktype: int) -> None:
    segs = decode([tcp4(b"4"), tcp6(b"6")], linktype=linktype)
    assert [(len(s.src), s.payload) for s in segs] == [(4, b"4"), (16, b"6")]


def test_linktype_ipv4_and_ipv6() -> None:
    assert decode([tcp4(b"a")], linktype=228)[0].payload == b"a"
    assert decode([tcp6(b"b")], linktype=229)[0].payload == b"b"


def test_unsupported_linktype_is_counted_once() -> None:
    stats = TraceStats()
    assert decode([b"\x00" * 40] * 3, linktype=147, stats=stats) == []
    assert stats.skipped["linktype-147"] == 3
    assert stats.warnings["unsupported-linktype"] == 1


def test_non_ip_and_non_tcp_udp_are_skipped_silently() -> None:
    stats = TraceStats()
    arp = bytes(Ether() / ARP())
    icmp = eth(bytes(IP(src="192.0.2.1", dst="198.51.100.7") / ICMP()))
    assert decode([arp, icmp, eth(tcp4())], stats=stats)[0].payload == b"hello"
    assert stats.skipped == {"non-ip": 1, "not-tcp-udp": 1}
    assert not stats.warnings


# ------------------------------------------------------------------ lengths


def test_snaplen_cut_payload_reports_missing_bytes() -> None:
    frame = eth(tcp4(b"A" * 100))
    (seg,) = decode([(frame[:-30], len(frame))])
    assert seg.payload == b"A" * 70 and seg.truncated == 30


def test_snaplen_cut_udp() -> None:
    frame = eth(bytes(IP() / UDP(sport=1, dport=2) / (b"B" * 50)))
    (seg,) = decode([(frame[:-10], len(frame))])
    assert seg.payload == b"B" * 40 and seg.truncated == 10


def test_snaplen_cut_inside_tcp_options_keeps_the_segment() -> None:
    ip = bytes(IP() / TCP(flags="S", options=[("MSS", 1460)] * 4) / b"xyz")
    frame = eth(ip)
    cut = 14 + 20 + 22  # 2 bytes into the TCP options
    (seg,) = decode([(frame[:cut], len(frame))])
    assert seg.flags == SYN and seg.payload == b"" and seg.truncated == 3


def test_snaplen_cut_inside_tcp_header_is_reported() -> None:
    frame = eth(tcp4(b"zz"))
    stats = TraceStats()
    assert decode([(frame[: 14 + 20 + 10], len(frame))], stats=stats) == []
    assert stats.warnings["truncated-header"] == 1


def test_ip_total_length_zero_means_offload() -> None:
    ip = bytearray(tcp4(b"C" * 3000))
    ip[2:4] = b"\0\0"
    (seg,) = decode([eth(bytes(ip))])
    assert len(seg.payload) == 3000 and seg.truncated == 0


def test_ip_length_longer_than_the_wire_frame_is_a_lie() -> None:
    ip = bytearray(tcp4(b"D" * 10))
    ip[2:4] = struct.pack("!H", 500)
    stats = TraceStats()
    (seg,) = decode([eth(bytes(ip))], stats=stats)  # orig_len == caplen: not a snaplen cut
    assert seg.payload == b"D" * 10 and seg.truncated == 0
    assert stats.warnings["bad-ip-length"] == 1


@pytest.mark.parametrize(
    "mutate, kind",
    [
        (lambda b: b.__setitem__(0, 0x43), "bad-ip-header"),  # IHL 3
        (lambda b: b.__setitem__(0, 0x55), "bad-ip-header"),  # version 5
        (lambda b: b.__setitem__(slice(2, 4), b"\x00\x10"), "bad-ip-header"),  # total < IHL
        (lambda b: b.__setitem__(32, 0x20), "bad-tcp-header"),  # data offset 2
        (lambda b: b.__setitem__(32, 0xF0), "bad-tcp-header"),  # data offset 60 > segment
        (lambda b: b.__setitem__(slice(0, 4), b"\x4f\x00\x00\x64"), "truncated-header"),
    ],
)
def test_lying_headers_are_warnings(mutate, kind: str) -> None:
    ip = bytearray(tcp4(b"x"))
    mutate(ip)
    stats = TraceStats()
    assert decode([eth(bytes(ip)[:60])], stats=stats) == []
    assert stats.warnings[kind] == 1, stats.messages


def test_udp_length_field_checked_against_ip() -> None:
    good = bytes(IP() / UDP(sport=1, dport=2) / (b"E" * 8))
    longer = bytearray(good)
    longer[24:26] = struct.pack("!H", 1000)
    shorter = bytearray(good)
    shorter[24:26] = struct.pack("!H", 10)
    zero = bytearray(good)
    zero[24:26] = b"\0\0"
    tiny = bytearray(good)
    tiny[24:26] = struct.pack("!H", 3)
    stats = TraceStats()
    segs = decode([eth(bytes(b)) for b in (longer, shorter, zero, tiny)], stats=stats)
    assert [s.payload for s in segs] == [b"E" * 8, b"EE", b"E" * 8]
    assert stats.warnings["bad-udp-length"] == 2


def test_short_frames_never_raise() -> None:
    stats = TraceStats()
    full = eth(tcp4())
    for lt in (0, 1, 12, 101, 108, 113, 228, 229, 276):
        for n in range(len(full)):
            decode([full[:n]], linktype=lt, stats=stats)
    assert stats.damaged > 0


# ------------------------------------------------------------------ IPv4 fragments


def _frags(payload_len: int = 3000, fragsize: int = 800, ident: int = 77) -> tuple[bytes, list]:
    data = bytes((i * 7 + ident) & 0xFF for i in range(payload_len))
    pkt = IP(src="192.0.2.1", dst="198.51.100.7", id=ident) / UDP(sport=9, dport=99) / Raw(data)
    whole = bytes(pkt)
    return whole[28:], [eth(bytes(f)) for f in fragment(IP(whole), fragsize=fragsize)]


@pytest.mark.parametrize("order", ["in-order", "reversed", "shuffled", "duplicated"])
def test_ipv4_fragments_reassembled(order: str) -> None:
    payload, frames = _frags()
    assert len(frames) == 4
    if order == "reversed":
        frames.reverse()
    elif order == "shuffled":
        random.Random(3).shuffle(frames)
    elif order == "duplicated":
        frames = frames[:2] + frames[1:2] + frames[:1] + frames[2:]
    stats = TraceStats()
    segs = decode(frames, stats=stats)
    assert len(segs) == 1
    assert segs[0].payload == payload and segs[0].proto == P_UDP and segs[0].dport == 99
    completes_at = 1 + max(frames.index(f) for f in set(frames))
    assert segs[0].ts == float(completes_at) or order == "duplicated"
    assert not stats.warnings


def test_ipv4_late_duplicate_is_not_emitted_twice() -> None:
    _payload, frames = _frags()
    stats = TraceStats()
    assert len(decode(frames + frames[:1], stats=stats)) == 1
    assert stats.warnings["incomplete-datagram"] == 1  # the straggler never completes


def test_ipv4_fragment_missing_is_not_emitted() -> None:
    _payload, frames = _frags()
    stats = TraceStats()
    assert decode(frames[:1] + frames[2:], stats=stats) == []
    assert stats.warnings["incomplete-datagram"] == 1


def _raw_frag(ident: int, offset8: int, more: bool, data: bytes, proto: int = 17) -> bytes:
    ff = (0x2000 if more else 0) | offset8
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(data), ident, ff, 64, proto, 0, A4, B4)
    return eth(hdr + data)


def test_ipv4_overlapping_fragments_first_arrival_wins() -> None:
    udp = struct.pack("!HHHH", 7, 8, 8 + 24, 0)
    first = udp + b"AAAAAAAA"  # bytes 0..16
    overlap = b"XXXXXXXXXXXXXXXX"  # bytes 8..24: rewrites A's, then fills 16..24
    last = b"CCCCCCCC"  # bytes 24..32
    frames = [
        _raw_frag(5, 0, True, first),
        _raw_frag(5, 1, True, overlap),
        _raw_frag(5, 3, False, last),
    ]
    (seg,) = decode(frames)
    assert seg.payload == b"AAAAAAAA" + b"XXXXXXXX" + b"CCCCCCCC"
    # the same fragments in another order give the bytes that came first
    (seg2,) = decode([frames[1], frames[0], frames[2]])
    assert seg2.payload == b"XXXXXXXX" + b"XXXXXXXX" + b"CCCCCCCC"


def test_ipv4_fragments_bounded() -> None:
    stats = TraceStats()
    frags = FragmentReassembler(stats, timeout=10.0, max_datagrams=4)
    frames = [_raw_frag(i, 0, True, b"\0" * 16) for i in range(10)]
    recs = [Record(1.0, 1, f, len(f)) for f in frames]
    assert list(iter_segments(recs, stats, frags)) == []
    assert len(frags) == 4 and stats.warnings["incomplete-datagram"] == 6
    # timeout: a fragment 11 s later expires everything older
    late = _raw_frag(99, 0, True, b"\0" * 16)
    list(iter_segments([Record(12.0, 1, late, len(late))], stats, frags))
    assert len(frags) == 1 and stats.warnings["incomplete-datagram"] == 10


def test_ipv4_fragment_flood_of_duplicates_is_bounded() -> None:
    stats = TraceStats()
    frags = FragmentReassembler(stats)
    frame = _raw_frag(3, 8, True, b"\0" * 1400)  # never completes: no first fragment
    recs = [Record(1.0, 1, frame, len(frame))] * 200
    assert list(iter_segments(recs, stats, frags)) == []
    assert stats.warnings["incomplete-datagram"] >= 1
    assert frags.buffered_bytes <= 2 * 65535


def test_ipv4_fragment_beyond_64k_is_dropped() -> None:
    stats = TraceStats()
    frames = [_raw_frag(1, 0, True, b"\0" * 16), _raw_frag(1, 8190, False, b"\0" * 64)]
    assert decode(frames, stats=stats) == []
    assert stats.warnings["incomplete-datagram"] == 1


def test_ipv4_fragments_of_different_datagrams_do_not_mix() -> None:
    p1, f1 = _frags(ident=1)
    p2, f2 = _frags(ident=2, payload_len=2000)
    frames = [x for pair in zip(f1, f2, strict=False) for x in pair] + f1[len(f2) :]
    segs = decode(frames)
    assert sorted(s.payload for s in segs) == sorted([p1, p2])


# ------------------------------------------------------------------ IPv6


def test_ipv6_extension_headers() -> None:
    ext = IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=[]) / IPv6ExtHdrDestOpt()
    (seg,) = decode([eth(tcp6(b"ext", ext), 0x86DD)])
    assert (seg.src, seg.dst, seg.flags, seg.payload) == (A6, B6, SYN, b"ext")


def test_ipv6_atomic_fragment() -> None:
    (seg,) = decode([eth(tcp6(b"atomic", IPv6ExtHdrFragment(offset=0, m=0, id=3)), 0x86DD)])
    assert seg.payload == b"atomic"


@pytest.mark.parametrize("reverse", [False, True])
def test_ipv6_fragments_reassembled(reverse: bool) -> None:
    payload = bytes((i * 13) & 0xFF for i in range(3000))
    pkt = (
        IPv6(src="2001:db8::1", dst="2001:db8::2")
        / IPv6ExtHdrFragment(id=0x1234)
        / UDP(sport=5, dport=6)
        / payload
    )
    frames = [eth(bytes(f), 0x86DD) for f in fragment6(pkt, 1280)]
    assert len(frames) == 3
    if reverse:
        frames.reverse()
    (seg,) = decode(frames)
    assert seg.payload == payload and seg.dport == 6


def test_ipv6_snaplen_cut_and_icmpv6_skip() -> None:
    frame = eth(tcp6(b"F" * 40), 0x86DD)
    stats = TraceStats()
    (seg,) = decode([(frame[:-15], len(frame))], stats=stats)
    assert seg.payload == b"F" * 25 and seg.truncated == 15
    icmp6 = bytes(IPv6(nh=58) / b"\x80\x00\x00\x00")
    assert decode([eth(icmp6, 0x86DD)], stats=stats) == []


def test_ipv6_extension_header_overrun_is_reported() -> None:
    ip = bytearray(tcp6(b"", IPv6ExtHdrDestOpt()))
    ip[41] = 200  # extension header claims 1608 bytes
    stats = TraceStats()
    assert decode([eth(bytes(ip), 0x86DD)], stats=stats) == []
    assert stats.damaged == 1


# ------------------------------------------------------------------ against tshark


@pytest.mark.corpus
@pytest.mark.integration
@pytest.mark.skipif(not CORPORA.is_dir(), reason="../shared/corpora absent")
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tcp_segments_match_tshark_on_varied_captures() -> None:
    """Per link type, a few real captures: same TCP segments and bytes as tshark."""
    names = [
        "zeek/tunnels__gre-within-gre.pcap",
        "markofu_pcaps/telnet.pcap",  # an IP length that lies
    ]
    by_kind: dict[str, list[Path]] = {}
    index = (CORPORA / "INDEX.txt").read_text(errors="replace")
    for path in sorted(CORPORA.rglob("*.pcap*")):
        if f"== {path.relative_to(CORPORA)} " not in index:
            continue
        with open(path, "rb") as f:
            head = f.read(24)
        key = head[:4].hex() + (head[20:24].hex() if len(head) == 24 else "")
        if path.stat().st_size < 2_000_000 and len(by_kind.setdefault(key, [])) < 3:
            by_kind[key].append(path)
    paths = [p for group in by_kind.values() for p in group]
    paths += [CORPORA / n for n in names if (CORPORA / n).exists()]
    assert len(paths) >= 5
    for path in paths:
        stats = TraceStats()
        ours = [
            (s.sport, s.dport, s.seq, len(s.payload) + s.truncated)
            for s in iter_segments(iter_records(path, stats), stats)
            if s.proto == P_TCP
        ]
        out = subprocess.run(
            ["tshark", "-n", "-r", str(path), "-Y", "tcp && !icmp && !icmpv6 && !gre && !teredo"]
            + ["-o", "tcp.relative_sequence_numbers:FALSE", "-T", "fields"]
            + ["-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.seq", "-e", "tcp.len"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        theirs = [tuple(int(x.split(",")[-1]) for x in line.split("\t")) for line in out]
        assert ours == theirs, path.name


# ------------------------------------------------------------------ reassembly property


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=4000),
    cuts=st.lists(st.integers(min_value=1, max_value=499), max_size=12),
    dups=st.lists(st.integers(min_value=0, max_value=30), max_size=4),
    seed=st.integers(min_value=0, max_value=2**16),
    drop=st.booleans(),
)
def test_reassembly_property(
    size: int, cuts: list[int], dups: list[int], seed: int, drop: bool
) -> None:
    """Any 8-aligned split, any order, any duplicates: the datagram or nothing, never wrong."""
    body = bytes((i * 31 + seed) & 0xFF for i in range(size))
    datagram = struct.pack("!HHHH", 7, 8, 8 + size, 0) + body
    total = len(datagram)
    bounds = sorted({min(c * 8, total) for c in cuts} | {0, total})
    pieces = [(a, datagram[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    frames = [_raw_frag(9, a // 8, a + len(d) < total, d) for a, d in pieces]
    if len(pieces) > 1:  # a single piece is an ordinary packet: a copy would be a 2nd one
        frames += [frames[d % len(frames)] for d in dups]
    random.Random(seed).shuffle(frames)
    if drop and len(pieces) > 1:
        frames = [f for f in frames if f != frames[0]]
    stats = TraceStats()
    segs = decode(frames, stats=stats)
    if drop and len(pieces) > 1:
        assert segs == [] and stats.warnings["incomplete-datagram"] >= 1
    else:
        # copies arriving after completion may form the datagram a second time
        assert segs and all(s.payload == body for s in segs)
        assert len(segs) <= 1 + len(dups)
