"""pcap / pcapng reading: formats, byte orders, resolutions, interfaces, errors.

Captures are written here with ``struct`` so every header field is under the
test's control (the writers below are also used by test_decode and
test_trace_badinput).
"""

from __future__ import annotations

import gzip
import io
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from scriptgen.trace.errors import TraceError, TraceStats
from scriptgen.trace.pcapfile import Record, iter_records

SHARED = Path(__file__).resolve().parents[2] / "shared"
CORPORA = SHARED / "corpora"

# ------------------------------------------------------------------ writers

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_MAGIC_MOD = 0xA1B2CD34


def pcap_bytes(
    packets: list[tuple],
    linktype: int = 1,
    endian: str = "<",
    nano: bool = False,
    snaplen: int = 65535,
    modified: bool = False,
) -> bytes:
    """A classic pcap: packets are (sec, frac, data) or (sec, frac, data, orig_len)."""
    magic = PCAP_MAGIC_MOD if modified else PCAP_MAGIC_NS if nano else PCAP_MAGIC_US
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for p in packets:
        sec, frac, data = p[:3]
        orig = p[3] if len(p) > 3 else len(data)
        out.append(struct.pack(endian + "IIII", sec, frac, len(data), orig))
        if modified:
            out.append(struct.pack(endian + "IHBx", 7, 0x0800, 0))
        out.append(data)
    return b"".join(out)


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def ng_block(btype: int, body: bytes, endian: str = "<") -> bytes:
    body = _pad(body)
    blen = 12 + len(body)
    return struct.pack(endian + "II", btype, blen) + body + struct.pack(endian + "I", blen)


def ng_option(code: int, value: bytes, endian: str = "<") -> bytes:
    return struct.pack(endian + "HH", code, len(value)) + _pad(value)


def ng_shb(endian: str = "<", options: bytes = b"") -> bytes:
    body = struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1) + options
    return ng_block(0x0A0D0D0A, body, endian)


def ng_idb(
    linktype: int,
    endian: str = "<",
    snaplen: int = 0,
    tsresol: int | None = None,
    tsoffset: int | None = None,
) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += ng_option(9, bytes([tsresol]), endian)
    if tsoffset is not None:
        opts += ng_option(14, struct.pack(endian + "q", tsoffset), endian)
    if opts:
        opts += ng_option(0, b"", endian)
    return ng_block(1, struct.pack(endian + "HHI", linktype, 0, snaplen) + opts, endian)


def ng_epb(
    iface: int, units: int, data: bytes, endian: str = "<", orig: int | None = None
) -> bytes:
    orig = len(data) if orig is None else orig
    head = struct.pack(endian + "IIIII", iface, units >> 32, units & 0xFFFFFFFF, len(data), orig)
    return ng_block(6, head + data, endian)


def ng_spb(data: bytes, endian: str = "<", orig: int | None = None) -> bytes:
    orig = len(data) if orig is None else orig
    return ng_block(3, struct.pack(endian + "I", orig) + data, endian)


def ng_pb(iface: int, units: int, data: bytes, endian: str = "<") -> bytes:
    head = struct.pack(
        endian + "HHIIII", iface, 0, units >> 32, units & 0xFFFFFFFF, len(data), len(data)
    )
    return ng_block(2, head + data, endian)


def read_all(data: bytes | Path, stats: TraceStats | None = None) -> list[Record]:
    stats = stats if stats is not None else TraceStats()
    src = data if isinstance(data, Path) else io.BytesIO(data)
    return list(iter_records(src, stats))


# ------------------------------------------------------------------ pcap


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcap_microseconds_both_byte_orders(endian: str) -> None:
    pkts = [(1_600_000_000, 250_000, b"abc"), (1_600_000_001, 999_999, b"\x01" * 70, 1500)]
    stats = TraceStats()
    recs = read_all(pcap_bytes(pkts, linktype=101, endian=endian), stats)
    assert [r.data for r in recs] == [b"abc", b"\x01" * 70]
    assert [r.orig_len for r in recs] == [3, 1500]
    assert recs[0].ts == pytest.approx(1_600_000_000.25, abs=1e-7)
    assert recs[1].ts == pytest.approx(1_600_000_001.999999, abs=1e-7)
    assert {r.linktype for r in recs} == {101}
    assert stats.packets_read == 2 and stats.bytes_read == 73 and not stats.warnings


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcap_nanoseconds(endian: str) -> None:
    recs = read_all(pcap_bytes([(10, 123_456_789, b"x")], nano=True, endian=endian))
    assert recs[0].ts == pytest.approx(10.123456789, abs=1e-9)


