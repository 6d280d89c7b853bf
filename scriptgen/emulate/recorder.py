"""Relayed dialogs on disk: pcap files that Wireshark opens and ``scriptgen.trace`` reads.

Why pcap with synthesized TCP/IP headers: the recording is then an ordinary
capture, so the learner needs no second input format (``scriptgen train``
reads it like any other), an analyst opens it in Wireshark, and the crash
story is simple. Each relayed connection becomes one TCP flow between the
real client address and the emulator's address, with consistent sequence
numbers, a handshake and a FIN/RST at the end. The server port written is
the *learned* port (the machine that is updated is chosen by it), not the
port the emulator served on (``tcp/21=2121`` records port 21).

Life of a recording (one file per source allocation), in the spool dir::

    <name>.pcap.part   being written; every packet flushed to the OS at once
    <name>.pcap        closed (source released), pending: waiting to be learned
    learned/<name>.pcap  learned and kept for the analyst
    failed/<name>.pcap   the learner could not use it (kept, never retried)

``index.jsonl`` in the spool dir logs every transition for humans; the
directory itself is the source of truth. After ``kill -9`` a ``.part`` file
is complete up to its last flushed packet: ``recover`` closes it (renames it
to ``.pcap``) and it is learned like any other pending file.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

LINKTYPE_RAW = 101  # raw IPv4/IPv6 packets, no link header
_SNAPLEN = 262144
_CHUNK = 65000  # payload bytes per synthesized segment (IP total length stays < 65535)
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

PART, DONE = ".pcap.part", ".pcap"


def _sum16(data: bytes) -> int:
    """Ones'-complement sum of the 16-bit words of ``data`` (even length), mod 0xFFFF.

    2**16 = 1 (mod 0xFFFF), so the sum is the number itself modulo 0xFFFF:
    one C-level big-int operation instead of a Python loop. Sums of
    even-length parts add up, so headers and payload are summed apart
    (no copy of the payload)."""
    return int.from_bytes(data, "big") % 0xFFFF


def _fold(total: int) -> int:
    total %= 0xFFFF
    return ~total & 0xFFFF


def _checksum(data: bytes) -> int:
    """Internet checksum of ``data``."""
    if len(data) % 2:
        data += b"\0"
    n = int.from_bytes(data, "big")
    if n and n % 0xFFFF == 0:
        return 0  # the sum is 0xFFFF (ones' complement "negative zero")
    return _fold(n)


def _addr(ip: str) -> tuple[int, bytes]:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return family, socket.inet_pton(family, ip)


class _Side:
    """Precomputed addresses of one direction of a flow (packets are built often)."""

    def __init__(self, src: tuple[str, int], dst: tuple[str, int]) -> None:
        self.family, self.s = _addr(src[0])
        _, self.d = _addr(dst[0])
        self.sport, self.dport = src[1], dst[1]
        self.v4 = self.family == socket.AF_INET

    def headers(self, seq: int, ack: int, flags: int, payload: bytes) -> bytes:
        """IP and TCP headers for ``payload``, checksums filled in."""
        length = 20 + len(payload)
        if self.v4:
            pseudo = self.s + self.d + struct.pack("!BBH", 0, 6, length)
        else:
            pseudo = self.s + self.d + struct.pack("!I3xB", length, 6)
        tcp = struct.pack(
            "!HHIIBBHHH", self.sport, self.dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
            5 << 4, flags, 65535, 0, 0,
        )  # fmt: skip
        odd = payload + b"\0" if len(payload) % 2 else payload
        csum = _fold(_sum16(pseudo) + _sum16(tcp) + _sum16(odd))
        tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
        if self.v4:
            ip = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0x4000, 64, 6, 0, self.s, self.d
            )
            return ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:] + tcp
        return struct.pack("!IHBB16s16s", 6 << 28, length, 6, 64, self.s, self.d) + tcp


def tcp_packet(
    src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int, flags: int, payload: bytes
) -> bytes:
    """One IPv4 or IPv6 packet carrying one TCP segment, checksums filled in."""
    return _Side(src, dst).headers(seq, ack, flags, payload) + payload


class PcapWriter:
    """A classic pcap file (microsecond stamps, raw IP) flushed after every packet."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.bytes = 0
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, _SNAPLEN, LINKTYPE_RAW))
        f.flush()

    def write(self, ts: float, headers: bytes, payload: bytes = b"") -> None:
        if self.f.closed:
            return  # the recording was finished (source released) before this flow ended
        sec = int(ts)
        usec = min(int((ts - sec) * 1_000_000), 999_999)
        n = len(headers) + len(payload)
        self.f.write(struct.pack("<IIII", sec, usec, n, n) + headers)
        if payload:
            self.f.write(payload)
        self.f.flush()  # on the OS's side at once: kill -9 loses nothing written so far
        self.bytes += 16 + n


