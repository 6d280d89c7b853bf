"""Compare scriptgen's TCP reassembly with tshark's "Follow TCP Stream", file by file.

Connections are matched by their two endpoints, then by order of appearance
for a reused tuple. Each direction is compared by the endpoint that sent it.
Differences that are explained (tshark and the reader follow different,
documented policies) are put in named categories instead of failing; every
other difference is a mismatch with enough detail to reproduce it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.tshark import GAP_MARKER, TsharkResult, TsharkStream

# Explained, documented differences: category -> why it is not a reassembly bug.
CATEGORIES: dict[str, str] = {
    "no-payload-untracked": (
        "tshark numbers a stream for a stray packet without payload (a lone ACK/RST/FIN of a "
        "connection that began before the capture); the reader makes no conversation of it"
    ),
    "encapsulation": (
        "TCP inside a tunnel (GRE, VXLAN, IP-in-IP, Teredo, GTP, ...) that tshark decodes "
        "and the reader does not (the reader has no conversation for those endpoints)"
    ),
    "data-after-rst": (
        "segments still in flight after a RST: tshark keeps them, the reader ends the "
        "connection at the RST (the reader's bytes are a prefix of tshark's, and the extra "
        "bytes are at most what that side sent after the RST)"
    ),
    "unacked-after-hole": (
        "data after a hole that the peer never acknowledged: tshark holds it back and never "
        "prints it, the reader skips the hole at the end and keeps the data (tshark's bytes, "
        "gap markers removed, are a prefix of the reader's, which records gaps)"
    ),
    "midstream-base": (
        "capture began mid-connection: tshark starts a direction at its first segment of any "
        "kind, the reader at its first segment carrying data, so e.g. a keep-alive byte "
        "before a pure ACK counts for the reader only (tshark's bytes are a suffix)"
    ),
    "seq-jump-over-window": (
        "a sequence jump larger than the reader's max_window (a hostile-input bound; e.g. "
        "a >4 GB transfer with data cut out): tshark accepts any acknowledged jump"
    ),
    "snaplen-truncated": (
        "frames cut by the snap length: tshark concatenates the captured parts, the reader "
        "records the missing bytes as gaps"
    ),
}


@dataclass
class FileReport:
    """What one capture file contributed: counts per outcome, and the failures."""

    path: str
    compared: int = 0
    gap_markers_removed: int = 0  # compared equal after removing tshark's gap markers
    excluded: Counter[str] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)
    tshark_streams: int = 0
    reader_conversations: int = 0

    def merge_into(self, total: FileReport) -> None:
        total.compared += self.compared
        total.gap_markers_removed += self.gap_markers_removed
        total.excluded.update(self.excluded)
        total.mismatches.extend(self.mismatches)
        total.tshark_streams += self.tshark_streams
        total.reader_conversations += self.reader_conversations

    def summary(self) -> str:
        cats = ", ".join(f"{k}={v}" for k, v in sorted(self.excluded.items())) or "none"
        return (
            f"{self.path}: tshark streams={self.tshark_streams}, reader TCP conversations="
            f"{self.reader_conversations}, compared equal={self.compared} (of which "
            f"{self.gap_markers_removed} after removing tshark gap markers), excluded: {cats}, "
            f"mismatches={len(self.mismatches)}"
        )


def _max_window() -> int:
    try:
        from scriptgen.trace.tcp import DEFAULT_LIMITS

        return int(DEFAULT_LIMITS.max_window)
    except (ImportError, AttributeError):
        return 1 << 30


def _first_diff(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def classify_direction(
    ours: bytes, theirs: bytes, conv: object, st: TsharkStream, sender: tuple[str, int]
) -> str | None:
    """None when equal; else a category of :data:`CATEGORIES`, '=gap' or 'mismatch'.

    Each category needs evidence: e.g. 'data-after-rst' only excuses as many bytes
    as ``sender`` put in segments after the stream's first RST.
    """
    if ours == theirs:
        return None
    stripped = GAP_MARKER.sub(b"", theirs)
    if ours == stripped:
        return "=gap"
    has_gaps = any(m.gaps for m in conv.messages)  # type: ignore[attr-defined]
    if st.truncated:
        return "snaplen-truncated"
    big = [int(m.group(1)) for m in GAP_MARKER.finditer(theirs)]
    if any(n > _max_window() for n in big):
        return "seq-jump-over-window"
    outcome = getattr(getattr(conv, "outcome", None), "value", "")
    late = st.after_rst.get(sender, 0)
    if outcome == "reset" and stripped.startswith(ours) and len(stripped) - len(ours) <= late:
        return "data-after-rst"
    if has_gaps and ours.startswith(stripped):
        return "unacked-after-hole"
    if getattr(conv, "midstream", False) and ours.endswith(stripped):
        return "midstream-base"
    return "mismatch"


def _describe(path: str, st: TsharkStream, ep: tuple[str, int], ours: bytes, theirs: bytes) -> str:
    i = _first_diff(ours, theirs)
    return (
        f"{path} tcp.stream={st.index} sender={ep[0]}:{ep[1]} reader={len(ours)}B "
        f"tshark={len(theirs)}B first difference at {i}: reader {ours[i : i + 16].hex()} "
        f"tshark {theirs[i : i + 16].hex()}"
    )


SYN, RST, FIN, ACK = 0x02, 0x04, 0x01, 0x10


def check_shape(conv: object, st: TsharkStream) -> str | None:
    """Who opened the connection and how it ended must agree with tshark's packets.

    Only implications are checked (the reader's claim needs tshark's evidence):
    a stream whose first packet is a bare SYN was opened by that packet's sender;
    'reset'/'refused' need a RST; 'closed' needs a FIN.
    """
    client = (conv.client.ip, conv.client.port)  # type: ignore[attr-defined]
    if st.nodes is not None and st.first_flags & (SYN | ACK) == SYN and client != st.nodes[0]:
        return f"client is {client}, tshark's first packet is a SYN from {st.nodes[0]}"
    outcome = getattr(getattr(conv, "outcome", None), "value", "")
    if outcome in ("reset", "refused") and not st.flags_seen & RST:
        return f"outcome {outcome!r} but tshark saw no RST"
    if outcome == "closed" and not st.flags_seen & FIN:
        return "outcome 'closed' but tshark saw no FIN"
    return None


def compare_pair(path: str, conv: object, st: TsharkStream, rep: FileReport) -> None:
    """Compare one matched connection, both directions, and record the result."""
    from scriptgen.trace import Direction

    shape = check_shape(conv, st)
    if shape is not None:
        rep.mismatches.append(f"{path} tcp.stream={st.index}: {shape}")
        return

    ours = {
        (conv.client.ip, conv.client.port): conv.bytes_of(Direction.CLIENT),  # type: ignore[attr-defined]
        (conv.server.ip, conv.server.port): conv.bytes_of(Direction.SERVER),  # type: ignore[attr-defined]
    }
    theirs = st.sent_by()
    verdicts = {
        ep: classify_direction(data, theirs.get(ep, b""), conv, st, ep) for ep, data in ours.items()
    }
    bad = [ep for ep, v in verdicts.items() if v == "mismatch"]
    if bad:
        for ep in bad:
            rep.mismatches.append(_describe(path, st, ep, ours[ep], theirs.get(ep, b"")))
        return
    cats = sorted({v for v in verdicts.values() if v not in (None, "=gap")})
    if cats:
        rep.excluded[cats[0]] += 1
        return
    rep.compared += 1
    if "=gap" in verdicts.values():
        rep.gap_markers_removed += 1


def _key(a: tuple[str, int], b: tuple[str, int]) -> frozenset[tuple[str, int]]:
    return frozenset((a, b))


def compare_file(path: str | Path, convs: list, ts: TsharkResult) -> FileReport:
    """Match the reader's TCP conversations with tshark's streams and compare them all."""
    name = str(path)
    rep = FileReport(name, tshark_streams=len(ts.streams), reader_conversations=len(convs))
    ours: dict[frozenset, list] = defaultdict(list)
    for c in sorted(convs, key=lambda c: c.start):
        ours[_key((c.client.ip, c.client.port), (c.server.ip, c.server.port))].append(c)
    theirs: dict[frozenset, list[TsharkStream]] = defaultdict(list)
    for idx in sorted(ts.streams):
        st = ts.streams[idx]
        if st.nodes is None:
            rep.mismatches.append(f"{name} tcp.stream={idx}: tshark printed no follow block")
            continue
        theirs[_key(*st.nodes)].append(st)
    for key in set(ours) | set(theirs):
        mine, their = ours.get(key, []), theirs.get(key, [])
        if len(mine) != len(their):
            their = _drop_untracked(their, rep, wanted=len(mine))
        if len(mine) != len(their):
            rep.mismatches.append(
                f"{name} endpoints {sorted(key)}: reader has {len(mine)} conversation(s), "
                f"tshark {len(their)} stream(s) {[s.index for s in their]}"
            )
            continue
        for conv, st in zip(mine, their, strict=True):
            compare_pair(name, conv, st, rep)
    return rep


def _drop_untracked(
    streams: list[TsharkStream], rep: FileReport, wanted: int
) -> list[TsharkStream]:
    """Drop (and count) streams the reader may lack: payload-less strays, then tunnels."""
    excess = len(streams) - wanted
    if excess <= 0:
        return streams
    kept: list[TsharkStream] = []
    for st in streams:
        if excess > 0 and st.payload_bytes == 0:
            rep.excluded["no-payload-untracked"] += 1
            excess -= 1
            continue
        kept.append(st)
    if wanted == 0:
        rest = [st for st in kept if not st.tunnelled]
        if len(rest) < len(kept):
            rep.excluded["encapsulation"] += len(kept) - len(rest)
        kept = rest
    return kept


def run_conversations(path: str | Path) -> list:
    """The reader's TCP conversations of one file (raises the reader's TraceError)."""
    from scriptgen.trace import read_conversations

    return [c for c in read_conversations(path) if c.protocol == "tcp"]
