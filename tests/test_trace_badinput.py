"""Hostile captures: truncation at every byte, lying lengths, garbage, fuzz.

The contract under test: reading a capture raises nothing but ``TraceError``
(and that only for a file that is not a capture at all), always terminates,
never allocates much, and recovers the records after a damaged one when it
can.
"""

from __future__ import annotations

import io
import random
import struct
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scriptgen.trace.decode import iter_segments
from scriptgen.trace.errors import TraceError, TraceStats
from scriptgen.trace.pcapfile import iter_records
from tests.test_pcapfile import (
    ng_block,
    ng_epb,
    ng_idb,
    ng_pb,
    ng_shb,
    ng_spb,
    pcap_bytes,
)

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def _tcp_frame(i: int, payload: bytes) -> bytes:
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        40 + len(payload),
        i,
        0,
        64,
        6,
        0,
        b"\x0a\0\0\x01",
        b"\x0a\0\0\x02",
    )
    tcp = struct.pack("!HHIIBBHHH", 1000 + i, 80, i, 0, 0x50, 0x18, 1024, 0, 0)
    return b"\x00" * 12 + b"\x08\x00" + ip + tcp + payload


FRAMES = [_tcp_frame(i, bytes([65 + i]) * (5 + 3 * i)) for i in range(6)]
SMALL_PCAP = pcap_bytes([(1_700_000_000 + i, i, f) for i, f in enumerate(FRAMES)])
SMALL_PCAPNG = b"".join(
    [ng_shb(), ng_idb(1), ng_idb(101, tsresol=9)]
    + [ng_epb(0, 1_700_000_000_000_000 + i, f) for i, f in enumerate(FRAMES[:3])]
    + [
        ng_spb(FRAMES[3]),
        ng_pb(0, 5, FRAMES[4]),
        ng_block(0x0BAD, b"opaque"),
        ng_epb(0, 9, FRAMES[5]),
    ]
)


def run(data: bytes) -> tuple[list, TraceStats]:
    """Everything the trace stage would do with these bytes; TraceError passes through."""
    stats = TraceStats()
    segs = list(iter_segments(iter_records(io.BytesIO(data), stats), stats))
    return segs, stats


def run_guarded(data: bytes) -> tuple[list, TraceStats] | None:
    try:
        return run(data)
    except TraceError as e:
        assert "\n" not in str(e)
        return None


# ------------------------------------------------------------------ truncation


@pytest.mark.parametrize("blob", [SMALL_PCAP, SMALL_PCAPNG], ids=["pcap", "pcapng"])
def test_truncated_at_every_byte(blob: bytes) -> None:
    full, stats = run(blob)
    assert len(full) == 6 and not stats.warnings
    start = time.monotonic()
    for cut in range(len(blob)):
        res = run_guarded(blob[:cut])
        if res is None:
            assert cut < 28 or blob is SMALL_PCAPNG and cut < 32, cut  # only a bad header
            continue
        segs, stats = res
        assert segs == full[: len(segs)], cut  # a prefix, never garbage
        if 0 < len(segs) < 6 or cut > 40 and not segs:
            # something was lost: that must be reported
            assert stats.warnings or cut in _record_boundaries(blob), cut
    assert time.monotonic() - start < 30


def _record_boundaries(blob: bytes) -> set[int]:
    """Offsets where a cut loses nothing silently-wrong: between two records/blocks."""
    out: set[int] = set()
    if blob[:4] == b"\xd4\xc3\xb2\xa1":
        pos = 24
        while pos <= len(blob):
            out.add(pos)
            if pos + 16 > len(blob):
                break
            pos += 16 + struct.unpack_from("<I", blob, pos + 8)[0]
    else:
        pos = 0
        while pos < len(blob):
            out.add(pos)
            pos += struct.unpack_from("<I", blob, pos + 4)[0]
        out.add(pos)
    return out


def test_truncated_last_record_is_a_warning() -> None:
    segs, stats = run(SMALL_PCAP[:-3])
    assert len(segs) == 5
    assert stats.warnings["truncated-record"] == 1


# ------------------------------------------------------------------ lying lengths