class Flow:
    """One recorded TCP connection: keeps both sequence numbers consistent."""

    def __init__(
        self, writer: PcapWriter, client: tuple[str, int], server: tuple[str, int], ts: float
    ) -> None:
        self.w = writer
        self.sides = (_Side(client, server), _Side(server, client))
        self.seq = [secrets.randbits(32), secrets.randbits(32)]  # next seq: client, server
        self.closed = False
        self._packet(0, ts, SYN, b"", ack=False)
        self.seq[0] += 1
        self._packet(1, ts, SYN | ACK, b"")
        self.seq[1] += 1
        self._packet(0, ts, ACK, b"")

    def _packet(self, side: int, ts: float, flags: int, payload: bytes, ack: bool = True) -> None:
        acknum = self.seq[1 - side] if ack else 0
        headers = self.sides[side].headers(self.seq[side], acknum, flags, payload)
        self.w.write(ts, headers, payload)

    def data(self, from_server: bool, payload: bytes, ts: float) -> None:
        """Bytes one side sent (0 = client, 1 = server), cut into segments."""
        if self.closed or not payload:
            return
        side = int(from_server)
        view = memoryview(payload)
        for i in range(0, len(payload), _CHUNK):
            chunk = bytes(view[i : i + _CHUNK]) if len(payload) > _CHUNK else payload
            self._packet(side, ts, PSH | ACK, chunk)
            self.seq[side] += len(chunk)

    def close(self, ts: float, by_server: bool = False, reset: bool = False) -> None:
        """The end of the connection: FIN from each side (closer first), or a RST."""
        if self.closed:
            return
        self.closed = True
        first = int(by_server)
        if reset:
            self._packet(first, ts, RST | ACK, b"")
            return
        for side in (first, 1 - first):
            self._packet(side, ts, FIN | ACK, b"")
            self.seq[side] += 1
        self._packet(first, ts, ACK, b"")


class UdpFlow:
    """One recorded UDP flow: one packet per datagram, as the client saw it."""

    def __init__(
        self, writer: PcapWriter, client: tuple[str, int], server: tuple[str, int]
    ) -> None:
        self.w = writer
        self.ends = (client, server)
        self.closed = False

    def data(self, from_server: bool, payload: bytes, ts: float) -> None:
        if self.closed or not payload:
            return
        src, dst = self.ends[::-1] if from_server else self.ends
        self.w.write(ts, udp_headers(src, dst, payload), payload)

    def close(self, ts: float, by_server: bool = False, reset: bool = False) -> None:
        self.closed = True  # UDP has no end on the wire


def udp_headers(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """IP and UDP headers for one datagram (checksums filled in)."""
    family, s = _addr(src[0])
    _, d = _addr(dst[0])
    length = 8 + len(payload)
    if family == socket.AF_INET:
        pseudo = s + d + struct.pack("!BBH", 0, 17, length)
    else:
        pseudo = s + d + struct.pack("!I3xB", length, 17)
    udp = struct.pack("!HHHH", src[1], dst[1], length, 0)
    odd = payload + b"\0" if len(payload) % 2 else payload
    csum = _fold(_sum16(pseudo) + _sum16(udp) + _sum16(odd)) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum)
    if family == socket.AF_INET:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0x4000, 64, 17, 0, s, d)
        return ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:] + udp
    return struct.pack("!IHBB16s16s", 6 << 28, length, 17, 64, s, d) + udp


class Recording:
    """The pcap of one source allocation, written as the dialogs happen.

    ``max_bytes`` bounds the file: beyond it new data is not written (the
    conversation still ends cleanly) and ``truncated`` says so.
    """

    def __init__(self, path: Path, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.clock = clock
        self.f = open(path, "wb")  # noqa: SIM115 -- closed by finish()
        self.writer = PcapWriter(self.f)
        self.truncated = False
        self.flows = 0

    def flow(self, client: tuple[str, int], server: tuple[str, int]) -> Flow:
        self.flows += 1
        return Flow(self.writer, client, server, self.clock())

    def udp_flow(self, client: tuple[str, int], server: tuple[str, int]) -> UdpFlow:
        self.flows += 1
        return UdpFlow(self.writer, client, server)

    def room(self, n: int) -> bool:
        if self.writer.bytes + n > self.max_bytes:
            self.truncated = True
            return False
        return True

    def finish(self) -> Path:
        """fsync, close, and rename ``.pcap.part`` → ``.pcap`` (now pending)."""
        if not self.f.closed:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
        done = self.path.with_name(self.path.name[: -len(PART)] + DONE)
        os.replace(self.path, done)
        return done


class Spool:
    """The recordings directory: new files, pending files, learned and failed ones."""

    def __init__(self, root: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.root = root
        self.max_bytes = max_bytes
        for sub in ("", "learned", "failed"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def new(self, source: str, host: str) -> Recording:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        safe = "".join(c if c.isalnum() else "_" for c in source)
        name = f"{stamp}-{safe}-{secrets.token_hex(3)}"
        rec = Recording(self.root / (name + PART), self.max_bytes)
        self.log("recording", rec.path.name, source=source, host=host)
        return rec

    def pending(self) -> list[Path]:
        """Closed recordings not learned yet, oldest first."""
        return sorted(self.root.glob("*" + DONE))

    def recover(self) -> list[Path]:
        """At start: recordings left open by a crash become pending (as far as written)."""
        out = []
        for part in sorted(self.root.glob("*" + PART)):
            done = part.with_name(part.name[: -len(PART)] + DONE)
            os.replace(part, done)
            self.log("recovered", done.name)
            out.append(done)
        return out

    def settle(self, path: Path, learned: bool) -> Path:
        """Move a pending file out of the way once learned (or found unusable)."""
        target = self.root / ("learned" if learned else "failed") / path.name
        os.replace(path, target)
        self.log("learned" if learned else "failed", path.name)
        return target

    def log(self, what: str, name: str, **extra: str) -> None:
        line = json.dumps({"ts": time.time(), "what": what, "file": name, **extra})
        try:
            with open(self.root / "index.jsonl", "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError:
            pass  # the index is for humans; the directory is the truth
