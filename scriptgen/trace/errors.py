"""Errors and damage accounting for the trace stage.

A capture is hostile input. Exactly one thing is fatal: the file cannot be
read as a capture at all (``TraceError``). Everything else -- a damaged
record, a lying length, a packet cut by the snap length -- is counted in a
``TraceStats`` and reading goes on, so one bad packet never costs the whole
file and never prints a traceback.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["TraceError", "TraceStats"]


class TraceError(Exception):
    """The file cannot be read as a capture at all (one line: file and problem)."""


class TraceStats:
    """Bounded collector of counts and damage reports for one or more captures.

    ``warn`` is for damage (something was wrong with the input); ``skip`` is
    for packets that are fine but of no interest (ARP, ICMP, ...) and is only
    counted. Only the first ``max_messages`` warning texts are kept so that a
    file made of garbage cannot grow memory without bound.
    """

    __slots__ = (
        "packets_read",
        "bytes_read",
        "packets_decoded",
        "warnings",
        "skipped",
        "messages",
        "max_messages",
        "dropped_messages",
    )

    def __init__(self, max_messages: int = 50) -> None:
        self.packets_read = 0  # records read from the file
        self.bytes_read = 0  # captured bytes in those records
        self.packets_decoded = 0  # TCP segments / UDP datagrams emitted
        self.warnings: Counter[str] = Counter()  # damage, by kind
        self.skipped: Counter[str] = Counter()  # uninteresting packets, by kind
        self.messages: list[str] = []  # the first warning texts
        self.max_messages = max_messages
        self.dropped_messages = 0

    def warn(self, kind: str, detail: str) -> None:
        """Report damage of ``kind`` (a short stable key) with a human ``detail``."""
        self.warnings[kind] += 1
        if len(self.messages) < self.max_messages:
            self.messages.append(f"{kind}: {detail}")
        else:
            self.dropped_messages += 1

    def skip(self, kind: str, count: int = 1) -> None:
        """Count packets that were not decoded because they are not TCP/UDP over IP."""
        self.skipped[kind] += count

    @property
    def damaged(self) -> int:
        """Total number of damage reports."""
        return sum(self.warnings.values())

    def summary(self) -> str:
        """Several human-readable lines: totals, then warnings and skips by kind."""
        lines = [
            f"{self.packets_read} packets read ({self.bytes_read} bytes), "
            f"{self.packets_decoded} TCP/UDP decoded, {self.damaged} damaged"
        ]
        if self.warnings:
            lines.append(
                "warnings: " + ", ".join(f"{k}={v}" for k, v in sorted(self.warnings.items()))
            )
        if self.skipped:
            lines.append(
                "skipped: " + ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
            )
        lines.extend("  " + m for m in self.messages)
        if self.dropped_messages:
            lines.append(f"  ... and {self.dropped_messages} more warnings")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"TraceStats(read={self.packets_read}, decoded={self.packets_decoded}, "
            f"warnings={dict(self.warnings)}, skipped={dict(self.skipped)})"
        )
