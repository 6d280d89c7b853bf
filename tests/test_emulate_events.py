"""The event catalogue matches the code, and the JSON-lines writer survives
unwritable paths, full disks and removed files without blocking or raising."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scriptgen.emulate import events as catalogue_module
from scriptgen.emulate.eventlog import Endpoint, EventLog
from scriptgen.emulate.events import CATALOGUE, markdown_table

EMULATE = Path(catalogue_module.__file__).parent
EMIT_RE = re.compile(r"""(?:\.emit\(|_serialise\([^,]+,)\s*["']([^"']+)["']""")
LIMIT_RE = re.compile(r"""limit_hit\(\s*["']([^"']+)["']""")
ID_RE = re.compile(r"^scriptgen\.[a-z]+\.[a-z_]+$")


def emitted_ids() -> set[str]:
    found = set()
    for path in EMULATE.glob("*.py"):
        for eid in EMIT_RE.findall(path.read_text()):
            found.add(eid)
    return found


def test_limit_names_are_config_keys() -> None:
    from dataclasses import fields

    from scriptgen.emulate.config import Limits

    keys = {f.name for f in fields(Limits)}
    names = {n for p in EMULATE.glob("*.py") for n in LIMIT_RE.findall(p.read_text())}
    assert names and names <= keys


def test_every_emitted_id_is_catalogued_and_every_catalogued_id_is_emitted() -> None:
    emitted = emitted_ids()
    assert emitted - set(CATALOGUE) == set(), "emitted but not in the catalogue"
    assert set(CATALOGUE) - emitted == set(), "catalogued but never emitted"


def test_ids_follow_the_contract_shape() -> None:
    for eid, meaning in CATALOGUE.items():
        assert ID_RE.match(eid), eid
        assert meaning and "\n" not in meaning


def test_unknown_id_is_refused() -> None:
    with pytest.raises(ValueError):
        EventLog(None).emit("scriptgen.nope.nope")


def test_markdown_table_printed_by_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scriptgen.emulate.events"],
        capture_output=True,
        text=True,
        check=True,
    )
    out = proc.stdout
    assert proc.stderr == ""  # no warnings either: the lead pastes this into the README
    assert out == markdown_table()
    assert out.count("\n") == len(CATALOGUE) + 2
    for eid in CATALOGUE:
        assert f"`{eid}`" in out


def test_readme_lists_every_event_id() -> None:
    """The README's event table (pasted from ``python -m scriptgen.emulate.events``) is
    not allowed to fall behind the catalogue."""
    readme = (EMULATE.parents[1] / "README.md").read_text()
    missing = [eid for eid in CATALOGUE if f"`{eid}`" not in readme]
    assert missing == []


WHERE = Endpoint("tcp", "10.0.0.1", 4000, "127.0.0.1", 21, "abc123")


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_events_written_with_contract_fields(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "events.json"
    log = EventLog(path, payload_bytes=4)
    log.start()
    log.emit("scriptgen.request.matched", WHERE, state=0, request=b"\x00\x01\x02\x03\x04\x05")
    log.emit("scriptgen.service.started")
    assert log.flush()
    log.close()
    first, second = read_lines(path)
    assert first["eventid"] == "scriptgen.request.matched"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", first["timestamp"])
    assert (first["src_ip"], first["src_port"], first["dst_ip"], first["dst_port"]) == (
        "10.0.0.1",
        4000,
        "127.0.0.1",
        21,
    )
    assert first["protocol"] == "tcp" and first["session"] == "abc123"
    assert first["request"] == "00010203" and first["request_len"] == 6
    assert first["request_truncated"] is True
    assert second["src_ip"] is None and second["session"] is None


def test_unwritable_path_warns_once_and_counts(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    warnings: list[str] = []
    log = EventLog(blocker / "events.json", warn=warnings.append)
    log.start()
    started = time.monotonic()
    for _ in range(100):
        log.emit("scriptgen.service.started")
    assert time.monotonic() - started < 1.0  # emit never waits for the disk
    assert log.flush()
    log.close()
    assert len(warnings) == 1 and "events.json" in warnings[0]
    assert log.dropped_total == 100


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_disk_full_drops_and_counts() -> None:
    warnings: list[str] = []
    log = EventLog(Path("/dev/full"), warn=warnings.append)
    log.start()
    for _ in range(50):
        log.emit("scriptgen.service.started")
    assert log.flush()
    log.close()
    assert len(warnings) == 1 and "No space" in warnings[0]
    assert log.dropped_total == 50 and log.written == 0


def test_recovery_writes_dropped_count(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.write_text("a file where the directory should be")
    warnings: list[str] = []
    log = EventLog(directory / "events.json", warn=warnings.append)
    log.start()
    for _ in range(7):
        log.emit("scriptgen.service.started")
    assert log.flush()
    directory.unlink()  # the operator fixes it
    time.sleep(1.1)  # the writer retries opening at most once a second
    log.emit("scriptgen.service.stopped")
    assert log.flush()
    log.close()
    lines = read_lines(directory / "events.json")
    assert lines[0]["eventid"] == "scriptgen.log.dropped" and lines[0]["count"] == 7
    assert lines[1]["eventid"] == "scriptgen.service.stopped"
    assert len(warnings) == 2 and "writing again" in warnings[1]


def test_removed_log_file_is_recreated(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    log = EventLog(path)
    log.start()
    log.emit("scriptgen.service.started")
    assert log.flush()
    path.unlink()
    time.sleep(1.1)
    log.emit("scriptgen.service.stopped")
    assert log.flush()
    log.close()
    assert [e["eventid"] for e in read_lines(path)] == ["scriptgen.service.stopped"]


def test_full_queue_drops_without_blocking(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.json", queue_size=5)  # writer not started: the queue fills
    for _ in range(20):
        log.emit("scriptgen.service.started")
    assert log.dropped_total == 15
    log.start()
    assert log.flush()
    log.close()
    lines = read_lines(tmp_path / "e.json")
    assert lines[0]["eventid"] == "scriptgen.log.dropped" and lines[0]["count"] == 15
    assert len(lines) == 1 + 5  # the dropped note plus the five queued events


def test_unserialisable_field_is_dropped_not_raised(tmp_path: Path) -> None:
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    warnings: list[str] = []
    log = EventLog(tmp_path / "e.json", warn=warnings.append)
    log.start()
    log.emit("scriptgen.service.started", weird=Hostile())
    log.emit("scriptgen.service.stopped")
    assert log.flush()
    log.close()
    lines = read_lines(tmp_path / "e.json")
    assert [e["eventid"] for e in lines] == ["scriptgen.log.dropped", "scriptgen.service.stopped"]
    assert lines[0]["count"] == 1 and len(warnings) == 1


def test_queue_is_bounded_in_bytes_too(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.json", queue_size=1000, queue_bytes=20000, payload_bytes=4096)
    for _ in range(20):  # not started: nothing drains; each event carries ~8 kB of hex
        log.emit("scriptgen.request.unmatched", WHERE, request=b"\xaa" * 4096)
    assert 0 < log.dropped_total < 20
    queued = 20 - log.dropped_total
    assert queued * 8192 <= 20000 + 9000  # at most one event beyond the bound
    log.start()
    assert log.flush()
    log.close()
    lines = read_lines(tmp_path / "e.json")
    assert lines[0]["eventid"] == "scriptgen.log.dropped" and lines[0]["count"] == log.dropped_total
