"""Streaming reader for pcap and pcapng captures (optionally gzip-compressed).

Why hand-written: the trainer must read multi-gigabyte captures with
constant memory and at least tshark's speed, and a capture is hostile input.
The file is read in large chunks and records are cut out of each chunk with
``struct.unpack_from``; no length field from the file is trusted before it is
checked against a hard cap, so a lying header can neither allocate much
memory nor loop forever. Damage in the middle of a file is reported to a
``TraceStats`` and the reader looks for the next plausible record (a header
with sane fields followed by another one; scanned one window at a time, so
memory stays bounded) instead of giving up on the rest of the file.

Only ``iter_records`` raises, and only ``TraceError``: when the file cannot
be opened or does not start like a capture.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO, NamedTuple

from scriptgen.trace.errors import TraceError, TraceStats

__all__ = ["Record", "iter_records", "MAX_CAPLEN"]


class Record(NamedTuple):
    """One captured frame, before any decoding."""

    ts: float  # seconds since the epoch
    linktype: int  # LINKTYPE_* value of the interface that captured it
    data: bytes  # the captured bytes (may be shorter than orig_len)
    orig_len: int  # length of the frame on the wire, as the file says


CHUNK = 1 << 20  # bytes per read; large reads keep the per-record cost low
MAX_CAPLEN = 256 * 1024  # a frame longer than this is a lying length field
MAX_PACKET_BLOCK = MAX_CAPLEN + 64 * 1024  # EPB/PB/SPB incl. options
MAX_META_BLOCK = 1 << 20  # SHB/IDB are read whole; a larger one is damage
MAX_BLOCK = 256 << 20  # any other block is skipped as a stream up to this size
RESYNC_WINDOW = 1 << 20  # damage is searched for the next record one window at a time
RESYNC_LOOKAHEAD = 2 * MAX_PACKET_BLOCK  # bytes past a window a candidate may need
MAX_INTERFACES = 4096  # per pcapng section; a file of nothing but IDBs must not grow memory

_PCAP_MAGICS = {
    # magic as read little-endian -> (byte order, fraction divisor, record header length)
    0xA1B2C3D4: ("<", 1_000_000, 16),
    0xD4C3B2A1: (">", 1_000_000, 16),
    0xA1B23C4D: ("<", 1_000_000_000, 16),
    0x4D3CB2A1: (">", 1_000_000_000, 16),
    0xA1B2CD34: ("<", 1_000_000, 24),  # Kuznetzov's modified pcap
    0x34CDB2A1: (">", 1_000_000, 24),
}
_SHB = 0x0A0D0D0A
_BOMS = (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d")
_IDB, _PB, _SPB, _EPB = 1, 2, 3, 6
# block types used to recognise the start of a block when resynchronising
_KNOWN_BLOCKS = (1, 2, 3, 4, 5, 6, 0x0A, _SHB)

Source = str | os.PathLike[str] | BinaryIO


class _Reader:
    """A chunked window on a byte stream: ``buf[pos:]`` is unread data.

    The hot loops copy ``buf``/``pos`` into locals and call ``fill`` only when
    a record crosses the end of the current chunk.
    """

    __slots__ = ("f", "buf", "pos", "base", "eof", "stats", "name", "closers")

    def __init__(self, f: BinaryIO, name: str, stats: TraceStats, head: bytes) -> None:
        self.f = f
        self.name = name
        self.stats = stats
        self.buf = head
        self.pos = 0
        self.base = 0  # file offset of buf[0]
        self.eof = False
        self.closers: list[BinaryIO] = []  # closed when the records are exhausted

    def close(self) -> None:
        for f in self.closers:
            f.close()
        self.closers.clear()

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def _read(self, n: int) -> bytes:
        try:
            # GzipFile.read(n) discards what it decoded when the stream is cut;
            # read1 hands it over first, and the damage surfaces on the next call.
            chunk = self.f.read1(n) if isinstance(self.f, gzip.GzipFile) else self.f.read(n)
        except (OSError, EOFError, zlib.error, ValueError) as e:
            self.stats.warn("read-error", f"{self.name}: at offset ~{self.offset}: {e}")
            chunk = b""
        if not chunk:
            self.eof = True
        return chunk

    def fill(self, n: int) -> bool:
        """Make ``n`` bytes available at ``pos``; False when the file ends first."""
        have = len(self.buf) - self.pos
        if have >= n:
            return True
        if self.eof:
            return False
        parts = [self.buf[self.pos :]]
        self.base += self.pos
        self.pos = 0
        while have < n and not self.eof:
            chunk = self._read(max(CHUNK, n - have))
            parts.append(chunk)
            have += len(chunk)
        self.buf = b"".join(parts)
        return have >= n

    def skip(self, n: int) -> bool:
        """Discard ``n`` bytes without holding them; False when the file ends first."""
        have = len(self.buf) - self.pos
        if n <= have:
            self.pos += n
            return True
        n -= have
        self.base += len(self.buf)
        self.buf = b""
        self.pos = 0
        while n > 0 and not self.eof:
            chunk = self._read(min(n, CHUNK))
            n -= len(chunk)
            self.base += len(chunk)
        if n < 0:  # a short read never returns more than asked, but be safe
            n = 0
        return n == 0

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos


def iter_records(source: Source, stats: TraceStats) -> Iterator[Record]:
    """Open a capture and return an iterator over its records.

    Raises ``TraceError`` now (not on first ``next``) when the file cannot be
    opened or is not a pcap/pcapng capture; after that, damage is only
    reported to ``stats``. A path is opened here and closed when the iterator
    is exhausted or closed; a file object passed in is left open.
    """
    f, name, owned = _open(source)
    reader = None
    try:
        reader = _start(f, name, stats)
        if owned:
            reader.closers.append(f)
        return _dispatch(reader, name, stats)
    except BaseException:
        if reader is not None:
            reader.close()
        if owned:
            f.close()
        raise


def _open(source: Source) -> tuple[BinaryIO, str, bool]:
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        try:
            return open(name, "rb"), name, True  # noqa: SIM115 -- closed by _closing
        except OSError as e:
            raise TraceError(f"{name}: cannot open: {e.strerror or e}") from None
    name = str(getattr(source, "name", "<stream>"))
    return source, name, False


def _read_head(f: BinaryIO, name: str, n: int) -> bytes:
    parts: list[bytes] = []
    have = 0
    try:
        while have < n:
            chunk = f.read(n - have)
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise TraceError(f"{name}: cannot read: {e}") from None
    return b"".join(parts)


def _start(f: BinaryIO, name: str, stats: TraceStats) -> _Reader:
    """Read the first bytes, unwrap gzip, and hand back a reader at offset 0."""
    head = _read_head(f, name, 4)
    if head[:2] == b"\x1f\x8b":
        rest = _read_head(f, name, 64 * 1024)
        gz = gzip.GzipFile(fileobj=_Prefixed(head + rest, f), mode="rb")
        head = _read_head(gz, name, 4)
        if not head:
            raise TraceError(f"{name}: empty gzip stream, not a capture")
        reader = _Reader(gz, name, stats, head)  # type: ignore[arg-type]
        reader.closers.append(gz)  # type: ignore[arg-type]
        return reader
    if not head:
        raise TraceError(f"{name}: empty file, not a capture")
    return _Reader(f, name, stats, head)


class _Prefixed:
    """A read-only stream that first returns ``prefix`` then reads ``f`` (for gzip)."""

    def __init__(self, prefix: bytes, f: BinaryIO) -> None:
        self._prefix = prefix
        self._f = f

    def read(self, n: int = -1) -> bytes:
        if self._prefix:
            if n < 0 or n >= len(self._prefix):
                out, self._prefix = self._prefix, b""
                if n < 0:
                    return out + self._f.read()
                return out
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            return out
        return self._f.read(n)


def _dispatch(r: _Reader, name: str, stats: TraceStats) -> Iterator[Record]:
    """Check the file header (TraceError if bad) and pick the format's loop."""
    r.fill(24)
    head = r.buf[:24]
    if len(head) < 4:
        raise TraceError(f"{name}: {len(head)} bytes, too short to be a capture")
    (magic,) = struct.unpack_from("<I", head)
    if magic in _PCAP_MAGICS:
        endian, div, hdrlen = _PCAP_MAGICS[magic]
        if len(head) < 24:
            raise TraceError(f"{name}: pcap file header truncated ({len(head)} of 24 bytes)")
        major, _minor, _zone, _sigfigs, snaplen, network = struct.unpack_from(
            endian + "HHiIII", head, 4
        )
        if major != 2:
            raise TraceError(f"{name}: unsupported pcap version {major}")
        r.pos = 24
        return _iter_pcap(r, stats, endian, div, hdrlen, snaplen, network & 0xFFFF)
    if magic == _SHB:
        endian = _read_shb(r, name, stats, fatal=True)
        assert endian is not None
        return _iter_pcapng(r, stats, endian)
    raise TraceError(f"{name}: not a pcap or pcapng capture (starts with {head[:4].hex()})")