def test_pcap_modified_format_has_longer_record_headers() -> None:
    recs = read_all(pcap_bytes([(1, 2, b"one"), (3, 4, b"two!")], modified=True))
    assert [r.data for r in recs] == [b"one", b"two!"]


def test_pcap_linktype_upper_bits_are_masked() -> None:
    data = bytearray(pcap_bytes([(1, 0, b"z")], linktype=1))
    struct.pack_into("<I", data, 20, 1 | (0x1 << 28) | (4 << 26))  # FCS bits set
    assert read_all(bytes(data))[0].linktype == 1


def test_pcap_caplen_above_snaplen_is_reported_but_kept() -> None:
    stats = TraceStats()
    recs = read_all(pcap_bytes([(1, 0, b"y" * 100)], snaplen=64), stats)
    assert len(recs) == 1 and len(recs[0].data) == 100
    assert stats.warnings["caplen-over-snaplen"] == 1


def test_gzip_compressed_pcap(tmp_path: Path) -> None:
    raw = pcap_bytes([(i, 0, bytes([i]) * 30) for i in range(50)])
    path = tmp_path / "x.pcap.gz"
    path.write_bytes(gzip.compress(raw))
    recs = read_all(path)
    assert [r.data for r in recs] == [bytes([i]) * 30 for i in range(50)]


