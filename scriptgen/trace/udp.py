"""UDP flows: one datagram is one message.

UDP has no connection, so a flow is the datagrams exchanged on one 5-tuple
until it has been idle for longer than the flow timeout (capture time). The
client is whoever sent the first datagram of the flow.
"""

from __future__ import annotations

from scriptgen.trace.types import Direction, Message, Outcome

__all__ = ["UdpFlow"]

_DIRS = (Direction.CLIENT, Direction.SERVER)
_MESSAGE_COST = 64  # budget charged per datagram, so empty datagrams are bounded too


class UdpFlow:
    """The datagrams of one flow; ``add`` is the per-datagram hot path."""

    __slots__ = ("client", "server", "start", "end", "messages", "outcome", "budget", "dropped")

    def __init__(
        self,
        client: tuple[bytes, int],
        server: tuple[bytes, int],
        ts: float,
        max_bytes: int = 64 << 20,
    ) -> None:
        self.client = client
        self.server = server
        self.start = ts
        self.end = ts
        self.messages: list[Message] = []
        self.outcome = Outcome.OPEN
        self.budget = max_bytes  # bytes still allowed in messages
        self.dropped = 0  # datagrams not kept because the budget ran out

    def add(self, d: int, ts: float, payload: bytes, truncated: int = 0) -> None:
        """Record one datagram sent by side ``d`` (0 client, 1 server)."""
        if ts > self.end:
            self.end = ts
        cost = len(payload) + _MESSAGE_COST
        if cost > self.budget:
            self.dropped += 1
            return
        self.budget -= cost
        gaps = [(len(payload), truncated)] if truncated else []
        self.messages.append(Message(_DIRS[d], payload, ts, gaps))

    def idle(self, now: float, timeout: float) -> bool:
        return now - self.end > timeout

    # Interface shared with TcpConnection for the tracker's emitter.
    midstream = False
    closed_by = None

    def close(self) -> None:
        """Nothing is buffered: a datagram is a message as soon as it is seen."""

    @property
    def last_seen(self) -> float:
        return self.end
