"""pcap/pcapng → conversations: the first stage of the data flow.

Public API (stable):

- ``read_conversations(path, ...) -> Iterator[Conversation]``
- ``Conversation``, ``Message``, ``Endpoint``, ``Direction``, ``Outcome``
- ``TraceError``: the file cannot be read as a capture at all.
- ``TraceStats``: counts and (bounded) damage reports of a read.
- ``ConversationTracker``: segments → conversations, for callers that
  decode packets themselves (the proxy's recordings, tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from scriptgen.trace.decode import iter_segments
from scriptgen.trace.errors import TraceError, TraceStats
from scriptgen.trace.flows import DEFAULT_MAX_CONNECTIONS, ConversationTracker
from scriptgen.trace.pcapfile import iter_records
from scriptgen.trace.tcp import DEFAULT_LIMITS, TcpLimits
from scriptgen.trace.types import Conversation, Direction, Endpoint, Message, Outcome

__all__ = [
    "Conversation",
    "ConversationTracker",
    "Direction",
    "Endpoint",
    "Message",
    "Outcome",
    "TcpLimits",
    "TraceError",
    "TraceStats",
    "read_conversations",
]


def read_conversations(
    path: str | os.PathLike[str],
    *,
    udp_timeout: float = 60.0,
    stats: TraceStats | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    tcp_limits: TcpLimits = DEFAULT_LIMITS,
) -> Iterator[Conversation]:
    """Stream the TCP connections and UDP flows of one capture file.

    Raises ``TraceError`` at once when the file cannot be read as a capture;
    damaged packets are only counted in ``stats`` (pass one to see them).
    ``max_connections`` bounds the open connections (and, separately, UDP
    flows) tracked at once; ``tcp_limits`` bounds each connection's buffers.
    Memory grows with the number of connections open at the same time, not
    with the file size.

    Order: *completion order* -- a TCP connection when it ends (both FINs
    acknowledged, RST, tuple reused by a new SYN, or evicted because more
    than ``max_connections`` are open), a UDP flow when idle for
    ``udp_timeout`` seconds of capture time, and whatever is still open at
    the end of the file last, by first packet. Sort if you need another order.
    """
    if stats is None:
        stats = TraceStats()
    records = iter_records(path, stats)  # raises TraceError now
    tracker = ConversationTracker(
        os.fspath(path),
        udp_timeout=udp_timeout,
        max_connections=max_connections,
        stats=stats,
        tcp_limits=tcp_limits,
    )
    return tracker.run(iter_segments(records, stats))
