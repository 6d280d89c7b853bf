"""Segments → conversations: dispatch to TCP connections and UDP flows.

The tracker is streaming: it keeps only the connections and flows that are
still open, so memory grows with the number of open connections, not with
the size of the capture. Every table has a bound.

Conversations come out in *completion order*: a TCP connection when both
FINs are acknowledged or a RST is seen (or when a new SYN reuses its tuple,
or when it is evicted to respect ``max_connections``); a UDP flow when it has
been idle for ``udp_timeout`` seconds of capture time; everything still open
at the end of the capture last, in order of first packet. Consumers that want
another order sort.

A finished TCP tuple stays in a time-wait table for ``TIME_WAIT`` seconds of
capture time (bounded by ``2 * max_connections`` entries) so that its late
ACKs, RSTs and retransmitted SYN or SYN/ACK do not start a bogus mid-stream
conversation; a SYN or SYN/ACK for another ISN starts a new connection.
A RST alone on an unknown tuple makes no conversation.

Who is the client of a connection picked up mid-stream (no SYN seen)? The
side whose port is *not* the likely service port: if exactly one port is
below 1024 it is the server's; otherwise the lower port is the server's;
with equal ports, the receiver of the first seen segment is the server.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator

from scriptgen.trace.errors import TraceStats
from scriptgen.trace.segment import ACK, RST, SYN, TCP, UDP, Segment
from scriptgen.trace.tcp import DEFAULT_LIMITS, TcpConnection, TcpLimits
from scriptgen.trace.types import Conversation, Endpoint, Outcome
from scriptgen.trace.udp import UdpFlow

__all__ = ["ConversationTracker", "DEFAULT_MAX_CONNECTIONS", "server_side"]

DEFAULT_MAX_CONNECTIONS = 100_000  # per protocol
TIME_WAIT = 120.0  # seconds of capture time a finished TCP tuple swallows stray segments
_EVICT_FRACTION = 16  # on overflow, evict the oldest 1/16 of the table at once

Conn = TcpConnection | UdpFlow


def server_side(sport: int, dport: int) -> int:
    """For a mid-stream pickup: 1 if the *destination* of a segment is the server, else 0."""
    if (sport < 1024) != (dport < 1024):
        return 1 if dport < 1024 else 0
    if sport != dport:
        return 1 if dport < sport else 0
    return 1


def _ip_text(addr: bytes) -> str:
    if len(addr) == 4:
        return socket.inet_ntop(socket.AF_INET, addr)
    if len(addr) == 16:
        return socket.inet_ntop(socket.AF_INET6, addr)
    return addr.hex()  # not an IP address: still show something stable


class ConversationTracker:
    """Turns a stream of ``Segment`` into finished ``Conversation`` objects.

    ``feed(seg)`` returns the conversations finished by that segment (usually
    none); ``finish()`` returns the rest at the end of the capture; ``run``
    does both over an iterable of segments.
    """

    def __init__(
        self,
        source: str = "",
        *,
        udp_timeout: float = 60.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        stats: TraceStats | None = None,
        tcp_limits: TcpLimits = DEFAULT_LIMITS,
        sweep_interval: float | None = None,
    ) -> None:
        self.source = source
        self.udp_timeout = float(udp_timeout)
        self.max_connections = max(1, int(max_connections))
        self.stats = stats if stats is not None else TraceStats()
        self.tcp_limits = tcp_limits
        self.sweep_interval = (
            float(sweep_interval)
            if sweep_interval is not None
            else max(1.0, min(self.udp_timeout / 4, 30.0))
        )
        # 4-tuple as seen on the wire (src, sport, dst, dport) -> (connection, sender side)
        self._tcp: dict[tuple[bytes, int, bytes, int], tuple[TcpConnection, int]] = {}
        self._udp: dict[tuple[bytes, int, bytes, int], tuple[UdpFlow, int]] = {}
        self._tcp_count = 0
        self._udp_count = 0
        # finished TCP tuples -> (capture time, client ISN) for the time-wait rule
        self._closed: dict[tuple[bytes, int, bytes, int], tuple[float, int | None]] = {}
        self._next_sweep: float | None = None
        self._now = float("-inf")  # latest capture time seen
        self._out: list[Conversation] = []

    # ------------------------------------------------------------------ feeding

    def run(self, segments: Iterable[Segment]) -> Iterator[Conversation]:
        """All conversations of ``segments``, in completion order (the fast path)."""
        feed_tcp = self._feed_tcp
        feed_udp = self._feed_udp
        for ts, proto, src, dst, sport, dport, flags, seq, ack, payload, truncated in segments:
            if ts > self._now:
                self._advance(ts)
            if proto == TCP:
                feed_tcp(ts, src, dst, sport, dport, flags, seq, ack, payload, truncated)
            elif proto == UDP:
                feed_udp(ts, src, dst, sport, dport, payload, truncated)
            if self._out:
                done, self._out = self._out, []
                yield from done
        yield from self.finish()

    def feed(self, seg: Segment) -> list[Conversation]:
        """Account one segment; return the conversations it finished."""
        ts, proto, src, dst, sport, dport, flags, seq, ack, payload, truncated = seg
        if ts > self._now:
            self._advance(ts)
        if proto == TCP:
            self._feed_tcp(ts, src, dst, sport, dport, flags, seq, ack, payload, truncated)
        elif proto == UDP:
            self._feed_udp(ts, src, dst, sport, dport, payload, truncated)
        done, self._out = self._out, []
        return done

    def _advance(self, ts: float) -> None:
        """Capture time moved forward: run the periodic sweep when it is due."""
        self._now = ts
        if self._next_sweep is None:
            self._next_sweep = ts + self.sweep_interval
        elif ts >= self._next_sweep:
            self._sweep(ts)

    def _feed_tcp(
        self,
        ts: float,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        flags: int,
        seq: int,
        ack: int,
        payload: bytes,
        truncated: int,
    ) -> None:
        key = (src, sport, dst, dport)
        entry = self._tcp.get(key)
        if entry is not None:
            conn, d = entry
            if flags & SYN and not flags & ACK and conn.restarts(d, seq):
                self._finish_tcp(conn)
                entry = None
        if entry is None:
            if self._closed and key in self._closed:
                if not self._reopens(key, flags, seq, ack):
                    return
                self._forget_closed(key)
            if flags & RST:
                return  # a RST alone tells nothing about a conversation
            conn, d = self._open_tcp(ts, src, dst, sport, dport, flags)
        if conn.segment(d, ts, flags, seq, ack, payload, truncated):
            self._finish_tcp(conn)

    def _reopens(self, key: tuple[bytes, int, bytes, int], flags: int, seq: int, ack: int) -> bool:
        """Time-wait rule: does this segment on a finished tuple open a new connection?

        Stray segments of the finished connection, copies of its SYN (same
        ISN) and of its SYN/ACK (acknowledging that ISN) are swallowed; a SYN
        or SYN/ACK for another ISN is a new connection on the same tuple.
        """
        if not flags & SYN:
            return False
        isn = self._closed[key][1]
        if isn is None:
            return True
        if flags & ACK:
            return ack != (isn + 1) & 0xFFFFFFFF
        return seq != isn

    def _open_tcp(
        self, ts: float, src: bytes, dst: bytes, sport: int, dport: int, flags: int
    ) -> tuple[TcpConnection, int]:
        if flags & SYN:
            d = 1 if flags & ACK else 0  # SYN/ACK: the sender is the server
            midstream = False
        else:
            d = 0 if server_side(sport, dport) else 1
            midstream = True
        a, b = (src, sport), (dst, dport)
        client, server = (a, b) if d == 0 else (b, a)
        conn = TcpConnection(client, server, ts, midstream=midstream, limits=self.tcp_limits)
        if self._tcp_count >= self.max_connections:
            self._evict(self._tcp, "tcp")
        self._tcp[(src, sport, dst, dport)] = (conn, d)
        self._tcp[(dst, dport, src, sport)] = (conn, d ^ 1)
        self._tcp_count += 1
        return conn, d

    def _feed_udp(
        self,
        ts: float,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        payload: bytes,
        truncated: int,
    ) -> None:
        key = (src, sport, dst, dport)
        entry = self._udp.get(key)
        if entry is not None:
            flow, d = entry
            if ts - flow.end > self.udp_timeout:
                self._expire_udp(flow)
                entry = None
        if entry is None:
            flow = UdpFlow((src, sport), (dst, dport), ts, self.tcp_limits.max_stream_bytes)
            if self._udp_count >= self.max_connections:
                self._evict(self._udp, "udp")
            self._udp[key] = (flow, 0)
            self._udp[(dst, dport, src, sport)] = (flow, 1)
            self._udp_count += 1
            d = 0
        flow.add(d, ts, payload, truncated)

    # ----------------------------------------------------------------- ending

    def _unregister(self, table: dict, conn: Conn) -> None:
        (cip, cport), (sip, sport) = conn.client, conn.server
        table.pop((cip, cport, sip, sport), None)
        table.pop((sip, sport, cip, cport), None)

    def _finish_tcp(self, conn: TcpConnection) -> None:
        self._unregister(self._tcp, conn)
        self._tcp_count -= 1
        (cip, cport), (sip, sport) = conn.client, conn.server
        if len(self._closed) >= 2 * self.max_connections:
            self._trim_closed()
        mark = (self._now, conn.halves[0].isn)
        self._closed[(cip, cport, sip, sport)] = mark
        self._closed[(sip, sport, cip, cport)] = mark
        self._emit(conn, "tcp")

    def _expire_udp(self, flow: UdpFlow) -> None:
        self._unregister(self._udp, flow)
        self._udp_count -= 1
        flow.outcome = Outcome.TIMEOUT
        self._emit(flow, "udp")

    def _forget_closed(self, key: tuple[bytes, int, bytes, int]) -> None:
        src, sport, dst, dport = key
        self._closed.pop(key, None)
        self._closed.pop((dst, dport, src, sport), None)

    def _trim_closed(self) -> None:
        """Drop the older half of the time-wait table (dicts keep insertion order)."""
        keep = list(self._closed.items())[len(self._closed) // 2 :]
        self._closed = dict(keep)

    def _evict(self, table: dict, proto: str) -> None:
        """Table full: emit the longest-idle connections as they are now."""
        conns = {id(c): c for c, _ in table.values()}
        victims = sorted(conns.values(), key=lambda c: c.last_seen)
        victims = victims[: max(1, len(victims) // _EVICT_FRACTION)]
        self.stats.warn(
            f"{proto}_evicted",
            f"more than {self.max_connections} open {proto} conversations; "
            f"emitted the {len(victims)} longest idle early",
        )
        for c in victims:
            self._unregister(table, c)
            if proto == "tcp":
                self._tcp_count -= 1
            else:
                self._udp_count -= 1
            self._emit(c, proto)

    def _sweep(self, now: float) -> None:
        """Periodic, by capture time: expire idle UDP flows and old time-wait entries."""
        self._next_sweep = now + self.sweep_interval
        timeout = self.udp_timeout
        if self._udp:
            expired = {id(f): f for f, _ in self._udp.values() if now - f.end > timeout}
            for f in sorted(expired.values(), key=lambda f: f.end):
                self._expire_udp(f)
        if self._closed:
            limit = now - TIME_WAIT
            self._closed = {k: m for k, m in self._closed.items() if m[0] >= limit}

    def finish(self) -> list[Conversation]:
        """End of capture: every connection and flow still tracked, by first packet."""
        pending: dict[int, tuple[Conn, str]] = {}
        for c, _ in self._tcp.values():
            pending[id(c)] = (c, "tcp")
        for f, _ in self._udp.values():
            pending[id(f)] = (f, "udp")
        self._tcp.clear()
        self._udp.clear()
        self._closed.clear()
        self._tcp_count = self._udp_count = 0
        for c, proto in sorted(pending.values(), key=lambda p: p[0].start):
            self._emit(c, proto)
        out, self._out = self._out, []
        return out

    def _emit(self, conn: Conn, proto: str) -> None:
        conn.close()
        if isinstance(conn, TcpConnection) and conn.out_of_window:
            self.stats.warn(
                "tcp_out_of_window",
                f"{conn.out_of_window} segments implausibly far ahead ignored",
            )
        elif isinstance(conn, UdpFlow) and conn.dropped:
            self.stats.warn(
                "udp_flow_bound",
                f"{conn.dropped} datagrams past the flow's byte bound not kept",
            )
        (cip, cport), (sip, sport) = conn.client, conn.server
        self._out.append(
            Conversation(
                protocol=proto,
                client=Endpoint(_ip_text(cip), cport),
                server=Endpoint(_ip_text(sip), sport),
                start=conn.start,
                end=conn.end,
                messages=conn.messages,
                outcome=conn.outcome,
                closed_by=conn.closed_by,
                midstream=conn.midstream,
                source=self.source,
            )
        )
