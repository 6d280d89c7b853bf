"""TCP reassembly conformance: scriptgen.trace vs tshark's "Follow TCP Stream".

For every TCP connection of the committed lab captures and of every capture
in ../shared/corpora, the client and server byte streams from
``read_conversations`` must equal what tshark's follow shows (one tshark pass
per file, see tests/lab/tshark.py). Explained differences are named
categories (tests/lab/conformance.py: CATEGORIES, each documented) that are
counted and printed, never silently dropped; anything else fails with the
file, the tcp.stream number, the sender and the first differing offset.
Categories: no-payload-untracked, encapsulation (GRE, VXLAN, IP-in-IP, 6in4
... that the reader does not decode), data-after-rst, unacked-after-hole,
midstream-base, seq-jump-over-window, snaplen-truncated; per file:
file-without-tcp, unreadable-no-tcp. Streams that are equal once tshark's
"[N bytes missing in capture file]" markers are removed count as compared.
Also checked: the reader's client is the sender of a bare SYN, and 'closed',
'reset', 'refused' outcomes are backed by a FIN / RST in tshark's packets.

tshark results are cached in pytest's cache dir, keyed by the file's
SHA-256, tshark's version and tests/lab/tshark.py (SCRIPTGEN_TSHARK_CACHE=0
turns it off); the reader always runs. Cold, the corpus costs ~260 tshark
starts (~110 s CPU; about a minute on an idle 2-core machine).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import CAPTURES_DIR, CORPORA_DIR, require_binaries
from tests.lab.conformance import CATEGORIES, FileReport, compare_file, run_conversations
from tests.lab.tshark import read_streams

pytestmark = [pytest.mark.integration]

CORPUS_FOLDERS = ("chrissanders_packets", "markofu_pcaps", "pcap_attack", "suricata_verify", "zeek")
_INDEX_LINE = re.compile(r"^== (\S+)\s.*\btcp_streams=(\d+)")


def _tcp_streams_in_index(corpora: Path) -> dict[str, int]:
    """INDEX.txt's tshark-made count of TCP streams per file (to skip files without TCP).

    INDEX names some files with their folder, some by base name only; both are keys,
    and an ambiguous base name keeps its largest count (never skip by mistake).
    """
    index = corpora / "INDEX.txt"
    if not index.is_file():
        return {}
    out: dict[str, int] = {}
    for line in index.read_text(errors="replace").splitlines():
        m = _INDEX_LINE.match(line)
        if m:
            name, n = m.group(1), int(m.group(2))
            for key in {name, name.rsplit("/", 1)[-1]}:
                out[key] = max(out.get(key, n), n)
    return out


def _index_count(index: dict[str, int], path: Path, base: Path) -> int | None:
    rel = path.relative_to(base).as_posix()
    return index.get(rel, index.get(path.name))


@pytest.fixture(scope="module")
def tshark_cache(request: pytest.FixtureRequest) -> Path | None:
    """pytest's cache dir for tshark results (off with SCRIPTGEN_TSHARK_CACHE=0)."""
    cache = getattr(request.config, "cache", None)
    if cache is None or os.environ.get("SCRIPTGEN_TSHARK_CACHE") == "0":
        return None
    return Path(cache.mkdir("tshark-follow"))


def _one_file(path: Path, index_streams: int | None, cache: Path | None) -> FileReport:
    from scriptgen.trace import TraceError

    try:
        convs = run_conversations(path)
    except TraceError as exc:
        # Unreadable for the reader: fine only if tshark finds no TCP payload either.
        ts = read_streams(path, 0, cache)
        rep = FileReport(str(path), tshark_streams=len(ts.streams))
        if any(st.payload_bytes for st in ts.streams.values()):
            rep.mismatches.append(f"{path}: reader raised {exc!r}, tshark reads TCP payload")
        else:
            rep.excluded["unreadable-no-tcp"] += 1
        return rep
    except Exception as exc:  # a crash on hostile input is a finding, named by file
        rep = FileReport(str(path))
        rep.mismatches.append(f"{path}: reader crashed: {type(exc).__name__}: {exc}")
        return rep
    if not convs and index_streams == 0:
        rep = FileReport(str(path))
        rep.excluded["file-without-tcp"] += 1
        return rep
    return compare_file(path, convs, read_streams(path, len(convs), cache))