def _pcap_offsets(blob: bytes) -> list[int]:
    offs, pos = [], 24
    while pos < len(blob):
        offs.append(pos)
        pos += 16 + struct.unpack_from("<I", blob, pos + 8)[0]
    return offs


@pytest.mark.parametrize("caplen", [0xFFFFFFFF, 0x7FFFFFFF, 300_000])
def test_pcap_lying_caplen_in_the_middle_resyncs(caplen: int) -> None:
    blob = bytearray(SMALL_PCAP)
    struct.pack_into("<I", blob, _pcap_offsets(SMALL_PCAP)[2] + 8, caplen)
    segs, stats = run(bytes(blob))
    assert [s.sport for s in segs] == [1000, 1001, 1003, 1004, 1005]
    assert stats.warnings["bad-length"] == 1 and stats.warnings["resync"] == 1


def test_resync_crosses_megabytes_of_garbage() -> None:
    rng = random.Random(5)
    garbage = rng.randbytes(3 << 20)
    offs = _pcap_offsets(SMALL_PCAP)
    bad = bytearray(SMALL_PCAP[: offs[3]] + b"\xff" * 16)  # a record header that lies
    segs, stats = run(bytes(bad) + garbage + SMALL_PCAP[offs[3] :])
    assert [s.sport for s in segs] == [1000 + i for i in range(6)]
    assert stats.warnings["resync"] == 1
    ng = _ng_offsets(SMALL_PCAPNG)
    blob = SMALL_PCAPNG[: ng[5]] + b"\x06\0\0\0\xff\xff\xff\xff" + garbage + SMALL_PCAPNG[ng[5] :]
    segs, stats = run(blob)
    assert [s.sport for s in segs] == [1000 + i for i in range(6)]
    # and a capture whose tail is all garbage ends, with one report
    segs, stats = run(SMALL_PCAP + b"\xff" * 16 + garbage)
    assert len(segs) == 6 and stats.warnings["resync-failed"] == 1


def test_pcap_lying_caplen_in_first_record_stops_cleanly() -> None:
    blob = bytearray(SMALL_PCAP)
    struct.pack_into("<I", blob, 24 + 8, 0xFFFFFFF0)
    segs, stats = run(bytes(blob))
    assert segs == [] and stats.warnings["resync-failed"] == 1


def test_pcap_caplen_just_short_is_not_a_hang() -> None:
    """A caplen that is plausible but wrong shifts the framing: no exception, finite."""
    blob = bytearray(SMALL_PCAP)
    struct.pack_into("<I", blob, _pcap_offsets(SMALL_PCAP)[1] + 8, 7)
    res = run_guarded(bytes(blob))
    assert res is not None and len(res[0]) >= 1


def _ng_offsets(blob: bytes) -> list[int]:
    offs, pos = [], 0
    while pos < len(blob):
        offs.append(pos)
        pos += struct.unpack_from("<I", blob, pos + 4)[0]
    return offs


@pytest.mark.parametrize("blen", [0, 4, 13, 0xFFFFFFF0, 0x10000000, 96, 104])
def test_pcapng_lying_block_length_resyncs(blen: int) -> None:
    blob = bytearray(SMALL_PCAPNG)
    third_epb = _ng_offsets(SMALL_PCAPNG)[5]
    struct.pack_into("<I", blob, third_epb + 4, blen)
    segs, stats = run(bytes(blob))
    assert [s.sport for s in segs] == [1000, 1001, 1003, 1004, 1005]
    assert stats.warnings["resync"] == 1


def test_pcapng_epb_caplen_beyond_block_skips_that_packet() -> None:
    blob = bytearray(SMALL_PCAPNG)
    struct.pack_into("<I", blob, _ng_offsets(SMALL_PCAPNG)[3] + 20, 5000)
    segs, stats = run(bytes(blob))
    assert [s.sport for s in segs] == [1001, 1002, 1003, 1004, 1005]
    assert stats.warnings["bad-block"] == 1


def test_pcapng_huge_unknown_block_is_streamed_not_loaded() -> None:
    big = ng_block(0x0BAD, b"\0" * (6 << 20))
    blob = SMALL_PCAPNG + big + ng_epb(0, 0, FRAMES[0])
    tracemalloc.start()
    try:
        segs, _stats = run(blob)
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(segs) == 7
    assert peak < 4 << 20  # the 6 MiB block was never held whole


