"""TCP stream reassembly for one connection, cut into messages.

Why hand-written: the trainer needs *messages* (what one side said before the
other spoke), not two separate byte streams, so reassembly and message
cutting happen together, segment by segment, with memory bounded per
connection.

Policy (chosen to match ``tshark -z follow,tcp``, which a conformance test
compares against):

- Each direction is a byte stream starting at the ISN + 1 from its SYN, or,
  for a connection captured mid-stream, at the sequence number of the first
  segment of that direction that carries data (or a FIN) -- except a
  keep-alive byte just behind an already seen data-less segment, which is
  skipped as tshark does.
- Sequence numbers are compared in 32-bit modular arithmetic and turned into
  unbounded stream offsets, so wrap-around is invisible past this point.
- Overlaps: bytes already placed in the stream win ("first seen" for
  in-order data); a retransmission only contributes the bytes past the
  current end. Out-of-order segments wait in a bounded buffer and are placed
  lowest offset first, ties in arrival order.
- Holes: when the peer acknowledges past the start of buffered data, the
  hole was lost by the capture, not by the network: it is skipped at once and
  recorded as a gap (tshark does the same). When the peer's acknowledgement
  rides on data, a hole of up to ``max_ooo_bytes`` at the end of the stream
  is recorded then too, so the gap sits in the message it belongs to, before
  the peer's answer. Holes are also skipped when the out-of-order buffer is
  over its bound and when the connection ends; the data after a hole is
  always kept.
- Keep-alives (0 or 1 byte at seq - 1) and pure retransmissions carry no new
  bytes and are ignored; a zero-window probe's byte is real stream data.

Messages are cut at direction changes, in the order the bytes became
contiguous in their stream; a message's timestamp is that of the segment that
carried its first byte.
"""

from __future__ import annotations

from heapq import heappop, heappush

from scriptgen.trace.segment import ACK, FIN, RST, SYN
from scriptgen.trace.types import Direction, Message, Outcome

__all__ = ["TcpConnection", "TcpLimits"]

M32 = 0xFFFFFFFF
HALF = 0x80000000
WRAP = 0x100000000

# Connection states (plain ints: compared on the hot path).
SYN_SENT = 0  # only the client's SYN(s) so far
ESTABLISHED = 1  # the server answered (SYN/ACK or data), or picked up mid-stream
DONE = 2  # both FINs acknowledged, or RST: nothing more to learn

_DIRS = (Direction.CLIENT, Direction.SERVER)
_GAP_COST = 32  # bytes of budget charged per recorded gap (bounds gap-only messages)


class TcpLimits:
    """Per-connection bounds; shared by all connections of one tracker."""

    __slots__ = ("max_ooo_bytes", "max_ooo_segments", "max_stream_bytes", "max_window")

    def __init__(
        self,
        max_ooo_bytes: int = 1 << 20,
        max_ooo_segments: int = 1024,
        max_stream_bytes: int = 64 << 20,
        max_window: int = HALF - 1,
    ) -> None:
        self.max_ooo_bytes = max_ooo_bytes  # buffered out-of-order bytes per direction
        self.max_ooo_segments = max_ooo_segments  # buffered out-of-order segments per direction
        self.max_stream_bytes = max_stream_bytes  # bytes kept per direction; the rest is a gap
        # A segment further ahead than this is ignored as garbage. The default
        # accepts anything "ahead" in modular arithmetic, as tshark does:
        # sparse captures of huge transfers really jump by up to 2**31.
        self.max_window = max_window


DEFAULT_LIMITS = TcpLimits()


class _Half:
    """Reassembly state of one direction.

    ``base`` is the sequence number of stream offset 0 (None until known);
    ``off`` is the offset of the next expected byte; ``ooo`` is a heap of
    ``(offset, arrival, data, ts, truncated)`` waiting for a hole to fill.
    """

    __slots__ = (
        "base",
        "off",
        "ooo",
        "ooo_bytes",
        "arrivals",
        "fin",
        "fin_acked",
        "kept",
        "dropped",
        "isn",
        "acked",
        "hint",
    )

    def __init__(self) -> None:
        self.base: int | None = None
        self.off = 0
        # (a list once something is buffered: most connections never need one)
        self.ooo: list[tuple[int, int, bytes, float, int]] | tuple[()] = ()
        self.ooo_bytes = 0
        self.arrivals = 0
        self.fin: int | None = None  # stream offset of the FIN
        self.fin_acked = False
        self.kept = 0  # bytes (and gap charges) kept in messages
        self.dropped = 0  # bytes past max_stream_bytes, reported as one final gap
        self.isn: int | None = None  # sequence number of this side's SYN
        self.acked: int | None = None  # latest ACK number the other side sent
        self.hint: int | None = None  # mid-stream: seq of a data-less segment seen before any data

    def offset_of(self, seq: int) -> int:
        """Stream offset of ``seq``, nearest to the current position (mod 2**32)."""
        rel = (seq - self.base - self.off) & M32
        if rel >= HALF:
            rel -= WRAP
        return self.off + rel


