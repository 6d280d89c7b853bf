"""Hand-made TCP captures for reassembly edge cases and encapsulations (scapy).

The public corpus has no TCP inside GRE, VXLAN, MPLS, PPPoE or IP-in-IP, and
few of the classic reassembly traps; these small synthetic dialogs fill that
hole so the tshark conformance test covers them too. Each scenario is a list
of IP packets; each encapsulation wraps them into link-layer frames.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from scapy.all import (
    GRE,
    IP,
    PPP,
    TCP,
    UDP,
    CookedLinux,
    Dot1AD,
    Dot1Q,
    Ether,
    IPv6,
    Loopback,
    PPPoE,
    Raw,
    fragment,
    wrpcap,
)
from scapy.contrib.mpls import MPLS
from scapy.layers.vxlan import VXLAN

CLIENT = ("10.1.0.1", 40001)
SERVER = ("10.2.0.2", 8080)
CLIENT6 = ("2001:db8::1", 40001)
SERVER6 = ("2001:db8::2", 8080)
F, S, R, P, A = "F", "S", "R", "P", "A"


class Dialog:
    """Builds one TCP connection packet by packet, tracking both sides' sequence numbers."""

    def __init__(self, c_isn: int = 1000, s_isn: int = 500000, v6: bool = False) -> None:
        self.v6 = v6
        self.c, self.s = (CLIENT6, SERVER6) if v6 else (CLIENT, SERVER)
        self.seq = {"c": c_isn, "s": s_isn}
        self.packets: list = []

    def _ip(self, side: str):
        src, dst = (self.c, self.s) if side == "c" else (self.s, self.c)
        ip = IPv6(src=src[0], dst=dst[0]) if self.v6 else IP(src=src[0], dst=dst[0])
        return ip, src[1], dst[1]

    def raw(self, side: str, flags: str, seq: int, ack: int, data: bytes = b"") -> Dialog:
        """Append a segment with explicit numbers (for lost/odd segments)."""
        ip, sport, dport = self._ip(side)
        pkt = ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq % 2**32, ack=ack % 2**32)
        if data:
            pkt = pkt / Raw(data)
        self.packets.append(pkt)
        return self

    def send(self, side: str, data: bytes = b"", flags: str = "PA", advance: bool = True) -> Dialog:
        other = "s" if side == "c" else "c"
        self.raw(side, flags, self.seq[side], self.seq[other], data)
        if advance:
            self.seq[side] += len(data) + (1 if ("S" in flags or "F" in flags) else 0)
        return self

    def handshake(self) -> Dialog:
        self.raw("c", "S", self.seq["c"], 0)
        self.seq["c"] += 1
        self.raw("s", "SA", self.seq["s"], self.seq["c"])
        self.seq["s"] += 1
        return self.raw("c", "A", self.seq["c"], self.seq["s"])

    def close(self) -> Dialog:
        self.send("c", flags="FA")
        self.send("s", flags="FA")
        return self.send("c", flags="A", advance=False)


REQUEST = b"HELLO server, give me file.txt\r\n"
ANSWER = [b"200 here it comes\r\n", b"line one of the file\n", b"line two of the file\n"]


def basic(v6: bool = False) -> list:
    d = Dialog(v6=v6).handshake().send("c", REQUEST)
    for chunk in ANSWER:
        d.send("s", chunk)
    d.send("c", b"BYE\r\n").send("s", b"221 bye\r\n")
    return d.close().packets


def out_of_order() -> list:
    d = Dialog().handshake().send("c", REQUEST)
    s0 = d.seq["s"]
    a, b, c = ANSWER
    d.raw("s", "PA", s0 + len(a), d.seq["c"], b)  # second chunk first
    d.raw("s", "PA", s0, d.seq["c"], a)
    d.raw("s", "PA", s0 + len(a) + len(b), d.seq["c"], c)
    d.seq["s"] = s0 + len(a) + len(b) + len(c)
    d.send("c", b"", flags="A", advance=False)
    return d.close().packets


def retransmit_different() -> list:
    """A retransmission whose bytes differ: the first seen bytes win; extra bytes extend."""
    d = Dialog().handshake().send("c", REQUEST)
    s0 = d.seq["s"]
    d.raw("s", "PA", s0, d.seq["c"], b"AAAAAAAA")
    d.raw("s", "PA", s0, d.seq["c"], b"BBBBBBBBCCCC")  # overlaps 8, extends by 4
    d.seq["s"] = s0 + 12
    d.send("c", b"ok\r\n")
    return d.close().packets


def lost_then_acked() -> list:
    """A server segment the capture missed, acknowledged by the client: a gap."""
    d = Dialog().handshake().send("c", REQUEST)
    s0 = d.seq["s"]
    a, b, c = ANSWER
    d.raw("s", "PA", s0, d.seq["c"], a)
    # b (len(b) bytes) is not in the capture
    d.raw("s", "PA", s0 + len(a) + len(b), d.seq["c"], c)
    d.seq["s"] = s0 + len(a) + len(b) + len(c)
    d.send("c", b"", flags="A", advance=False)
    d.send("c", b"BYE\r\n").send("s", b"221 bye\r\n")
    return d.close().packets


def midstream() -> list:
    """The capture starts after the handshake."""
    d = Dialog()
    d.seq["c"] += 1
    d.seq["s"] += 1
    d.send("c", REQUEST)
    for chunk in ANSWER:
        d.send("s", chunk)
    return d.close().packets