# ---------------------------------------------------------------- pcap


def _iter_pcap(
    r: _Reader,
    stats: TraceStats,
    endian: str,
    div: int,
    hdrlen: int,
    snaplen: int,
    linktype: int,
) -> Iterator[Record]:
    unpack = struct.Struct(endian + "IIII").unpack_from
    new = tuple.__new__
    cap = MAX_CAPLEN
    n = nbytes = 0
    prev_sec = -1
    buf, pos = r.buf, r.pos
    try:
        while True:
            hend = pos + hdrlen
            if hend > len(buf):
                stats.packets_read += n
                stats.bytes_read += nbytes
                n = nbytes = 0
                r.pos = pos
                if not r.fill(hdrlen):
                    if r.remaining:
                        stats.warn(
                            "truncated-record",
                            f"{r.name}: {r.remaining} stray bytes at end of file (offset {r.offset})",
                        )
                    return
                buf, pos = r.buf, r.pos
                hend = pos + hdrlen
            sec, frac, caplen, origlen = unpack(buf, pos)
            if caplen > cap:
                r.pos = pos
                stats.warn(
                    "bad-length",
                    f"{r.name}: record at offset {r.offset} claims {caplen} captured bytes",
                )
                if not _resync_pcap(r, endian, hdrlen, div, prev_sec):
                    return
                buf, pos = r.buf, r.pos
                continue
            end = hend + caplen
            if end > len(buf):
                stats.packets_read += n
                stats.bytes_read += nbytes
                n = nbytes = 0
                r.pos = pos
                if not r.fill(hdrlen + caplen):
                    stats.warn(
                        "truncated-record",
                        f"{r.name}: last record at offset {r.offset} cut short "
                        f"({max(r.remaining - hdrlen, 0)} of {caplen} bytes)",
                    )
                    return
                buf, pos = r.buf, r.pos
                hend = pos + hdrlen
                end = hend + caplen
            if caplen > snaplen and snaplen:
                r.pos = pos
                stats.warn(
                    "caplen-over-snaplen",
                    f"{r.name}: record at offset {r.offset}: {caplen} bytes > snaplen {snaplen}",
                )
            n += 1
            nbytes += caplen
            prev_sec = sec
            yield new(Record, (sec + frac / div, linktype, buf[hend:end], origlen))
            pos = end
    finally:
        stats.packets_read += n
        stats.bytes_read += nbytes
        r.close()


