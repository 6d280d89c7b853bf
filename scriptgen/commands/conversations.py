"""``scriptgen conversations PCAP...``: the conversations as the trainer sees them.

A debugging view of the trace stage: one line per TCP connection / UDP flow
(``-v`` adds one line per message with a short escaped preview), or JSON
lines (``--json``, payloads in hex) for scripts and for comparing with other
tools. Unreadable files cost one stderr line each and exit status 1; damaged
packets are summarised on stderr and do not change the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from scriptgen.trace import Conversation, TraceError, TraceStats, read_conversations
from scriptgen.trace.types import Message

MAX_WARNING_LINES = 5  # damage details printed per file; the rest are only counted
_ESCAPES = {0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "conversations",
        help="list the TCP/UDP conversations of captures",
        description="List the TCP connections and UDP flows of pcap/pcapng captures, "
        "as the trainer sees them (completion order).",
    )
    p.add_argument("pcaps", nargs="+", metavar="PCAP")
    p.add_argument("--json", action="store_true", help="JSON lines, one conversation per line")
    p.add_argument(
        "--port", type=int, action="append", metavar="N", help="only conversations on port N"
    )
    p.add_argument("--proto", choices=("tcp", "udp"), help="only this transport")
    p.add_argument(
        "--udp-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds of capture time after which an idle UDP flow ends (default 60)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also one line per message")
    p.add_argument(
        "--preview",
        type=int,
        default=48,
        metavar="N",
        help="payload bytes shown per message with -v (default 48)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.udp_timeout > 0:  # also rejects nan
        print("scriptgen: --udp-timeout must be positive", file=sys.stderr)
        return 2
    out = sys.stdout
    status = 0
    try:
        for path in args.pcaps:
            if len(args.pcaps) > 1 and not args.json:
                out.write(f"# {path}\n")
            if not _one_file(path, args, out):
                status = 1
        out.flush()
    except BrokenPipeError:
        _silence_stdout()
    return status


def _one_file(path: str, args: argparse.Namespace, out: TextIO) -> bool:
    """Print one capture's conversations; False if the file could not be read."""
    stats = TraceStats()
    ports = set(args.port or ())
    try:
        for conv in read_conversations(path, udp_timeout=args.udp_timeout, stats=stats):
            if args.proto and conv.protocol != args.proto:
                continue
            if ports and conv.client.port not in ports and conv.server.port not in ports:
                continue
            if args.json:
                out.write(json.dumps(conv.to_dict(), separators=(",", ":")) + "\n")
            else:
                out.write(format_conversation(conv) + "\n")
                if args.verbose:
                    for line in format_messages(conv, args.preview):
                        out.write(line + "\n")
    except BrokenPipeError:
        raise
    except (TraceError, OSError) as e:
        text = str(e)
        if not text.startswith(path):
            text = f"{path}: {text}"
        out.flush()
        print(f"scriptgen: {text}", file=sys.stderr)
        return False
    _report_damage(path, stats)
    return True


def _report_damage(path: str, stats: TraceStats) -> None:
    if not stats.damaged:
        return
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(stats.warnings.items()))
    print(
        f"scriptgen: {path}: warning: {stats.damaged} problem(s) in the capture ({kinds})",
        file=sys.stderr,
    )
    for msg in stats.messages[:MAX_WARNING_LINES]:
        msg = msg.replace(f"{path}: ", "", 1)  # the reader names the file too
        print(f"scriptgen: {path}:   {msg}", file=sys.stderr)
    more = stats.damaged - min(len(stats.messages), MAX_WARNING_LINES)
    if more > 0:
        print(f"scriptgen: {path}:   ... and {more} more", file=sys.stderr)


def _silence_stdout() -> None:
    """The reader went away (``| head``): drop the rest quietly, no traceback at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


# --------------------------------------------------------------- formatting


def format_time(ts: float) -> str:
    """UTC time of a capture timestamp; the raw number if it is not a plausible date."""
    try:
        return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    except (OverflowError, OSError, ValueError):
        return f"{ts:.6f}"


def format_conversation(c: Conversation) -> str:
    """One table row: proto, client -> server, start, outcome, closer, flags, counts."""
    c2s = sum(len(m.data) for m in c.messages if m.direction == 0)
    s2c = sum(len(m.data) for m in c.messages if m.direction == 1)
    closer = c.closed_by.name.lower() if c.closed_by is not None else "-"
    mid = "midstream" if c.midstream else "-"
    return (
        f"{c.protocol} {str(c.client):<21} -> {str(c.server):<21} {format_time(c.start)}  "
        f"{c.outcome.value:<10} by={closer:<6} {mid:<9} msgs={len(c.messages):<4} "
        f"c2s={c2s:<7} s2c={s2c}"
    )


def format_messages(c: Conversation, preview: int) -> list[str]:
    return [format_message(m, c.start, preview) for m in c.messages]


def format_message(m: Message, start: float, preview: int) -> str:
    """One message: direction, offset from the conversation start, length, preview."""
    gaps = "".join(f" [gap {n} B at {off}]" for off, n in m.gaps)
    return (
        f"    {m.direction.label} {m.timestamp - start:+10.6f}s {len(m.data):>7} B  "
        f"{preview_bytes(m.data, preview)}{gaps}"
    )


def preview_bytes(data: bytes, limit: int) -> str:
    """Mostly printable data as an escaped string, binary data as hex; about ``limit`` chars.

    Attacker bytes are never decoded: every byte outside printable ASCII is
    shown as an escape, so the terminal only ever receives plain ASCII.
    """
    head = data[: max(0, limit)]
    printable = sum(1 for b in head if 0x20 <= b < 0x7F or b in _ESCAPES)
    if head and printable * 4 < len(head) * 3:
        head = data[: max(0, limit) // 2]
        text = "hex:" + head.hex()
        return text + ("..." if len(data) > len(head) else "")
    text, used = escape(head, limit)
    return f'"{text}"' + ("..." if len(data) > used else "")


def escape(data: bytes, limit: int) -> tuple[str, int]:
    """Printable ASCII as is, everything else escaped, in at most ``limit`` characters.

    Returns the text and how many bytes of ``data`` it shows.
    """
    parts: list[str] = []
    used = 0
    for b in data:
        if b in _ESCAPES:
            piece = _ESCAPES[b]
        elif 0x20 <= b < 0x7F and b != 0x22:
            piece = chr(b)
        else:
            piece = f"\\x{b:02x}"
        used += len(piece)
        if used > limit:
            break
        parts.append(piece)
    return "".join(parts), len(parts)
