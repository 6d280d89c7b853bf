"""Conversation → dialog: the shape the state-machine learner consumes.

A dialog is what the server said on connect (the root's answer), then the
client's requests each with the server's answer up to the client's next
request, then what the server did at the end. Conversations that never
carried a dialog (refused, unanswered, empty) or whose start was not seen
are counted, not learned: a later stage (session dependencies) uses them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePath

from scriptgen.model import End, Suffix, Turn
from scriptgen.trace.types import Conversation, Direction, Outcome


@dataclass(frozen=True, slots=True)
class Dialog:
    """One conversation as the learner sees it."""

    protocol: str
    port: int
    banner: bytes  # server bytes before the first request: the root's answer
    suffix: Suffix  # the turns from the root on, and the server's end

    @property
    def key(self) -> tuple[str, int]:
        return (self.protocol, self.port)


@dataclass
class DialogStats:
    """Why conversations were not learned, per (protocol, port)."""

    used: Counter[tuple[str, int]] = field(default_factory=Counter)
    ignored: dict[tuple[str, int], Counter[str]] = field(default_factory=dict)

    def ignore(self, key: tuple[str, int], reason: str) -> None:
        self.ignored.setdefault(key, Counter())[reason] += 1

    def ignored_total(self, key: tuple[str, int]) -> int:
        return sum(self.ignored.get(key, Counter()).values())


def conversation_sort_key(conv: Conversation) -> tuple:
    """Capture order, with endpoints as tie-break, so learning is reproducible."""
    return (
        conv.start,
        conv.protocol,
        conv.server.ip,
        conv.server.port,
        conv.client.ip,
        conv.client.port,
        conv.end,
        conv.source,
    )


def server_end(conv: Conversation) -> End | None:
    """What the server did after its last answer; None when the client (or the capture) ended."""
    if conv.closed_by is not Direction.SERVER:
        return None
    if conv.outcome is Outcome.CLOSED:
        return End.CLOSE
    if conv.outcome is Outcome.RESET:
        return End.RESET
    return None


def ignore_reason(conv: Conversation, include_midstream: bool) -> str | None:
    """Why a conversation cannot be learned from, or None when it can."""
    if conv.outcome in (Outcome.REFUSED, Outcome.UNANSWERED):
        return conv.outcome.value
    if not conv.messages:
        return "no-messages"
    if conv.midstream and not include_midstream:
        return "midstream"
    return None


def to_dialog(
    conv: Conversation, *, include_midstream: bool = False, max_turns: int = 512
) -> Dialog | str:
    """The dialog of ``conv``, or the reason (a short string) it has none.

    A message with capture gaps ends the dialog before it: its bytes are not
    what was sent, so learning a pattern or an answer from it would be wrong.
    Dialogs longer than ``max_turns`` are cut (bounded depth and work).
    """
    reason = ignore_reason(conv, include_midstream)
    if reason is not None:
        return reason
    separate = conv.protocol == "udp"  # one datagram = one request
    banner = bytearray()
    turns: list[tuple[bytearray, bytearray]] = []
    prev: Direction | None = None
    cut = False
    for msg in conv.messages:
        if msg.gaps:
            cut = True
            break
        if msg.direction is Direction.CLIENT:
            if turns and prev is Direction.CLIENT and not separate:
                turns[-1][0].extend(msg.data)
            else:
                if len(turns) >= max_turns:
                    cut = True
                    break
                turns.append((bytearray(msg.data), bytearray()))
        elif turns:
            turns[-1][1].extend(msg.data)
        else:
            banner.extend(msg.data)
        prev = msg.direction
    if not turns and not banner:
        return "damaged" if cut else "no-messages"
    # The file name only: the same capture elsewhere must give the same model.
    origin = f"{PurePath(conv.source).name}#{conv.client}" if conv.source else str(conv.client)
    suffix = Suffix(
        tuple(Turn(bytes(r), bytes(a)) for r, a in turns),
        None if cut else server_end(conv),
        origin,
    )
    return Dialog(conv.protocol, conv.server.port, bytes(banner), suffix)


def group_dialogs(
    conversations: Iterable[Conversation],
    *,
    ports: Iterable[int] | None = None,
    protocol: str | None = None,
    include_midstream: bool = False,
    max_turns: int = 512,
    stats: DialogStats | None = None,
) -> dict[tuple[str, int], list[Dialog]]:
    """Sorted dialogs per (protocol, server port); ``stats`` counts used and ignored."""
    wanted = None if ports is None else set(ports)
    stats = stats if stats is not None else DialogStats()
    keyed: dict[tuple[str, int], list[tuple[tuple, Dialog]]] = {}
    for conv in conversations:  # converted one by one: the conversations need not fit in memory
        if wanted is not None and conv.server.port not in wanted:
            continue
        if protocol is not None and conv.protocol != protocol:
            continue
        key = (conv.protocol, conv.server.port)
        got = to_dialog(conv, include_midstream=include_midstream, max_turns=max_turns)
        if isinstance(got, str):
            stats.ignore(key, got)
            continue
        stats.used[key] += 1
        keyed.setdefault(key, []).append((conversation_sort_key(conv), got))
    groups: dict[tuple[str, int], list[Dialog]] = {}
    for key in sorted(keyed):
        items = keyed[key]
        items.sort(key=lambda kd: kd[0])
        groups[key] = [d for _, d in items]
    return groups