def _scan(r: _Reader, keys: list[bytes], shift: int, check) -> int:  # noqa: ANN001
    """Move ``r.pos`` to the first position after it that ``check`` accepts.

    Candidates are where one of the literal ``keys`` occurs (at ``p + shift``);
    ``bytes.find`` locates them far faster than a regular expression would.
    The search goes window by window to the end of the file, holding at most
    one window plus ``RESYNC_LOOKAHEAD`` bytes. Returns the number of bytes
    skipped, or -1 when nothing plausible is left.
    """
    start = r.offset
    first = 1  # the damaged position itself is not a candidate
    keylen = max(len(k) for k in keys)
    while True:
        r.fill(RESYNC_WINDOW + RESYNC_LOOKAHEAD)
        buf, pos = r.buf, r.pos
        limit = min(len(buf), pos + RESYNC_WINDOW)
        endpos = min(len(buf), limit + shift + keylen)
        find = buf.find
        nexts = {k: find(k, pos + first + shift, endpos) for k in keys}
        while True:
            live = [x for x in nexts.values() if x >= 0]
            if not live:
                break
            x = min(live)
            if check(buf, x - shift):
                r.pos = x - shift
                return r.offset - start
            for k, v in nexts.items():
                if v == x:
                    nexts[k] = find(k, x + 1, endpos)
        if limit >= len(buf):
            return -1
        r.pos = limit
        first = 0