def _run_all(
    paths: Iterable[Path], index: dict[str, int], base: Path, cache: Path | None
) -> FileReport:
    total = FileReport("total")
    files = sorted(paths)
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = pool.map(lambda p: _one_file(p, _index_count(index, p, base), cache), files)
        for rep in reports:
            rep.merge_into(total)
    return total


def _print_report(title: str, total: FileReport, files: int, capsys: pytest.CaptureFixture) -> None:
    with capsys.disabled():
        print(f"\n[tshark conformance] {title}: {files} files; {total.summary()}")
        for cat, n in sorted(total.excluded.items()):
            why = CATEGORIES.get(cat, "file-level: nothing to compare")
            print(f"  excluded {cat}: {n} - {why}")


def _fail_on_mismatches(total: FileReport) -> None:
    if total.mismatches:
        shown = "\n".join(total.mismatches[:25])
        pytest.fail(f"{len(total.mismatches)} reassembly differences from tshark:\n{shown}")


def test_lab_captures_match_tshark_exactly(
    capsys: pytest.CaptureFixture, tshark_cache: Path | None
) -> None:
    """Our own clean loopback captures: every stream compared, no exclusion allowed."""
    require_binaries("tshark")
    pcaps = sorted(CAPTURES_DIR.glob("*.pcap"))
    assert pcaps, f"no committed captures in {CAPTURES_DIR}"
    total = _run_all(pcaps, {}, CAPTURES_DIR, tshark_cache)
    _print_report("lab captures", total, len(pcaps), capsys)
    _fail_on_mismatches(total)
    assert not total.excluded, f"clean captures need no exclusions: {dict(total.excluded)}"
    assert total.compared == total.tshark_streams == total.reader_conversations
    assert total.compared >= 300  # 6 files x 50 runs (+ FTP data connections)


@pytest.mark.corpus
@pytest.mark.parametrize("folder", CORPUS_FOLDERS)
def test_corpus_matches_tshark(
    folder: str, capsys: pytest.CaptureFixture, tshark_cache: Path | None
) -> None:
    """Every capture of one corpus folder; explained differences counted by category."""
    require_binaries("tshark")
    base = CORPORA_DIR / folder
    if not base.is_dir():
        pytest.skip(f"{base} is absent")
    files = [p for p in base.rglob("*") if p.is_file()]
    total = _run_all(files, _tcp_streams_in_index(CORPORA_DIR), CORPORA_DIR, tshark_cache)
    _print_report(folder, total, len(files), capsys)
    _fail_on_mismatches(total)
    assert total.compared > 0


def test_follow_parser_reads_known_lab_dialog() -> None:
    """The tshark follow parser itself: a redis-cli command and its reply, by sender."""
    require_binaries("tshark")
    res = read_streams(CAPTURES_DIR / "redis.pcap", 60)
    assert len(res.streams) == 50
    st = res.streams[0]
    assert st.nodes is not None and st.nodes[1] == ("127.0.0.2", 6379)
    sent = st.sent_by()
    assert sent[st.nodes[0]].startswith(b"*") and b"\r\n$" in sent[st.nodes[0]]
    assert sent[st.nodes[1]][:1] in (b"+", b"-", b":", b"$", b"*")
    assert st.first_flags & 0x02  # the stream starts with the SYN


