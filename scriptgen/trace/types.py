"""The data the trace stage hands to the learner: conversations of messages.

These types are the contract between ``scriptgen.trace`` and
``scriptgen.learn``; they hold attacker bytes as ``bytes`` and never decode
them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Direction(enum.IntEnum):
    """Who sent a message. The client is whoever opened the connection/flow."""

    CLIENT = 0
    SERVER = 1

    @property
    def label(self) -> str:
        return "c2s" if self is Direction.CLIENT else "s2c"


class Outcome(enum.Enum):
    """How a conversation ended (session-dependency inference needs all of them)."""

    CLOSED = "closed"  # orderly FIN
    RESET = "reset"  # RST after the connection was established
    REFUSED = "refused"  # SYN answered by RST: the port was closed
    UNANSWERED = "unanswered"  # SYN never answered
    OPEN = "open"  # still open when the capture ended
    TIMEOUT = "timeout"  # UDP flow idle for longer than the flow timeout


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(slots=True)
class Message:
    """Bytes one side sent before the other side spoke.

    ``gaps`` lists ``(offset, missing)`` pairs: at ``offset`` in ``data``,
    ``missing`` bytes were never captured (they are *not* in ``data``).
    """

    direction: Direction
    data: bytes
    timestamp: float
    gaps: list[tuple[int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "dir": self.direction.label,
            "ts": self.timestamp,
            "len": len(self.data),
            "data": self.data.hex(),
        }
        if self.gaps:
            d["gaps"] = [list(g) for g in self.gaps]
        return d


@dataclass(slots=True)
class Conversation:
    """One TCP connection or one UDP flow, as the learner sees it."""

    protocol: str  # "tcp" or "udp"
    client: Endpoint
    server: Endpoint
    start: float
    end: float
    messages: list[Message] = field(default_factory=list)
    outcome: Outcome = Outcome.OPEN
    closed_by: Direction | None = None  # who sent the first FIN/RST, if anyone
    midstream: bool = False  # capture began after the handshake
    source: str = ""  # capture file name, for provenance and error messages

    @property
    def requests(self) -> list[bytes]:
        return [m.data for m in self.messages if m.direction is Direction.CLIENT]

    def bytes_of(self, direction: Direction) -> bytes:
        """The whole reassembled stream of one side (for tshark comparisons)."""
        return b"".join(m.data for m in self.messages if m.direction is direction)

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "client": {"ip": self.client.ip, "port": self.client.port},
            "server": {"ip": self.server.ip, "port": self.server.port},
            "start": self.start,
            "end": self.end,
            "outcome": self.outcome.value,
            "closed_by": None if self.closed_by is None else self.closed_by.label,
            "midstream": self.midstream,
            "source": self.source,
            "messages": [m.to_dict() for m in self.messages],
        }