def _resync_pcap(r: _Reader, endian: str, hdrlen: int, div: int, prev_sec: int) -> bool:
    """After a lying record header, find the next plausible one.

    A candidate must have a timestamp close to the last good one (found by
    searching for the high 16 bits of the seconds), a sane length, and be
    followed by another sane header or the end of the file.
    """
    start = r.offset
    if prev_sec < 0:
        r.stats.warn("resync-failed", f"{r.name}: no good record before offset {start}; stopped")
        return False
    unpack = struct.Struct(endian + "IIII").unpack_from
    hi = prev_sec >> 16
    keys = [struct.pack(endian + "H", h & 0xFFFF) for h in (hi, hi + 1)]

    def sane(buf: bytes, p: int) -> int:
        """Length of the record at p, or -1 if its header is implausible."""
        if p < 0 or p + hdrlen > len(buf):
            return -1
        sec, frac, caplen, origlen = unpack(buf, p)
        if abs(sec - prev_sec) > 0x20000 or frac >= div or caplen > MAX_CAPLEN:
            return -1
        if caplen > origlen or caplen == 0:
            return -1
        return caplen

    def check(buf: bytes, p: int) -> bool:
        caplen = sane(buf, p)
        if caplen < 0:
            return False
        q = p + hdrlen + caplen
        if q + hdrlen <= len(buf):
            return sane(buf, q) >= 0
        return r.eof and q == len(buf)

    return _resynced(r, start, _scan(r, keys, 2 if endian == "<" else 0, check), "record")


def _resynced(r: _Reader, start: int, skipped: int, what: str) -> bool:
    """Report a resync scan from ``start`` (pcap and pcapng alike); False: nothing left."""
    if skipped < 0:
        r.stats.warn(
            "resync-failed", f"{r.name}: no plausible {what} after offset {start}; rest ignored"
        )
        return False
    r.stats.warn("resync", f"{r.name}: skipped {skipped} bytes from offset {start}")
    return True


# ---------------------------------------------------------------- pcapng


class _Iface(NamedTuple):
    linktype: int
    divisor: int  # timestamp units per second
    offset: int  # seconds added to every timestamp
    snaplen: int