class TcpConnection:
    """Both directions of one TCP connection and the messages cut so far.

    ``segment(d, ...)`` is called by the tracker with ``d`` = 0 when the
    segment was sent by the client, 1 when by the server; it returns True once
    the connection is finished (both FINs acknowledged, or a RST), after which
    the tracker calls ``close()`` and emits it.

    The client is whoever sent the SYN (or received the SYN/ACK). For a
    connection picked up mid-stream the tracker decides (see ``flows``).
    """

    __slots__ = (
        "client",
        "server",
        "start",
        "end",
        "midstream",
        "state",
        "halves",
        "messages",
        "cur_dir",
        "cur_chunks",
        "cur_len",
        "cur_ts",
        "cur_gaps",
        "fin_by",
        "rst_by",
        "syn_answer",
        "limits",
        "out_of_window",
    )

    def __init__(
        self,
        client: tuple[bytes, int],
        server: tuple[bytes, int],
        ts: float,
        *,
        midstream: bool = False,
        limits: TcpLimits = DEFAULT_LIMITS,
    ) -> None:
        self.client = client
        self.server = server
        self.start = ts
        self.end = ts
        self.midstream = midstream
        self.state = ESTABLISHED if midstream else SYN_SENT
        self.halves = (_Half(), _Half())
        self.messages: list[Message] = []
        self.cur_dir = -1
        self.cur_chunks: list[bytes] | tuple[()] = ()  # lists only while a message is open
        self.cur_len = 0
        self.cur_ts = ts
        self.cur_gaps: list[tuple[int, int]] | tuple[()] = ()
        self.fin_by: int | None = None
        self.rst_by: int | None = None
        self.syn_answer: int | None = None  # set when the handshake was answered by RST
        self.limits = limits
        self.out_of_window = 0  # segments dropped as implausibly far ahead

    # ------------------------------------------------------------------ hot path

    def segment(
        self,
        d: int,
        ts: float,
        flags: int,
        seq: int,
        ack: int,
        payload: bytes,
        truncated: int = 0,
    ) -> bool:
        """Account one segment sent by side ``d``; True when the connection is finished."""
        if ts > self.end:
            self.end = ts
        if self.state == DONE:
            return True
        if flags & SYN:
            self._syn(d, flags, seq, ack)
            seq = (seq + 1) & M32  # the SYN consumes one sequence number
        elif self.state == SYN_SENT and d == 1 and not flags & RST:
            self.state = ESTABLISHED  # server talks without a captured SYN/ACK
        if flags & ACK:
            peer = self.halves[d ^ 1]
            peer.acked = ack
            if (
                peer.ooo
                or (peer.fin is not None and not peer.fin_acked)
                # about to speak, acknowledging bytes of the peer's we lack
                or (payload and peer.base is not None and ack != (peer.base + peer.off) & M32)
            ):
                self._acked(d ^ 1, peer, ack, ts, bool(payload))
        if payload or truncated:
            self._data(d, seq, payload, truncated, ts)
        elif self.halves[d].base is None:
            self.halves[d].hint = seq
        if flags & FIN:
            self._fin(d, (seq + len(payload) + truncated) & M32)
        if flags & RST:
            self._rst(d)
            return True
        h0, h1 = self.halves
        if h0.fin_acked and h1.fin_acked:
            self.state = DONE
            return True
        return False

    def _syn(self, d: int, flags: int, seq: int, ack: int) -> None:
        h = self.halves[d]
        if h.isn is None or (self.state == SYN_SENT and h.off == 0 and not h.ooo):
            # First SYN of this side, or a retried SYN (one attempt) before any data.
            h.isn = seq
            h.base = (seq + 1) & M32
        if flags & ACK and d == 1:
            if self.state == SYN_SENT:
                self.state = ESTABLISHED
            peer = self.halves[0]
            if peer.base is None:  # we missed the client's SYN
                peer.base = ack

    def _data(self, d: int, seq: int, payload: bytes, truncated: int, ts: float) -> None:
        h = self.halves[d]
        if h.base is None:  # mid-stream: the stream starts here...
            if h.hint is not None and (h.hint - seq) & M32 == 1 and len(payload) + truncated <= 1:
                h.base = h.hint  # ...unless this is a keep-alive just behind a seen ACK
                return
            h.base = seq
        rel = (seq - h.base - h.off) & M32
        if rel >= HALF:
            rel -= WRAP
        if rel <= 0:
            if rel + len(payload) + truncated <= 0:
                return  # retransmission or keep-alive: nothing new
            self._place(d, h, h.off + rel, payload, truncated, ts)
            if h.ooo:
                self._drain(d, h)
        elif rel > self.limits.max_window:
            self.out_of_window += 1
        else:
            self._buffer(d, h, h.off + rel, payload, truncated, ts)

    # ------------------------------------------------------------ reassembly

    def _place(self, d: int, h: _Half, start: int, data: bytes, trunc: int, ts: float) -> None:
        """Append the part of a segment that lies at or past the stream end."""
        skip = h.off - start
        n = len(data)
        if skip < n:
            chunk = data[skip:] if skip else data
            h.off += len(chunk)
            self._emit(d, h, chunk, ts)
            skip = 0
        else:
            skip -= n
        if trunc > skip:
            missing = trunc - skip
            h.off += missing
            self._gap(d, h, missing, ts)

    def _drain(self, d: int, h: _Half) -> None:
        """Place buffered segments that the stream has now reached."""
        ooo = h.ooo
        while ooo and ooo[0][0] <= h.off:
            start, _, data, ts, trunc = heappop(ooo)
            h.ooo_bytes -= len(data)
            if start + len(data) + trunc > h.off:
                self._place(d, h, start, data, trunc, ts)

    def _buffer(self, d: int, h: _Half, start: int, data: bytes, trunc: int, ts: float) -> None:
        if not h.ooo:
            h.ooo = []
        h.arrivals += 1
        heappush(h.ooo, (start, h.arrivals, data, ts, trunc))
        h.ooo_bytes += len(data)
        lim = self.limits
        while h.ooo and (h.ooo_bytes > lim.max_ooo_bytes or len(h.ooo) > lim.max_ooo_segments):
            self._skip_hole(d, h, h.ooo[0][3])

    def _skip_hole(self, d: int, h: _Half, ts: float) -> None:
        """Give up on the hole before the first buffered segment; record it as a gap."""
        first = h.ooo[0][0]
        if first > h.off:
            self._gap(d, h, first - h.off, ts)
            h.off = first
        self._drain(d, h)

    def _acked(self, x: int, h: _Half, ack: int, ts: float, speaks: bool = False) -> None:
        """The other side acknowledged up to ``ack`` of direction ``x``.

        ``speaks``: the acknowledging segment carries data. Bytes of ``x`` it
        acknowledges were received before that data was sent, so a hole in
        them (lost by the capture) is recorded now, at the end of ``x``'s
        message: left for later it would land after the answer and the
        truncated request would look complete.
        """
        if h.base is None:
            return
        ack_off = h.offset_of(ack)
        # Data the receiver acknowledged but the capture lacks: skip the hole now.
        while h.ooo and ack_off > h.ooo[0][0]:
            self._skip_hole(x, h, ts)
        if h.fin is not None and ack_off > h.fin:
            h.fin_acked = True
        if speaks:
            end = ack_off if h.fin is None else min(ack_off, h.fin)
            # Bounded like the out-of-order buffer: a wild ACK number must not
            # make the real bytes that follow look like retransmissions.
            if 0 < end - h.off <= self.limits.max_ooo_bytes:
                self._gap(x, h, end - h.off, ts)
                h.off = end
                if h.ooo:
                    self._drain(x, h)

    def _fin(self, d: int, seq: int) -> None:
        h = self.halves[d]
        if h.base is None:
            h.base = seq
        if h.fin is None:
            h.fin = h.offset_of(seq)
        if self.fin_by is None:
            self.fin_by = d
        if self.state == SYN_SENT and d == 1:
            self.state = ESTABLISHED

    def _rst(self, d: int) -> None:
        if self.state == SYN_SENT:
            self.syn_answer = d  # 1: refused by the server; 0: client gave up
        self.rst_by = d
        self.state = DONE

    # ------------------------------------------------------- message cutting

    def _emit(self, d: int, h: _Half, chunk: bytes, ts: float) -> None:
        room = self.limits.max_stream_bytes - h.kept
        if room <= 0:
            h.dropped += len(chunk)
            return
        if len(chunk) > room:
            h.dropped += len(chunk) - room
            chunk = chunk[:room]
        h.kept += len(chunk)
        if self.cur_dir != d:
            self._start(d, ts)
        self.cur_chunks.append(chunk)
        self.cur_len += len(chunk)

    def _gap(self, d: int, h: _Half, missing: int, ts: float) -> None:
        if h.kept >= self.limits.max_stream_bytes:
            h.dropped += missing
            return
        h.kept += _GAP_COST
        if self.cur_dir != d:
            self._start(d, ts)
        gaps = self.cur_gaps
        if gaps and gaps[-1][0] == self.cur_len:
            gaps[-1] = (self.cur_len, gaps[-1][1] + missing)
        else:
            gaps.append((self.cur_len, missing))

    def _cut(self) -> None:
        """Close the current message (called on a direction change and at the end)."""
        if self.cur_dir >= 0 and (self.cur_len or self.cur_gaps):
            self.messages.append(
                Message(_DIRS[self.cur_dir], b"".join(self.cur_chunks), self.cur_ts, self.cur_gaps)
            )
        self.cur_dir = -1
        self.cur_chunks = ()
        self.cur_len = 0
        self.cur_gaps = ()

    def _start(self, d: int, ts: float) -> None:
        """Begin a message of side ``d`` (the other side spoke last, or nobody yet)."""
        self._cut()
        self.cur_dir = d
        self.cur_ts = ts
        self.cur_chunks = []
        self.cur_gaps = []

    # ---------------------------------------------------------------- ending

    def restarts(self, d: int, seq: int) -> bool:
        """Does a SYN (without ACK) from side ``d`` with ``seq`` open a new connection?

        A retried SYN of a connection still waiting for its answer is the same
        attempt, and a late copy of the original SYN is a retransmission;
        anything else on a used tuple (another ISN, a SYN from the server
        side, a SYN after the end) is a new connection reusing the tuple.
        """
        if self.state == DONE:
            return True
        if d == 0 and (self.state == SYN_SENT or seq == self.halves[0].isn):
            return False
        return True

    def close(self) -> None:
        """Flush buffers (skipping holes), cut the last message, settle the outcome."""
        halves = self.halves
        order = sorted((0, 1), key=lambda i: halves[i].ooo[0][3] if halves[i].ooo else 0.0)
        for d in order:
            h = halves[d]
            while h.ooo:
                self._skip_hole(d, h, h.ooo[0][3])
        for d in order:
            self._trailing_gap(d, halves[d])
        self._cut()
        for d in (0, 1):
            h = halves[d]
            if h.dropped:
                self._append_dropped(d, h.dropped)
                h.dropped = 0

    def _trailing_gap(self, d: int, h: _Half) -> None:
        """Bytes the FIN or the peer's ACK prove were sent but the capture lacks."""
        if h.base is None:
            return
        end = h.fin
        if end is None and h.acked is not None:
            end = h.offset_of(h.acked)
        if end is not None and 0 < end - h.off < self.limits.max_window:
            self._gap(d, h, end - h.off, self.end)
            h.off = end

    def _append_dropped(self, d: int, n: int) -> None:
        """Report bytes beyond max_stream_bytes as a gap at the end of that side's data."""
        for m in reversed(self.messages):
            if m.direction == d:
                if m.gaps and m.gaps[-1][0] == len(m.data):
                    m.gaps[-1] = (len(m.data), m.gaps[-1][1] + n)
                else:
                    m.gaps.append((len(m.data), n))
                return
        self.messages.append(Message(_DIRS[d], b"", self.end, [(0, n)]))

    @property
    def outcome(self) -> Outcome:
        if self.rst_by is not None:
            if self.syn_answer == 1:
                return Outcome.REFUSED
            if self.syn_answer == 0:
                return Outcome.UNANSWERED
            return Outcome.RESET
        if self.state == SYN_SENT:
            return Outcome.UNANSWERED
        if self.fin_by is not None:
            return Outcome.CLOSED
        return Outcome.OPEN

    @property
    def closed_by(self) -> Direction | None:
        """Who sent the first FIN, else who sent the RST."""
        first = self.fin_by if self.fin_by is not None else self.rst_by
        return None if first is None else _DIRS[first]

    @property
    def last_seen(self) -> float:
        return self.end