def test_absurd_lengths_allocate_little() -> None:
    blobs = []
    b = bytearray(SMALL_PCAP)
    struct.pack_into("<I", b, _pcap_offsets(SMALL_PCAP)[1] + 8, 0xFFFFFFFF)
    blobs.append(bytes(b))
    b = bytearray(SMALL_PCAPNG)
    struct.pack_into("<I", b, _ng_offsets(SMALL_PCAPNG)[3] + 4, 0xFFFFFFFC)
    blobs.append(bytes(b))
    blobs.append(ng_shb() + struct.pack("<II", 1, 0x0FFFFFFC))  # IDB of 256 MiB
    tracemalloc.start()
    try:
        for blob in blobs:
            run_guarded(blob)
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_pcapng_interface_flood_is_bounded() -> None:
    from scriptgen.trace.pcapfile import MAX_INTERFACES

    blob = ng_shb() + ng_idb(1) * (MAX_INTERFACES + 10) + ng_epb(MAX_INTERFACES + 5, 0, FRAMES[0])
    segs, stats = run(blob + ng_epb(0, 0, FRAMES[1]))
    assert [s.sport for s in segs] == [1001]
    assert stats.warnings["bad-block"] == 10 + 1  # the extra interfaces, then their packet


# ------------------------------------------------------------------ garbage


def test_header_then_zeros_and_header_then_garbage() -> None:
    header = SMALL_PCAP[:24]
    segs, stats = run(header + b"\0" * 100_000)  # 6250 empty records: dull but valid
    assert segs == [] and stats.packets_read == 6250
    rng = random.Random(7)
    for _ in range(30):
        run_guarded(header + rng.randbytes(rng.randint(1, 5000)))
        run_guarded(SMALL_PCAPNG[:72] + rng.randbytes(rng.randint(1, 5000)))


def test_random_byte_flips_never_raise() -> None:
    rng = random.Random(11)
    for blob in (SMALL_PCAP, SMALL_PCAPNG):
        for _ in range(400):
            b = bytearray(blob)
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            run_guarded(bytes(b))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_hypothesis_arbitrary_bytes(data: bytes) -> None:
    run_guarded(data)


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from([SMALL_PCAP[:24], SMALL_PCAPNG[:72], SMALL_PCAP, SMALL_PCAPNG]),
    data=st.binary(max_size=3000),
)
def test_hypothesis_valid_header_then_arbitrary_bytes(prefix: bytes, data: bytes) -> None:
    run_guarded(prefix + data)


@settings(max_examples=300, deadline=None)
@given(
    linktype=st.sampled_from([0, 1, 12, 14, 101, 108, 113, 228, 229, 276]),
    frame=st.binary(max_size=200),
)
def test_hypothesis_arbitrary_frames_decode_without_error(linktype: int, frame: bytes) -> None:
    """Every link type's decoder on garbage frames, including IPv4 and IPv6 starts."""
    blob = pcap_bytes([(1, 0, frame), (2, 0, frame[:14] + b"\x45" + frame[15:])], linktype=linktype)
    run(blob)


# ------------------------------------------------------------------ corpus


def _corpus() -> list[Path]:
    if not CORPORA.is_dir():
        return []
    return sorted(p for p in CORPORA.rglob("*") if p.is_file() and p.suffix not in {".md", ".txt"})


@pytest.mark.corpus
@pytest.mark.skipif(not CORPORA.is_dir(), reason="../shared/corpora absent")
def test_whole_corpus_reads_without_exception() -> None:
    """Every file in ../shared/corpora, fuzzer-made ones included: only TraceError."""
    files = _corpus()
    assert files
    fuzzed = [p for p in files if "fuzz" in p.name.lower()]
    assert fuzzed, "expected the OSS-fuzz captures in the corpus"
    decoded = 0
    for path in files:
        stats = TraceStats()
        try:
            for _seg in iter_segments(iter_records(path, stats), stats):
                decoded += 1
        except TraceError:
            pass
    assert decoded > 100_000
