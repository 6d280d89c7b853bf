"""The record passed from the packet decoder to the flow tracker.

A ``Segment`` is one TCP segment or UDP datagram after link-layer and IP
decoding (IPv4 fragments already reassembled). Addresses stay packed bytes
(4 or 16) on this hot path; they become text only when a conversation is
emitted.
"""

from __future__ import annotations

from typing import NamedTuple

TCP = 6
UDP = 17

# TCP flag bits
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20


class Segment(NamedTuple):
    ts: float  # seconds since the epoch, at the file's resolution
    proto: int  # TCP or UDP
    src: bytes  # packed IPv4 (4 bytes) or IPv6 (16 bytes) address
    dst: bytes
    sport: int
    dport: int
    flags: int  # TCP flags; 0 for UDP
    seq: int  # TCP sequence number; 0 for UDP
    ack: int  # TCP acknowledgement number; 0 for UDP
    payload: bytes  # as captured: may be shorter than on the wire (snaplen)
    truncated: int = 0  # payload bytes missing because of snaplen