def seq_wrap() -> list:
    """Sequence numbers wrap around 2**32 in the middle of the server's answer."""
    d = Dialog(c_isn=2**32 - 3, s_isn=2**32 - 30).handshake().send("c", REQUEST)
    for chunk in ANSWER:
        d.send("s", chunk)
    return d.close().packets


def keepalive() -> list:
    """A keep-alive (one old byte at seq - 1) in the middle of a dialog."""
    d = Dialog().handshake().send("c", REQUEST).send("s", ANSWER[0])
    d.raw("c", "A", d.seq["c"] - 1, d.seq["s"], REQUEST[-1:])
    d.send("s", b"", flags="A", advance=False)
    d.send("c", b"MORE\r\n").send("s", ANSWER[1])
    return d.close().packets


def rst_then_data() -> list:
    """The client resets; the server's segments still in flight follow the RST."""
    d = Dialog().handshake().send("c", REQUEST).send("s", ANSWER[0])
    d.raw("c", "R", d.seq["c"], 0)
    d.send("s", ANSWER[1]).send("s", ANSWER[2])
    return d.packets


def syn_with_data() -> list:
    """Data on the SYN (TCP Fast Open style): it is the first byte of the client's stream."""
    d = Dialog()
    d.raw("c", "S", d.seq["c"], 0, REQUEST)
    d.seq["c"] += 1 + len(REQUEST)
    d.raw("s", "SA", d.seq["s"], d.seq["c"])
    d.seq["s"] += 1
    d.send("c", b"", flags="A", advance=False).send("s", ANSWER[0])
    return d.close().packets


def fragmented() -> list:
    """The request travels in IPv4 fragments."""
    d = Dialog().handshake()
    big = REQUEST * 8
    d.send("c", big)
    pkts = d.packets[:-1] + fragment(d.packets[-1], fragsize=64)
    d.packets = pkts
    d.send("s", ANSWER[0])
    return d.close().packets


SCENARIOS: dict[str, Callable[[], list]] = {
    "basic": basic,
    "basic-ipv6": lambda: basic(v6=True),
    "out-of-order": out_of_order,
    "retransmit-different": retransmit_different,
    "lost-then-acked": lost_then_acked,
    "midstream": midstream,
    "seq-wrap": seq_wrap,
    "keepalive": keepalive,
    "rst-then-data": rst_then_data,
    "ipv4-fragments": fragmented,
    "syn-with-data": syn_with_data,
}

OUTER = ("192.0.2.1", "192.0.2.2")


def _ether(ethertype: int | None = None) -> Ether:
    e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    if ethertype is not None:
        e.type = ethertype
    return e


def _ethertype(pkt) -> int:
    return 0x86DD if pkt.haslayer(IPv6) and not pkt.haslayer(IP) else 0x0800


ENCAPSULATIONS: dict[str, tuple[int, Callable]] = {
    # name: (pcap link type, wrap(ip_packet) -> frame)
    "ethernet": (1, lambda p: _ether() / p),
    "vlan": (1, lambda p: _ether() / Dot1Q(vlan=10) / p),
    "qinq": (1, lambda p: _ether() / Dot1AD(vlan=20) / Dot1Q(vlan=10) / p),
    "linux-sll": (113, lambda p: CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, proto=_ethertype(p)) / p),
    "raw-ip": (101, lambda p: p),
    "null-loopback": (0, lambda p: Loopback(type=2) / p),
    "gre": (1, lambda p: _ether() / IP(src=OUTER[0], dst=OUTER[1]) / GRE(proto=_ethertype(p)) / p),
    "vxlan": (
        1,
        lambda p: _ether() / IP(src=OUTER[0], dst=OUTER[1]) / UDP(sport=49152, dport=4789)
        / VXLAN(vni=42) / _ether() / p,
    ),
    "mpls": (1, lambda p: _ether(0x8847) / MPLS(label=100, s=1, ttl=64) / p),
    "pppoe": (1, lambda p: _ether(0x8864) / PPPoE(code=0, sessionid=7) / PPP(proto=0x0021) / p),
    "ip-in-ip": (1, lambda p: _ether() / IP(src=OUTER[0], dst=OUTER[1], proto=4) / p),
    "6in4": (1, lambda p: _ether() / IP(src=OUTER[0], dst=OUTER[1], proto=41) / p),
}  # fmt: skip


# (scenario, encapsulation) pairs worth checking: every scenario plainly, the
# basic dialogs in every encapsulation that can carry them.
CASES: list[tuple[str, str]] = (
    [(name, "ethernet") for name in SCENARIOS]
    + [("basic", e) for e in ENCAPSULATIONS if e not in ("ethernet", "6in4")]
    + [("basic-ipv6", e) for e in ("vlan", "linux-sll", "raw-ip", "gre", "6in4")]
)


def write_capture(path: Path, scenario: str, encapsulation: str = "ethernet") -> Path:
    """Write one scenario, wrapped in one encapsulation, to ``path`` (classic pcap)."""
    linktype, wrap = ENCAPSULATIONS[encapsulation]
    frames = []
    for i, pkt in enumerate(SCENARIOS[scenario]()):
        frame = wrap(pkt)
        frame.time = 1_700_000_000 + i * 0.01
        frames.append(frame)
    log = logging.getLogger("scapy.runtime")
    level = log.level
    log.setLevel(logging.ERROR)  # "inconsistent linktypes": we pass the link type ourselves
    try:
        wrpcap(str(path), frames, linktype=linktype)
    finally:
        log.setLevel(level)
    return path