def _read_shb(r: _Reader, name: str, stats: TraceStats, fatal: bool) -> str | None:
    """Parse the section header block at ``r.pos``; return the section's byte order.

    On damage: TraceError when ``fatal`` (the file's first block), else a
    warning and None (the caller resynchronises).
    """

    def bad(problem: str) -> None:
        if fatal:
            raise TraceError(f"{name}: {problem}")
        stats.warn("bad-block", f"{name}: offset {r.offset}: {problem}")

    if not r.fill(12):
        bad("pcapng section header truncated")
        return None
    buf, pos = r.buf, r.pos
    bom = buf[pos + 8 : pos + 12]
    if bom == b"\x4d\x3c\x2b\x1a":
        endian = "<"
    elif bom == b"\x1a\x2b\x3c\x4d":
        endian = ">"
    else:
        bad(f"pcapng section header has bad byte-order magic {bom.hex()}")
        return None
    (blen,) = struct.unpack_from(endian + "I", buf, pos + 4)
    if blen < 28 or blen & 3 or blen > MAX_META_BLOCK:
        bad(f"pcapng section header length {blen} is invalid")
        return None
    if not r.fill(blen):
        bad("pcapng section header truncated")
        return None
    buf, pos = r.buf, r.pos
    major, _minor = struct.unpack_from(endian + "HH", buf, pos + 12)
    (trailer,) = struct.unpack_from(endian + "I", buf, pos + blen - 4)
    if trailer != blen:
        bad(f"pcapng section header length mismatch ({blen} vs {trailer})")
        return None
    if major != 1:
        bad(f"unsupported pcapng version {major}")
        return None
    r.pos = pos + blen
    return endian


def _parse_idb(buf: bytes, pos: int, blen: int, endian: str, r: _Reader) -> _Iface:
    """Interface description: link type, snaplen, timestamp resolution and offset."""
    linktype, _res, snaplen = struct.unpack_from(endian + "HHI", buf, pos + 8)
    divisor = 1_000_000
    offset = 0
    p = pos + 16
    end = pos + blen - 4
    while p + 4 <= end:
        code, olen = struct.unpack_from(endian + "HH", buf, p)
        if code == 0:
            break
        v = p + 4
        if v + olen > end:
            r.stats.warn("bad-option", f"{r.name}: offset {r.offset}: option overruns block")
            break
        if code == 9 and olen >= 1:  # if_tsresol
            res = buf[v]
            if res & 0x80:
                if (res & 0x7F) <= 63:
                    divisor = 1 << (res & 0x7F)
                else:
                    r.stats.warn("bad-option", f"{r.name}: if_tsresol 2^-{res & 0x7F} ignored")
            elif res <= 18:
                divisor = 10**res
            else:
                r.stats.warn("bad-option", f"{r.name}: if_tsresol 10^-{res} ignored")
        elif code == 14 and olen >= 8:  # if_tsoffset
            (offset,) = struct.unpack_from(endian + "q", buf, v)
        p = v + ((olen + 3) & ~3)
    return _Iface(linktype, divisor, offset, snaplen)


def _ng_unpackers(endian: str) -> tuple[Any, Any, Any, Any]:
    """Block header, EPB fields, EPB with its header, and u32, in one byte order."""
    return (
        struct.Struct(endian + "II").unpack_from,
        struct.Struct(endian + "IIIII").unpack_from,
        struct.Struct(endian + "7I").unpack_from,
        struct.Struct(endian + "I").unpack_from,
    )