def test_gzip_damaged_stream_is_a_warning(tmp_path: Path) -> None:
    raw = pcap_bytes([(i, 0, bytes([i]) * 300) for i in range(200)])
    comp = gzip.compress(raw)
    path = tmp_path / "x.pcap.gz"
    path.write_bytes(comp[: len(comp) // 2])
    stats = TraceStats()
    recs = read_all(path, stats)
    assert 0 < len(recs) < 200
    assert stats.damaged >= 1


def test_path_is_closed_and_file_object_left_open(tmp_path: Path) -> None:
    path = tmp_path / "a.pcap"
    path.write_bytes(pcap_bytes([(1, 0, b"a")]))
    stats = TraceStats()
    it = iter_records(str(path), stats)
    assert len(list(it)) == 1
    with open(path, "rb") as f:
        assert len(list(iter_records(f, stats))) == 1
        assert not f.closed


def test_large_file_crosses_chunks() -> None:
    # records of varying size straddle the 1 MiB read chunks
    pkts = [(i, i % 1_000_000, bytes([i & 0xFF]) * (1 + (i * 37) % 1500)) for i in range(3000)]
    recs = read_all(pcap_bytes(pkts))
    assert len(recs) == 3000
    assert all(r.data == p[2] for r, p in zip(recs, pkts, strict=True))


# ------------------------------------------------------------------ pcapng


def test_pcapng_interfaces_linktypes_resolutions_offsets() -> None:
    e = "<"
    blob = b"".join(
        [
            ng_shb(e),
            ng_idb(1, e),  # 0: Ethernet, default microseconds
            ng_idb(228, e, tsresol=9),  # 1: raw IPv4, nanoseconds
            ng_idb(101, e, tsresol=0x80 | 10, tsoffset=1000),  # 2: raw, 2^-10 s, +1000 s
            ng_block(0x0BAD, b"custom block, skipped", e),
            ng_block(4, b"\x00" * 8, e),  # name resolution block, skipped
            ng_epb(0, 1_600_000_000_500_000, b"eth", e),
            ng_epb(1, 1_600_000_000_123_456_789, b"ip4", e),
            ng_epb(2, 5 * 1024 + 512, b"raw", e),
            ng_block(5, b"\x00" * 12, e),  # interface statistics block, skipped
        ]
    )
    stats = TraceStats()
    recs = read_all(blob, stats)
    assert [(r.linktype, r.data) for r in recs] == [(1, b"eth"), (228, b"ip4"), (101, b"raw")]
    assert recs[0].ts == pytest.approx(1_600_000_000.5, abs=1e-6)
    assert recs[1].ts == pytest.approx(1_600_000_000.123456789, abs=1e-6)
    assert recs[2].ts == pytest.approx(1005.5)
    assert not stats.warnings


def test_pcapng_sections_change_byte_order_and_reset_interfaces() -> None:
    blob = b"".join(
        [
            ng_shb("<"),
            ng_idb(1, "<"),
            ng_epb(0, 1_000_000, b"first", "<"),
            ng_shb(">"),
            ng_idb(113, ">", tsresol=3),
            ng_epb(0, 2_000, b"second", ">"),
            ng_pb(0, 3_000, b"obsolete", ">"),
            ng_spb(b"simple", ">"),
        ]
    )
    recs = read_all(blob)
    assert [(r.linktype, r.data) for r in recs] == [
        (1, b"first"),
        (113, b"second"),
        (113, b"obsolete"),
        (113, b"simple"),
    ]
    assert [r.ts for r in recs[:3]] == [pytest.approx(1.0), pytest.approx(2.0), pytest.approx(3.0)]
    assert recs[3].ts == recs[2].ts  # a simple packet block has no time: the last one is kept


def test_pcapng_simple_packet_block_honours_snaplen() -> None:
    blob = ng_shb() + ng_idb(101, snaplen=4) + ng_spb(b"abcdefgh", orig=100)
    (rec,) = read_all(blob)
    assert rec.data == b"abcd" and rec.orig_len == 100


def test_pcapng_packet_for_unknown_interface_is_reported() -> None:
    stats = TraceStats()
    blob = ng_shb() + ng_idb(1) + ng_epb(3, 0, b"lost") + ng_epb(0, 0, b"kept")
    assert [r.data for r in read_all(blob, stats)] == [b"kept"]
    assert stats.warnings["bad-block"] == 1


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_pcapng_timestamps_agree_with_tshark(tmp_path: Path) -> None:
    ip = bytes.fromhex("450000140001000040ff0000c0a80001c0a80002")  # IPv4, protocol 255
    blob = b"".join(
        [
            ng_shb(),
            ng_idb(228),
            ng_idb(228, tsresol=9),
            ng_idb(228, tsresol=0x80 | 20, tsoffset=7),
            ng_epb(0, 1_700_000_000_250_000, ip),
            ng_epb(1, 1_700_000_001_000_000_500, ip),
            ng_epb(2, (1_700_000_002 << 20) + (1 << 19), ip),
        ]
    )
    path = tmp_path / "t.pcapng"
    path.write_bytes(blob)
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    ours = [r.ts for r in read_all(path)]
    assert len(out) == 3
    assert ours == [pytest.approx(float(t), abs=1e-5) for t in out]


# ------------------------------------------------------------------ not a capture


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "empty"),
        (b"\xd4\xc3", "too short"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a pcap"),
        (b"\0" * 4096, "not a pcap"),
        (struct.pack("<IHH", PCAP_MAGIC_US, 2, 4), "truncated"),
        (struct.pack("<IHHiIII", PCAP_MAGIC_US, 3, 0, 0, 0, 65535, 1), "version"),
        (ng_block(0x0A0D0D0A, b"\x11\x22\x33\x44" + b"\0" * 12), "byte-order"),
        (ng_shb()[:20], "truncated"),
        (gzip.compress(b""), "empty"),
    ],
)
def test_not_a_capture_is_one_trace_error(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    with pytest.raises(TraceError) as exc:
        iter_records(path, TraceStats())
    msg = str(exc.value)
    assert str(path) in msg and words in msg and "\n" not in msg


def test_missing_file_and_directory_are_trace_errors(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot open"):
        iter_records(tmp_path / "nope.pcap", TraceStats())
    with pytest.raises(TraceError, match="cannot"):
        list(iter_records(tmp_path, TraceStats()))


# ------------------------------------------------------------------ corpus


def _corpus_files() -> list[Path]:
    if not CORPORA.is_dir():
        return []
    return sorted(p for p in CORPORA.rglob("*") if p.is_file() and "cap" in p.suffix)


@pytest.mark.corpus
@pytest.mark.integration
@pytest.mark.skipif(not CORPORA.is_dir(), reason="../shared/corpora absent")
@pytest.mark.skipif(shutil.which("capinfos") is None, reason="capinfos not installed")
def test_corpus_record_counts_match_capinfos() -> None:
    files = _corpus_files()
    assert files
    wrong = []
    for path in files:
        stats = TraceStats()
        try:
            count = sum(1 for _ in iter_records(path, stats))
        except TraceError:
            count = -1
        out = subprocess.run(
            ["capinfos", "-c", "-M", "-T", str(path)], capture_output=True, text=True
        ).stdout.splitlines()
        theirs = int(out[1].split("\t")[1]) if len(out) > 1 else -1
        if count != theirs:
            wrong.append((path.name, count, theirs))
    assert not wrong