def test_checker_reports_a_corrupted_stream(tshark_cache: Path | None) -> None:
    """The comparison can fail: one changed byte or one lost byte is a precise mismatch."""
    require_binaries("tshark")
    path = CAPTURES_DIR / "smb445.pcap"
    convs = run_conversations(path)
    ts = read_streams(path, len(convs), tshark_cache)
    assert not compare_file(path, convs, ts).mismatches
    victim = max(convs, key=lambda c: len(c.messages))
    msg = victim.messages[-1]
    msg.data = msg.data[:-1] + bytes([msg.data[-1] ^ 0xFF])
    rep = compare_file(path, convs, ts)
    assert len(rep.mismatches) == 1
    assert f"sender={victim.server.ip}:{victim.server.port}" in rep.mismatches[0] or (
        f"sender={victim.client.ip}:{victim.client.port}" in rep.mismatches[0]
    )
    msg.data = msg.data[:-1]  # a dropped byte at the end: not excused by any category
    assert len(compare_file(path, convs, ts).mismatches) == 1


# Synthetic cases whose difference from tshark is expected, and why (see CATEGORIES).
SYNTHETIC_EXPECTED = {("rst-then-data", "ethernet"): "data-after-rst"}


def test_synthetic_edge_cases_and_encapsulations(
    tmp_path: Path, capsys: pytest.CaptureFixture, tshark_cache: Path | None
) -> None:
    """Reassembly traps and encapsulations the corpus lacks (tests/lab/synth.py), vs tshark."""
    require_binaries("tshark")
    pytest.importorskip("scapy")
    from tests.lab.synth import CASES, write_capture

    def one(case: tuple[str, str]) -> FileReport:
        scenario, encap = case
        path = write_capture(tmp_path / f"{scenario}__{encap}.pcap", scenario, encap)
        convs = run_conversations(path)
        return compare_file(path, convs, read_streams(path, len(convs), tshark_cache))

    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(one, CASES))
    lines, failures = [], []
    for (scenario, encap), rep in zip(CASES, reports, strict=True):
        assert rep.tshark_streams == 1, (
            f"{scenario}/{encap}: tshark sees {rep.tshark_streams} streams"
        )
        failures += rep.mismatches
        verdict = "equal" if rep.compared else ",".join(rep.excluded) or "?"
        lines.append(f"  {scenario:22} {encap:14} {verdict}")
        if rep.mismatches:
            continue
        if encap == "ethernet":
            assert verdict == SYNTHETIC_EXPECTED.get((scenario, encap), "equal"), scenario
        else:
            assert verdict in ("equal", "encapsulation"), f"{scenario}/{encap}: {verdict}"
    with capsys.disabled():
        print("\n[tshark conformance] synthetic cases:\n" + "\n".join(lines))
    assert not failures, "\n".join(failures)


def test_categories_need_evidence() -> None:
    """An explained category only excuses what its evidence covers (no tshark needed)."""
    from types import SimpleNamespace

    from scriptgen.trace import Direction, Message, Outcome
    from tests.lab.conformance import classify_direction
    from tests.lab.tshark import TsharkStream

    server = ("10.0.0.2", 80)
    reset = SimpleNamespace(outcome=Outcome.RESET, midstream=False, messages=[])
    st = TsharkStream(0, after_rst={server: 20})
    theirs = b"A" * 100 + b"B" * 20
    assert classify_direction(b"A" * 100, theirs, reset, st, server) == "data-after-rst"
    assert classify_direction(b"A" * 50, theirs, reset, st, server) == "mismatch"
    assert classify_direction(b"", theirs, reset, st, server) == "mismatch"
    gap = b"[996 bytes missing in capture file]\x00"
    assert classify_direction(b"xy", b"x" + gap + b"y", reset, st, server) == "=gap"
    holes = SimpleNamespace(
        outcome=Outcome.OPEN,
        midstream=True,
        messages=[Message(Direction.CLIENT, b"ab", 0.0, gaps=[(1, 9)])],
    )
    assert classify_direction(b"abcd", b"a" + gap + b"b", holes, st, server) == "unacked-after-hole"
    assert classify_direction(b"abcd", b"zz", holes, st, server) == "mismatch"
