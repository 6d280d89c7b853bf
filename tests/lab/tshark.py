"""TCP stream contents as tshark sees them, for conformance tests.

One tshark pass per file: per-packet fields (stream index, protocol stack,
flags, lengths) plus ``-z follow,tcp,raw,N`` for every stream, i.e. exactly
what Wireshark's "Follow TCP Stream" shows: first-seen bytes win,
retransmitted and overlapping bytes are dropped, out-of-order segments are
placed when the hole before them fills, and a hole the peer acknowledged is
replaced by the text ``[N bytes missing in capture file]`` plus a NUL.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import re
import shutil
import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path

GAP_MARKER = re.compile(rb"\[(\d+) bytes missing in capture file\]\x00")
_NODE = re.compile(r"^Node ([01]): (.*):(\d+)$")
_FILTER = re.compile(r"^Filter: tcp\.stream eq (\d+)$")
TUNNELS = frozenset(
    {"gre", "vxlan", "pppoes", "mpls", "teredo", "gtp", "gtpv2", "geneve", "l2tp", "erspan", "nsh"}
)
FIELDS = (
    "tcp.stream",
    "frame.protocols",
    "tcp.flags",
    "frame.len",
    "frame.cap_len",
    "frame.time_epoch",
    "ip.src",
    "ipv6.src",
    "tcp.srcport",
    "tcp.len",
)


def have_tshark() -> bool:
    return shutil.which("tshark") is not None


@dataclass
class TsharkStream:
    """One ``tcp.stream``: node 0 is the source of its first packet (not always the client)."""

    index: int
    nodes: tuple[tuple[str, int], tuple[str, int]] | None = None
    data: tuple[bytearray, bytearray] = field(default_factory=lambda: (bytearray(), bytearray()))
    packets: int = 0
    first_flags: int = 0
    first_time: float = 0.0
    flags_seen: int = 0  # OR of the TCP flags of all its packets
    # payload bytes each sender put in segments after the stream's first RST
    after_rst: dict[tuple[str, int], int] = field(default_factory=dict)
    protocols: set[str] = field(default_factory=set)
    stacks: set[str] = field(default_factory=set)  # distinct frame.protocols values
    truncated: bool = False  # some frame shorter than on the wire (snaplen)

    def sent_by(self) -> dict[tuple[str, int], bytes]:
        """Stream bytes keyed by the endpoint that sent them."""
        if self.nodes is None:
            return {}
        return {self.nodes[0]: bytes(self.data[0]), self.nodes[1]: bytes(self.data[1])}

    @property
    def tunnelled(self) -> bool:
        """Inside a tunnel: a tunnel protocol, or IP inside IP (IP-in-IP, 6in4, ...)."""
        for stack in self.stacks:
            layers = stack.split(":")
            if TUNNELS & set(layers) or sum(x in ("ip", "ipv6") for x in layers) >= 2:
                return True
        return False

    @property
    def payload_bytes(self) -> int:
        return len(self.data[0]) + len(self.data[1])

    @property
    def has_gap_marker(self) -> bool:
        return any(GAP_MARKER.search(d) for d in self.data)


@dataclass
class TsharkResult:
    streams: dict[int, TsharkStream]
    returncode: int
    stderr: str


def _strip_ipv6_brackets(ip: str) -> str:
    return ip[1:-1] if ip.startswith("[") and ip.endswith("]") else ip


def _int(text: str, base: int = 10) -> int:
    try:
        return int(text, base) if text else 0
    except ValueError:
        return 0


def _parse_packet_line(line: str, streams: dict[int, TsharkStream]) -> None:
    parts = line.split("\t")
    if len(parts) < len(FIELDS) or not parts[0]:
        return
    try:
        idx = int(parts[0])
    except ValueError:
        return
    stack, flags_hex, frame_len, cap_len, epoch, ip4, ip6, sport, seglen = parts[1:10]
    flags = _int(flags_hex, 16)
    st = streams.get(idx)
    if st is None:
        st = streams[idx] = TsharkStream(idx, first_flags=flags)
        try:
            st.first_time = float(epoch)
        except ValueError:
            st.first_time = 0.0
    st.packets += 1
    if st.flags_seen & 0x04 and _int(seglen):
        sender = (ip4 or ip6, _int(sport))
        st.after_rst[sender] = st.after_rst.get(sender, 0) + _int(seglen)
    st.flags_seen |= flags
    if len(st.stacks) < 16:
        st.stacks.add(stack)
    st.protocols.update(stack.split(":"))
    if frame_len and cap_len and frame_len != cap_len:
        st.truncated = True


def _parse_follow(lines: list[str], streams: dict[int, TsharkStream]) -> None:
    """Parse the ``-z follow,tcp,raw`` blocks (client lines flush left, server lines tab-indented)."""
    cur: TsharkStream | None = None
    nodes: dict[int, tuple[str, int]] = {}
    for line in lines:
        if line.startswith("====="):
            cur, nodes = None, {}
            continue
        m = _FILTER.match(line)
        if m:
            idx = int(m.group(1))
            cur = streams.get(idx)
            continue
        m = _NODE.match(line)
        if m:
            nodes[int(m.group(1))] = (_strip_ipv6_brackets(m.group(2)), int(m.group(3)))
            if cur is not None and len(nodes) == 2:
                cur.nodes = (nodes[0], nodes[1])
            continue
        if cur is None or not line.strip() or line.startswith(("Follow:", "Node")):
            continue
        side = 1 if line.startswith("\t") else 0
        try:
            cur.data[side].extend(bytes.fromhex(line.strip()))
        except ValueError:
            continue


def tshark_streams(path: str | Path, follow: int, timeout: float = 300.0) -> TsharkResult:
    """Fields of every packet and the followed content of streams ``0 .. follow-1``."""
    argv = ["tshark", "-n", "-r", str(path), "-o", "tcp.desegment_tcp_streams:FALSE"]
    argv += ["-T", "fields", "-E", "occurrence=l", "-E", "separator=/t"]
    for f in FIELDS:
        argv += ["-e", f]
    for i in range(follow):
        argv += ["-z", f"follow,tcp,raw,{i}"]
    proc = subprocess.run(argv, capture_output=True, timeout=timeout)
    text = proc.stdout.decode(errors="replace")
    lines = text.split("\n")
    streams: dict[int, TsharkStream] = {}
    cut = next((i for i, ln in enumerate(lines) if ln.startswith("=====")), len(lines))
    for line in lines[:cut]:
        _parse_packet_line(line, streams)
    _parse_follow(lines[cut:], streams)
    return TsharkResult(streams, proc.returncode, proc.stderr.decode(errors="replace"))


def read_streams(path: str | Path, expected: int, cache_dir: Path | None = None) -> TsharkResult:
    """Like :func:`tshark_streams`, guessing how many streams to follow, then re-running
    once if the guess was short (one tshark pass in the usual case).

    With ``cache_dir``, results are kept under a key made of the file's SHA-256,
    the tshark version and this module's source, so reruns skip tshark.
    """
    cached = _cache_path(path, cache_dir)
    if cached is not None and cached.is_file():
        try:
            return pickle.loads(zlib.decompress(cached.read_bytes()))
        except Exception:  # a damaged cache entry is only a cache miss
            cached.unlink(missing_ok=True)
    guess = expected + expected // 2 + 8
    res = tshark_streams(path, guess)
    if res.streams and max(res.streams) >= guess:
        res = tshark_streams(path, max(res.streams) + 1)
    if cached is not None:
        for stale in cached.parent.glob(cached.name.split("-")[0] + "-*.pickle.z"):
            if stale != cached:  # made by another tshark or parser version
                stale.unlink(missing_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_bytes(zlib.compress(pickle.dumps(res), 1))
        tmp.replace(cached)
    return res


@functools.cache
def _tool_key() -> str:
    """tshark's version and this parser's source: either changing invalidates the cache."""
    version = subprocess.run(["tshark", "-v"], capture_output=True).stdout.split(b"\n")[0]
    return hashlib.sha256(version + Path(__file__).read_bytes()).hexdigest()[:16]


def _cache_path(path: str | Path, cache_dir: Path | None) -> Path | None:
    if cache_dir is None:
        return None
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32]
    cache_dir.mkdir(parents=True, exist_ok=True)
    return cache_dir / f"{digest}-{_tool_key()}.pickle.z"