def _iter_pcapng(r: _Reader, stats: TraceStats, endian: str) -> Iterator[Record]:
    new = tuple.__new__
    ifaces: list[_Iface] = []
    hdr, epb, epb7, u32 = _ng_unpackers(endian)
    n = nbytes = 0
    last_ts = 0.0
    buf, pos = r.buf, r.pos
    try:
        while True:
            # fast path: a whole, well-formed EPB inside the current chunk
            if pos + 28 <= len(buf):
                btype, blen, iface, th, tl, caplen, origlen = epb7(buf, pos)
                end = pos + blen
                if (
                    btype == 6
                    and end <= len(buf)
                    and caplen <= blen - 32
                    and blen <= MAX_PACKET_BLOCK
                    and not blen & 3
                    and iface < len(ifaces)
                    and u32(buf, end - 4)[0] == blen
                ):
                    lt, div, off, _snap = ifaces[iface]
                    last_ts = ((th << 32) | tl) / div + off
                    n += 1
                    nbytes += caplen
                    yield new(Record, (last_ts, lt, buf[pos + 28 : pos + 28 + caplen], origlen))
                    pos = end
                    continue
            if pos + 8 > len(buf):
                stats.packets_read += n
                stats.bytes_read += nbytes
                n = nbytes = 0
                r.pos = pos
                if not r.fill(8):
                    if r.remaining:
                        stats.warn(
                            "truncated-record",
                            f"{r.name}: {r.remaining} stray bytes at end of file",
                        )
                    return
                buf, pos = r.buf, r.pos
            btype, blen = hdr(buf, pos)
            if btype == _EPB and 32 <= blen <= MAX_PACKET_BLOCK and not blen & 3:
                end = pos + blen
                if end > len(buf):
                    stats.packets_read += n
                    stats.bytes_read += nbytes
                    n = nbytes = 0
                    r.pos = pos
                    if not _fill_block(r, blen):
                        return
                    buf, pos = r.buf, r.pos
                    end = pos + blen
                if u32(buf, end - 4)[0] != blen:
                    r.pos = pos
                    if not _skip_damage(r, endian, "block length mismatch"):
                        return
                    buf, pos = r.buf, r.pos
                    continue
                iface, th, tl, caplen, origlen = epb(buf, pos + 8)
                if caplen > blen - 32 or iface >= len(ifaces):
                    r.pos = pos
                    what = (
                        f"captured length {caplen} exceeds its block"
                        if caplen > blen - 32
                        else f"unknown interface {iface}"
                    )
                    stats.warn("bad-block", f"{r.name}: packet block at offset {r.offset}: {what}")
                    pos = end
                    continue
                lt, div, off, _snap = ifaces[iface]
                last_ts = ((th << 32) | tl) / div + off
                n += 1
                nbytes += caplen
                yield new(Record, (last_ts, lt, buf[pos + 28 : pos + 28 + caplen], origlen))
                pos = end
                continue
            # every other block: slower, general path
            r.pos = pos
            if btype == _SHB:
                new_endian = _read_shb(r, r.name, stats, fatal=False)
                if new_endian is None:
                    if not _resync_pcapng(r, endian):
                        return
                else:
                    endian = new_endian
                    hdr, epb, epb7, u32 = _ng_unpackers(endian)
                    ifaces = []
                buf, pos = r.buf, r.pos
                continue
            if blen < 12 or blen & 3 or blen > MAX_BLOCK:
                if not _skip_damage(r, endian, f"block length {blen}"):
                    return
                buf, pos = r.buf, r.pos
                continue
            if btype in (_IDB, _PB, _SPB, _EPB):
                limit = MAX_META_BLOCK if btype == _IDB else MAX_PACKET_BLOCK
                if blen > limit:
                    if not _skip_damage(r, endian, f"block length {blen} too large"):
                        return
                    buf, pos = r.buf, r.pos
                    continue
                if not _fill_block(r, blen):
                    return
                buf, pos = r.buf, r.pos
                if u32(buf, pos + blen - 4)[0] != blen:
                    if not _skip_damage(r, endian, "block length mismatch"):
                        return
                    buf, pos = r.buf, r.pos
                    continue
                rec = _other_packet_block(r, btype, blen, endian, ifaces, last_ts)
                if rec is not None:
                    last_ts = rec[0]
                    n += 1
                    nbytes += len(rec[2])
                    r.pos = pos + blen
                    yield rec
                buf, pos = r.buf, pos + blen
                r.pos = pos
                continue
            # unknown or uninteresting block (NRB, ISB, DSB, custom...): skip it
            if blen <= CHUNK:
                if not r.fill(blen):
                    stats.warn("truncated-record", f"{r.name}: last block at {r.offset} cut short")
                    return
                buf, pos = r.buf, r.pos
                if u32(buf, pos + blen - 4)[0] != blen:
                    if not _skip_damage(r, endian, "block length mismatch"):
                        return
                    buf, pos = r.buf, r.pos
                    continue
                pos += blen
                continue
            if not r.skip(blen - 4) or not r.fill(4):
                stats.warn("truncated-record", f"{r.name}: last block cut short")
                return
            buf, pos = r.buf, r.pos
            if u32(buf, pos)[0] != blen:
                if not _skip_damage(r, endian, "block length mismatch"):
                    return
                buf, pos = r.buf, r.pos
                continue
            pos += 4
    finally:
        stats.packets_read += n
        stats.bytes_read += nbytes
        r.close()


