"""Records → TCP segments and UDP datagrams (link layer, IPv4/IPv6, fragments).

Why hand-written: this is the hot path of training on big captures. It
indexes ``bytes`` directly and uses ``struct.unpack_from``; addresses stay
packed; the common case (Ethernet, IPv4, TCP) touches no helper object. Every
length field is checked against the captured bytes: a header that lies is
reported to ``TraceStats`` and the packet is dropped, a packet that was cut
by the snap length is still emitted with ``Segment.truncated`` set to the
number of payload bytes that are missing.

Packets that are not TCP/UDP over IP (ARP, ICMP, ...) are counted in
``stats.skipped`` and otherwise ignored.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from scriptgen.trace.errors import TraceStats
from scriptgen.trace.pcapfile import Record
from scriptgen.trace.segment import TCP, UDP, Segment

__all__ = ["iter_segments", "FragmentReassembler", "LINKTYPES"]

# link types this module decodes (LINKTYPE_* numbers as stored in files)
LT_NULL, LT_ETHERNET, LT_LOOP = 0, 1, 108
LT_SLL, LT_SLL2 = 113, 276
LT_RAW_TYPES = (101, 12, 14)
LT_IPV4, LT_IPV6 = 228, 229
LINKTYPES = frozenset({LT_NULL, LT_ETHERNET, LT_LOOP, LT_SLL, LT_SLL2, LT_IPV4, LT_IPV6})
LINKTYPES = LINKTYPES | frozenset(LT_RAW_TYPES)

ET_IPV4, ET_IPV6 = 0x0800, 0x86DD
_VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100, 0x9200})
# BSD loopback address families meaning IPv6 (Linux, Windows, NetBSD/OpenBSD, FreeBSD, Darwin)
_AF_INET6 = frozenset({10, 23, 24, 28, 30})
# IPv6 extension headers with the generic (next header, length in 8-octet units) layout
_IP6_EXT = frozenset({0, 43, 60, 135, 139, 140})
_MAX_LINK_LAYERS = 8  # VLAN tags / MPLS labels; bounds the loop on hostile frames
_MAX_IP6_EXT = 16

_ip4_hdr = struct.Struct("!BxHHHxBxx4s4s").unpack_from
_tcp_hdr = struct.Struct("!HHIIH").unpack_from
_udp_hdr = struct.Struct("!HHH").unpack_from
_u32 = struct.Struct("!I").unpack_from


def iter_segments(
    records: Iterable[Record],
    stats: TraceStats,
    reassembler: FragmentReassembler | None = None,
) -> Iterator[Segment]:
    """Decode records into TCP/UDP ``Segment`` objects, in capture order.

    A reassembled IP datagram is emitted when its last missing fragment
    arrives, with that fragment's timestamp.
    """
    frags = reassembler if reassembler is not None else FragmentReassembler(stats)
    new = tuple.__new__
    skipped_non_ip = skipped_proto = decoded = 0
    unsupported: dict[int, int] = {}
    warn = stats.warn
    ip4_hdr, tcp_hdr, udp_hdr = _ip4_hdr, _tcp_hdr, _udp_hdr  # locals: faster lookups
    # literals below: 0x0800 = IPv4, 0x86DD = IPv6 ethertypes; 6 = TCP, 17 = UDP
    try:
        for idx, (ts, lt, data, wire) in enumerate(records, 1):
            n = len(data)
            # ---- link layer: find the network header offset and its ethertype
            if lt == 1:  # Ethernet
                if n < 14:
                    warn("short-frame", f"packet {idx}: {n}-byte Ethernet frame")
                    continue
                et = (data[12] << 8) | data[13]
                off = 14
                if et != 0x0800 and et != 0x86DD:
                    off, et = _ether_more(data, et, off)
            elif lt == LT_SLL or lt == LT_SLL2:
                off = 16 if lt == LT_SLL else 20
                if n < off:
                    warn("short-frame", f"packet {idx}: {n}-byte Linux cooked header")
                    continue
                et = (data[14] << 8) | data[15] if lt == LT_SLL else (data[0] << 8) | data[1]
                if et != ET_IPV4 and et != ET_IPV6:
                    off, et = _ether_more(data, et, off)
            elif lt == LT_NULL or lt == LT_LOOP:
                if n < 4:
                    warn("short-frame", f"packet {idx}: {n}-byte loopback header")
                    continue
                off = 4
                et = _loop_family(data)
            elif lt in LT_RAW_TYPES:
                off = 0
                et = _by_version(data, 0)
            elif lt == LT_IPV4:
                off, et = 0, ET_IPV4
            elif lt == LT_IPV6:
                off, et = 0, ET_IPV6
            else:
                unsupported[lt] = unsupported.get(lt, 0) + 1
                continue

            # ---- network layer
            if et == 0x0800:
                avail = n - off
                if avail < 20:
                    warn("bad-ip-header", f"packet {idx}: {avail} bytes of IPv4 header")
                    continue
                vihl, tot, ident, ff, proto, src, dst = ip4_hdr(data, off)
                if tot == 0:  # segmentation offload: the length was never filled in
                    tot = avail
                if vihl == 0x45 and tot >= 20:
                    ihl = 20
                else:
                    ihl = (vihl & 15) << 2
                    if vihl >> 4 != 4 or ihl < 20 or tot < ihl:
                        warn(
                            "bad-ip-header",
                            f"packet {idx}: IPv4 version/ihl {vihl:#04x}, total length {tot}",
                        )
                        continue
                    if ihl > avail:
                        warn("truncated-header", f"packet {idx}: IPv4 options cut by snaplen")
                        continue
                if proto != 6 and proto != 17:
                    skipped_proto += 1
                    continue
                l4 = off + ihl
                end = off + tot
                if ff & 0x3FFF:  # more-fragments flag or a fragment offset
                    if end > n:
                        warn("truncated-fragment", f"packet {idx}: IPv4 fragment cut by snaplen")
                        continue
                    done = frags.add(
                        (4, src, dst, proto, ident),
                        ts,
                        (ff & 0x1FFF) << 3,
                        bool(ff & 0x2000),
                        data[l4:end],
                        proto,
                    )
                    if done is None:
                        continue
                    data = done[1]
                    l4, end, n = 0, len(data), len(data)
                    wire = n
            elif et == 0x86DD:
                seg6 = _ipv6(ts, data, off, n, frags, stats, idx)
                if seg6 is None:
                    continue
                proto, src, dst, data, l4, end = seg6
                if len(data) != n:  # reassembled
                    n = wire = len(data)
            else:
                skipped_non_ip += 1
                continue

            # ---- transport layer
            if end > n:
                if end > wire:  # longer than the frame was on the wire: the IP length lies
                    warn("bad-ip-length", f"packet {idx}: IP length exceeds the {wire}-byte frame")
                    end = wire if wire > n else n
                cap_end = n
            else:
                cap_end = end
            if proto == 6:
                if cap_end - l4 < 20:
                    _short_l4(stats, idx, "TCP", end - l4, cap_end - l4)
                    continue
                sport, dport, seq, ack, offflags = tcp_hdr(data, l4)
                doff = (offflags >> 10) & 0x3C
                if doff < 20 or l4 + doff > end:
                    warn("bad-tcp-header", f"packet {idx}: TCP data offset {doff}")
                    continue
                start = l4 + doff
                if start > cap_end:  # options cut by snaplen: payload entirely missing
                    payload = b""
                    trunc = end - start
                else:
                    payload = data[start:cap_end]
                    trunc = end - cap_end
                decoded += 1
                yield new(
                    Segment,
                    (ts, TCP, src, dst, sport, dport, offflags & 0xFF, seq, ack, payload, trunc),
                )
            else:
                if cap_end - l4 < 8:
                    _short_l4(stats, idx, "UDP", end - l4, cap_end - l4)
                    continue
                sport, dport, ulen = udp_hdr(data, l4)
                ip_len = end - l4
                if ulen != ip_len:
                    if ulen == 0:  # jumbogram or offload: trust the IP length
                        ulen = ip_len
                    elif ulen < 8 or ulen > ip_len:
                        warn(
                            "bad-udp-length",
                            f"packet {idx}: UDP length {ulen}, IP payload {ip_len}",
                        )
                        if ulen < 8:
                            continue
                        ulen = ip_len
                uend = l4 + ulen
                if uend <= n:
                    payload = data[l4 + 8 : uend]
                    trunc = 0
                else:
                    payload = data[l4 + 8 : n]
                    trunc = uend - n
                decoded += 1
                yield new(Segment, (ts, UDP, src, dst, sport, dport, 0, 0, 0, payload, trunc))
    finally:
        stats.packets_decoded += decoded
        if skipped_non_ip:
            stats.skip("non-ip", skipped_non_ip)
        if skipped_proto:
            stats.skip("not-tcp-udp", skipped_proto)
        for lt, count in unsupported.items():
            stats.skip(f"linktype-{lt}", count)
            stats.warn("unsupported-linktype", f"link type {lt}: {count} packets not decoded")
        if reassembler is None:
            frags.flush()


def _short_l4(stats: TraceStats, idx: int, name: str, declared: int, captured: int) -> None:
    if declared < (20 if name == "TCP" else 8):
        stats.warn(f"bad-{name.lower()}-header", f"packet {idx}: {declared}-byte {name} segment")
    else:
        stats.warn("truncated-header", f"packet {idx}: {name} header cut by snaplen ({captured})")


def _ether_more(data: bytes, et: int, off: int) -> tuple[int, int]:
    """VLAN tags (802.1Q/ad, QinQ), LLC/SNAP, PPPoE session and MPLS in front of IP."""
    n = len(data)
    for _ in range(_MAX_LINK_LAYERS):
        if et in _VLAN_TPIDS:
            if off + 4 > n:
                return off, 0
            et = (data[off + 2] << 8) | data[off + 3]
            off += 4
        elif et < 0x0600:  # 802.3 length field: IP only via SNAP
            if off + 8 > n or data[off : off + 3] != b"\xaa\xaa\x03":
                return off, 0
            et = (data[off + 6] << 8) | data[off + 7]
            off += 8
        elif et == 0x8864:  # PPPoE session: 6-byte header, then the PPP protocol
            if off + 8 > n:
                return off, 0
            ppp = (data[off + 6] << 8) | data[off + 7]
            off += 8
            return off, ET_IPV4 if ppp == 0x0021 else ET_IPV6 if ppp == 0x0057 else 0
        elif et == 0x8847 or et == 0x8848:  # MPLS: labels until bottom of stack
            while True:
                if off + 4 > n:
                    return off, 0
                bottom = data[off + 2] & 1
                off += 4
                if bottom:
                    return off, _by_version(data, off)
        else:
            return off, et
    return off, 0


def _loop_family(data: bytes) -> int:
    """The 4-byte address family of DLT_NULL/DLT_LOOP, in either byte order."""
    if data[1] or data[2]:
        return 0
    af = data[0] or data[3]
    if af == 2:
        return ET_IPV4
    if af in _AF_INET6:
        return ET_IPV6
    return 0


def _by_version(data: bytes, off: int) -> int:
    """Raw IP link types: the IP version nibble says which."""
    if off >= len(data):
        return 0
    v = data[off] >> 4
    return ET_IPV4 if v == 4 else ET_IPV6 if v == 6 else 0


def _ipv6(
    ts: float,
    data: bytes,
    off: int,
    n: int,
    frags: FragmentReassembler,
    stats: TraceStats,
    idx: int,
) -> tuple[int, bytes, bytes, bytes, int, int] | None:
    """Walk the IPv6 header chain; return (proto, src, dst, data, l4, end) for TCP/UDP."""
    if n - off < 40:
        stats.warn("bad-ip-header", f"packet {idx}: {n - off} bytes of IPv6 header")
        return None
    if data[off] >> 4 != 6:
        stats.warn("bad-ip-header", f"packet {idx}: IP version {data[off] >> 4} in IPv6 frame")
        return None
    plen = (data[off + 4] << 8) | data[off + 5]
    nh = data[off + 6]
    src = data[off + 8 : off + 24]
    dst = data[off + 24 : off + 40]
    p = off + 40
    end = p + plen if plen else n  # 0: jumbogram or offload; trust what was captured
    for _ in range(_MAX_IP6_EXT):
        if nh == 6 or nh == 17:
            if p > end:
                stats.warn("bad-ip-header", f"packet {idx}: IPv6 extension headers overrun")
                return None
            return nh, src, dst, data, p, end
        lim = end if end < n else n
        if nh in _IP6_EXT or nh == 51:
            if p + 2 > lim:
                return _ip6_short(stats, idx, end, n)
            hlen = (data[p + 1] + 2) << 2 if nh == 51 else (data[p + 1] + 1) << 3
            nh = data[p]
            p += hlen
        elif nh == 44:  # fragment header
            if p + 8 > lim:
                return _ip6_short(stats, idx, end, n)
            inner = data[p]
            offm = (data[p + 2] << 8) | data[p + 3]
            fo, more = offm & 0xFFF8, offm & 1
            if fo == 0 and not more:  # atomic fragment (RFC 6946)
                nh = inner
                p += 8
                continue
            if end > n:
                stats.warn("truncated-fragment", f"packet {idx}: IPv6 fragment cut by snaplen")
                return None
            done = frags.add(
                (6, src, dst, data[p + 4 : p + 8]), ts, fo, bool(more), data[p + 8 : end], inner
            )
            if done is None:
                return None
            nh, data = done
            p, end, n = 0, len(data), len(data)
        else:
            return None  # ICMPv6, ESP, no next header, ...: not for us
    stats.warn("bad-ip-header", f"packet {idx}: too many IPv6 extension headers")
    return None


def _ip6_short(stats: TraceStats, idx: int, end: int, n: int) -> None:
    if end > n:
        stats.warn("truncated-header", f"packet {idx}: IPv6 extension header cut by snaplen")
    else:
        stats.warn("bad-ip-header", f"packet {idx}: IPv6 extension header overruns payload")
    return None


class _Pending:
    """Fragments of one datagram waiting for the rest."""

    __slots__ = ("first_ts", "frags", "received", "total", "proto")

    def __init__(self, ts: float) -> None:
        self.first_ts = ts
        self.frags: list[tuple[int, bytes]] = []
        self.received = 0
        self.total = -1  # known once the last fragment (no more-fragments flag) arrives
        self.proto = -1  # known once the fragment at offset 0 arrives


class FragmentReassembler:
    """Bounded IPv4/IPv6 reassembly keyed by (version, src, dst, [proto,] id).

    Bounds: datagrams in flight, bytes buffered, fragments per datagram, a
    timeout in capture time, and 64 KiB per datagram. Overlaps are resolved
    deterministically: the bytes that arrived first win (a later duplicate or
    overlapping fragment never rewrites data already received). A datagram
    that never completes is reported as damage, never emitted.
    """

    def __init__(
        self,
        stats: TraceStats,
        *,
        timeout: float = 60.0,
        max_datagrams: int = 4096,
        max_bytes: int = 32 << 20,
        max_fragments: int = 1024,
    ) -> None:
        self.stats = stats
        self.timeout = timeout
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.max_fragments = max_fragments
        self._pending: dict[tuple, _Pending] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def buffered_bytes(self) -> int:
        """Fragment bytes held while waiting for the rest of their datagrams."""
        return self._bytes

    def add(
        self, key: tuple, ts: float, offset: int, more: bool, data: bytes, proto: int
    ) -> tuple[int, bytes] | None:
        """Store one fragment; return (protocol, datagram payload) when complete."""
        self._expire(ts)
        ent = self._pending.get(key)
        if ent is None:
            while self._pending and (
                len(self._pending) >= self.max_datagrams or self._bytes > self.max_bytes
            ):
                self._drop(next(iter(self._pending)), "evicted: too many fragments in flight")
            ent = self._pending[key] = _Pending(ts)
        end = offset + len(data)
        if end > 65535:
            self._drop(key, f"datagram would exceed 64 KiB ({end} bytes)")
            return None
        if len(ent.frags) >= self.max_fragments:
            self._drop(key, f"more than {self.max_fragments} fragments")
            return None
        ent.frags.append((offset, data))
        ent.received += len(data)
        self._bytes += len(data)
        if ent.received > 2 * 65535:  # duplicates/overlaps beyond reason: bound the memory
            self._drop(key, f"{ent.received} bytes of overlapping fragments")
            return None
        if offset == 0 and ent.proto < 0:
            ent.proto = proto
        if not more and ent.total < 0:
            ent.total = end
        if ent.total >= 0 and ent.proto >= 0 and ent.received >= ent.total:
            blob = _assemble(ent.frags, ent.total)
            if blob is not None:
                self._bytes -= ent.received
                del self._pending[key]
                return ent.proto, blob
        return None

    def flush(self) -> None:
        """Report every datagram still incomplete (end of capture)."""
        for key in list(self._pending):
            self._drop(key, "incomplete at end of capture")

    def _expire(self, now: float) -> None:
        limit = now - self.timeout
        while self._pending:
            key = next(iter(self._pending))
            if self._pending[key].first_ts >= limit:
                break
            self._drop(key, "incomplete after timeout")

    def _drop(self, key: tuple, why: str) -> None:
        ent = self._pending.pop(key)
        self._bytes -= ent.received
        self.stats.warn(
            "incomplete-datagram",
            f"IPv{key[0]} datagram id {_hexid(key[-1])}: {len(ent.frags)} fragments, {why}",
        )


def _assemble(frags: list[tuple[int, bytes]], total: int) -> bytes | None:
    """The datagram if the fragments cover ``[0, total)``; earliest arrival wins overlaps."""
    covered = 0
    for off, d in sorted(frags, key=lambda f: f[0]):
        if off > covered:
            return None
        covered = max(covered, off + len(d))
        if covered >= total:
            break
    if covered < total:
        return None
    out = bytearray(total)
    for off, d in reversed(frags):
        if off < total:
            chunk = d[: total - off]
            out[off : off + len(chunk)] = chunk
    return bytes(out)


def _hexid(ident: int | bytes) -> str:
    return ident.hex() if isinstance(ident, bytes) else f"{ident:04x}"
