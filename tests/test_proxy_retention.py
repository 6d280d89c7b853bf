"""The spool's learned/ directory is bounded ([proxy] keep_learned_bytes and
keep_learned_files): after each learned batch the oldest recordings go, except
those the relearning history still reads. Unit tests use the real Spool
(writer inline or on its thread) and OnlineLearner with a stand-in trainer; the
integration test drives twistd with a real client and a fake pool host."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from scriptgen.emulate.config import ProxyConfig
from scriptgen.emulate.online import HISTORY, RELEARN_DIR, OnlineLearner
from scriptgen.emulate.proxy import Proxy
from scriptgen.emulate.recorder import Spool


def _name(i: int) -> str:
    return f"20260101T0000{i:02d}-127_0_6_5-abc{i:03d}.pcap"  # as Spool.new names them


def _learned(spool: Spool, count: int, size: int = 1000) -> list[str]:
    names = [_name(i) for i in range(count)]
    for n in names:
        (spool.root / "learned" / n).write_bytes(b"x" * size)
    return names


def _left(spool: Spool) -> list[str]:
    return sorted(p.name for p in (spool.root / "learned").glob("*.pcap"))


def _index(spool: Spool, what: str) -> list[dict]:
    lines = (spool.root / "index.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["what"] == what]


def test_files_beyond_the_count_bound_go_oldest_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    names = _learned(spool, 6)
    spool.prune()  # no bounds set: nothing happens
    assert _left(spool) == names
    spool.retain(10**9, 3)
    spool.prune()
    assert _left(spool) == names[3:]
    assert [e["file"] for e in _index(spool, "pruned")] == names[:3]


def test_bytes_beyond_the_size_bound_go_oldest_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    names = _learned(spool, 6, size=1000)
    spool.retain(2500, 100)
    spool.prune()
    assert _left(spool) == names[4:]  # 2000 bytes <= 2500
    spool.retain(0, 100)  # 0: keep none
    spool.prune()
    assert _left(spool) == []


def test_spared_recordings_stay_and_count(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    names = _learned(spool, 6)
    spool.retain(10**9, 3)
    spool.prune(lambda: {names[0]})
    assert _left(spool) == [names[0], *names[4:]]


def test_pruning_runs_on_the_writer_thread_after_the_moves_queued_before(tmp_path: Path) -> None:
    import threading

    spool = Spool(tmp_path)
    names = _learned(spool, 3)
    threads: list[str] = []
    spool.disk.start(lambda f, *a: f(*a))
    try:
        pending = tmp_path / _name(50)
        pending.write_bytes(b"y" * 10)
        spool.retain(10**9, 2)
        spool.settle(pending, learned=True)
        spool.prune(lambda: threads.append(threading.current_thread().name) or set())
        assert spool.disk.flush()
    finally:
        spool.stop()
    assert threads == ["scriptgen-spool"]
    assert _left(spool) == [names[2], pending.name]  # the moved file counted, and stays


def _worker(model_dir: str, files: list[str]) -> dict[str, Any]:
    return {"new": [], "ports": []}


def _learner(spool: Spool, relearn_bytes: int = 0) -> OnlineLearner:
    return OnlineLearner(
        spool.root,
        spool,
        lambda eventid, **kw: None,
        lambda f, *a: defer.maybeDeferred(f, *a),
        lambda: None,
        worker=_worker,
        relearn_bytes=relearn_bytes,
    )


def test_each_learned_batch_is_followed_by_pruning(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.retain(10**9, 4)
    names = _learned(spool, 4)
    batch = []
    for i in (10, 11):
        (tmp_path / _name(i)).write_bytes(b"z")
        batch.append(tmp_path / _name(i))
    _learner(spool).submit(batch)
    assert _left(spool) == [*names[2:], _name(10), _name(11)]


def test_recordings_the_relearning_history_reads_are_kept(tmp_path: Path) -> None:
    """Pruning a recording of the history would make the next relearning batch
    start a new base (what the models know is kept, the dialogs it compares
    are not): those stay, past the bound if need be."""
    spool = Spool(tmp_path)
    spool.retain(10**9, 2)
    names = _learned(spool, 4)
    base = tmp_path / RELEARN_DIR
    base.mkdir()
    # As relearning leaves it: two older recordings and the batch just learned.
    history = {"recordings": [*names[:2], _name(10)], "written": {}}
    (base / HISTORY).write_text(json.dumps(history))
    (tmp_path / _name(10)).write_bytes(b"z")
    _learner(spool, relearn_bytes=1 << 20).submit([tmp_path / _name(10)])
    assert _left(spool) == [*names[:2], _name(10)]
    _learner(spool, relearn_bytes=0).submit([])  # nothing learned: nothing pruned
    assert _left(spool) == [*names[:2], _name(10)]


def test_the_proxy_section_sets_the_bounds(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    config = ProxyConfig(enabled=True, pool=("127.0.6.2",), spool=tmp_path,
                         keep_learned_bytes=12345, keep_learned_files=7)  # fmt: skip
    Proxy(config, lambda *a, **k: None, Clock(), lambda *a: None, spool, lambda p: None)
    assert (spool.keep_bytes, spool.keep_files) == (12345, 7)
    defaults = ProxyConfig()
    assert (defaults.keep_learned_bytes, defaults.keep_learned_files) == (256 << 20, 10000)


def _files_learned(emu: Any) -> int:
    return sum(
        len(e["files"]) for e in emu.read_events() if e["eventid"] == "scriptgen.proxy.learned"
    )


@pytest.mark.integration
def test_learned_directory_stays_bounded_with_a_real_client(tmp_path: Path) -> None:
    """Three sources proxied to a fake pool host one after another, each learned
    by the real trainer: with keep_learned_files = 1 one recording is left."""
    from scriptgen.model import save_machine
    from tests.emulator_support import TWISTD
    from tests.proxy_support import FakeHost, start_emulator, tracebacks
    from tests.test_emulate_support import line_machine

    if TWISTD is None:
        pytest.skip("twistd not installed")
    listen, pool = "127.0.6.1", "127.0.6.3"
    with FakeHost("good", addr=pool) as host:
        models = tmp_path / "models"
        save_machine(line_machine(host.port), models)
        emu = start_emulator(
            tmp_path, f"tcp/{host.port}=0", pool=pool, listen=listen, models=models,
            expiry=0.3, keep_learned_files=1, relearn_bytes=0,
        )  # fmt: skip
        try:
            [port] = emu.ports.values()
            for i, source in enumerate(("127.0.6.5", "127.0.6.6", "127.0.6.7")):
                with socket.create_connection((listen, port), 5, (source, 0)) as sock:
                    assert sock.recv(100) == b"220 hello\r\n"
                    sock.sendall(b"HELLO %d\r\n" % i)
                    assert sock.recv(100) == b"200 ok HELLO %d\r\n" % i  # relayed
                emu.wait_count("scriptgen.proxy.released", i + 1, timeout=20)
            deadline = time.monotonic() + 120
            while _files_learned(emu) < 3:  # batches may hold one recording or more
                assert time.monotonic() < deadline, "not learned"
                time.sleep(0.2)
        finally:
            emu.stop(timeout=10)
        assert tracebacks(emu) == []
    spool = tmp_path / "spool"
    left = sorted(p.name for p in (spool / "learned").glob("*.pcap"))
    pruned = [json.loads(line) for line in (spool / "index.jsonl").read_text().splitlines()]
    pruned = [e["file"] for e in pruned if e["what"] == "pruned"]
    assert len(left) == 1 and len(pruned) == 2 and left[0] > max(pruned)  # the newest stays