def _other_packet_block(
    r: _Reader, btype: int, blen: int, endian: str, ifaces: list[_Iface], last_ts: float
) -> Record | None:
    """IDB (appends to ``ifaces``), simple packet block and obsolete packet block."""
    buf, pos = r.buf, r.pos
    if btype == _IDB:
        if blen < 20:
            r.stats.warn("bad-block", f"{r.name}: offset {r.offset}: short interface block")
            return None
        if len(ifaces) >= MAX_INTERFACES:
            r.stats.warn("bad-block", f"{r.name}: more than {MAX_INTERFACES} interfaces")
            return None
        ifaces.append(_parse_idb(buf, pos, blen, endian, r))
        return None
    if btype == _SPB:
        if blen < 16 or not ifaces:
            r.stats.warn("bad-block", f"{r.name}: offset {r.offset}: bad simple packet block")
            return None
        (origlen,) = struct.unpack_from(endian + "I", buf, pos + 8)
        iface = ifaces[0]
        caplen = min(origlen, blen - 16)
        if iface.snaplen:
            caplen = min(caplen, iface.snaplen)
        return Record(last_ts, iface.linktype, buf[pos + 12 : pos + 12 + caplen], origlen)
    if btype == _PB:
        if blen < 32:
            r.stats.warn("bad-block", f"{r.name}: offset {r.offset}: short packet block")
            return None
        idx, _drops, th, tl, caplen, origlen = struct.unpack_from(endian + "HHIIII", buf, pos + 8)
        if caplen > blen - 32 or idx >= len(ifaces):
            r.stats.warn("bad-block", f"{r.name}: offset {r.offset}: bad packet block")
            return None
        iface = ifaces[idx]
        ts = ((th << 32) | tl) / iface.divisor + iface.offset
        return Record(ts, iface.linktype, buf[pos + 28 : pos + 28 + caplen], origlen)
    # an EPB that failed the fast path's size test (blen < 32)
    r.stats.warn("bad-block", f"{r.name}: offset {r.offset}: enhanced packet block too short")
    return None


def _fill_block(r: _Reader, blen: int) -> bool:
    """Make the whole block at ``r.pos`` readable; False (reported) when the file ends first."""
    if r.fill(blen):
        return True
    r.stats.warn(
        "truncated-record",
        f"{r.name}: last block at offset {r.offset} cut short ({r.remaining} of {blen} bytes)",
    )
    return False


def _skip_damage(r: _Reader, endian: str, what: str) -> bool:
    """Report the damaged block at ``r.pos`` and resync past it; False: nothing left."""
    r.stats.warn("bad-block", f"{r.name}: offset {r.offset}: {what}")
    return _resync_pcapng(r, endian)


def _resync_pcapng(r: _Reader, endian: str) -> bool:
    """Find the next block that looks whole (known type, sane length, matching trailer)."""
    start = r.offset
    u32 = struct.Struct(endian + "I").unpack_from
    keys = [struct.pack(endian + "I", t) for t in _KNOWN_BLOCKS]

    def check(buf: bytes, p: int) -> bool:
        if p + 12 > len(buf):
            return False
        if buf[p : p + 4] == b"\x0a\x0d\x0d\x0a" and buf[p + 8 : p + 12] in _BOMS:
            return True  # a new section; its own byte order is checked by _read_shb
        (blen,) = u32(buf, p + 4)
        if blen < 12 or blen & 3 or blen > MAX_PACKET_BLOCK or p + blen > len(buf):
            return False
        return u32(buf, p + blen - 4)[0] == blen

    return _resynced(r, start, _scan(r, keys, 0, check), "block")
