"""Recordings: synthesized pcap files read back by scriptgen.trace (and tshark),
crash recovery of a half-written file, spool bookkeeping."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from scriptgen.emulate.recorder import Recording, Spool
from scriptgen.trace import Direction, Outcome, read_conversations


def finished(rec: Recording) -> Path:
    """The pending path of a recording finished inline (a spool whose writer was not started)."""
    box: list = []
    rec.finish().addBoth(box.append)
    [done] = box
    assert isinstance(done, Path), done
    return done


def record(spool: Spool, client: tuple[str, int], big: bytes = b"") -> tuple[Path, Recording]:
    rec = spool.new(client[0], "127.0.0.2")
    t = time.time()
    server = ("::1" if ":" in client[0] else "127.0.0.1", 6379)
    flow = rec.flow(client, server)
    flow.data(False, b"PING\r\n", t + 0.1)
    flow.data(True, b"+PONG\r\n", t + 0.2)
    flow.data(False, b"GET k\r\n" + big, t + 0.3)
    flow.data(True, b"$-1\r\n", t + 0.4)
    flow.close(t + 0.5)
    return rec.path, rec


@pytest.mark.parametrize("client", [("127.0.0.9", 40000), ("::1", 40001)])
def test_recording_reads_back_as_the_client_saw_it(tmp_path: Path, client) -> None:
    spool = Spool(tmp_path)
    _part, rec = record(spool, client, big=b"x" * 100_000)
    done = finished(rec)
    assert spool.pending() == [done]
    [conv] = list(read_conversations(done))
    assert conv.client.ip == client[0] and conv.client.port == client[1]
    assert conv.server.port == 6379
    assert conv.outcome is Outcome.CLOSED
    assert [(m.direction, m.data) for m in conv.messages] == [
        (Direction.CLIENT, b"PING\r\n"),
        (Direction.SERVER, b"+PONG\r\n"),
        (Direction.CLIENT, b"GET k\r\n" + b"x" * 100_000),
        (Direction.SERVER, b"$-1\r\n"),
    ]


def test_a_half_written_file_is_recovered_as_pending(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    part, rec = record(spool, ("127.0.0.9", 40000))
    spool.stop()  # as after kill -9: no finish(), the .part file stays
    with open(part, "ab") as f:
        f.write(b"\x01\x02\x03")  # a torn last record
    spool2 = Spool(tmp_path)
    [done] = spool2.recover()
    assert spool2.pending() == [done] and not part.exists()
    [conv] = list(read_conversations(done))
    assert conv.requests == [b"PING\r\n", b"GET k\r\n"]
    learned = spool2.settle(done, learned=True)
    assert learned.parent.name == "learned" and spool2.pending() == []
    assert "recovered" in (tmp_path / "index.jsonl").read_text()


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_reads_the_recording_without_complaint(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    _part, rec = record(spool, ("127.0.0.9", 40000))
    done = finished(rec)
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(done),
            "-o",
            "tcp.check_checksum:TRUE",
            "-q",
            "-z",
            "follow,tcp,ascii,0",
            "-z",
            "expert,error",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "PING" in out.stdout and "+PONG" in out.stdout
    assert "Bad checksum" not in out.stdout and "Malformed" not in out.stdout
