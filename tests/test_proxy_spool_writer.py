"""The spool's writer thread: the reactor side never touches a file, a full
queue ends the recording cleanly (never blocks, never grows), a recording is
pending and learned only after the writer has written, fsynced and renamed
it, and a stop writes everything queued.

The "reactor" here is the test's main thread: ``Reactor`` runs what the
writer hands back through ``call_from_thread``. The disk is ``SlowDisk``, a
file opener whose files note the thread of every call and hold every write
until the test opens the gate, so a reactor-side call that waited for the
disk would take the gate's whole timeout."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock

from scriptgen.emulate.config import ProxyConfig
from scriptgen.emulate.proxy import Proxy
from scriptgen.emulate.recorder import Spool
from scriptgen.trace import Direction, read_conversations
from tests.test_proxy_unit import FakeProto, FakeTransport, machine

GATE_TIMEOUT = 10.0  # what a blocked reactor-side call would cost
PROMPT = 0.5  # a reactor-side call must return well within this
CLIENT, SERVER = ("127.0.0.9", 40000), ("127.0.0.1", 6379)


class SlowDisk:
    """An opener for the spool: real files, every call noted with its thread, writes gated."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.threads: list[str] = []
        self.lock = threading.Lock()

    def note(self) -> None:
        with self.lock:
            self.threads.append(threading.current_thread().name)

    def __call__(self, path: Path, mode: str) -> Any:
        self.note()
        return _Watched(open(path, mode), self)  # noqa: SIM115 -- closed by the writer


class _Watched:
    def __init__(self, f: Any, disk: SlowDisk) -> None:
        self.f, self.disk = f, disk

    def write(self, data: bytes) -> int:
        self.disk.note()
        assert self.disk.gate.wait(GATE_TIMEOUT), "the test never opened the gate"
        return self.f.write(data)

    def flush(self) -> None:
        self.disk.note()
        self.f.flush()

    def fileno(self) -> int:
        self.disk.note()
        return self.f.fileno()

    def close(self) -> None:
        self.disk.note()
        self.f.close()

    def __enter__(self) -> _Watched:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Reactor:
    """Runs, on the test's thread, what the writer thread hands back."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Any, tuple[Any, ...]]] = queue.Queue()

    def call_from_thread(self, f: Any, *args: Any) -> None:
        self.calls.put((f, args))

    def run_until(self, done: Any, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while not done():
            f, args = self.calls.get(timeout=max(0.01, end - time.monotonic()))
            f(*args)


def result_of(d: Any, reactor: Reactor) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    reactor.run_until(lambda: box)
    return box[0]


def started(tmp_path: Path, **kw: Any) -> tuple[Spool, SlowDisk, Reactor]:
    disk, reactor = SlowDisk(), Reactor()
    spool = Spool(tmp_path, opener=disk, **kw)
    spool.start(reactor.call_from_thread)
    return spool, disk, reactor


def test_reactor_side_returns_at_once_and_only_the_writer_thread_touches_files(
    tmp_path: Path,
) -> None:
    spool, disk, reactor = started(tmp_path)
    t = time.time()
    begin = time.perf_counter()
    rec = spool.new(CLIENT[0], "127.0.0.2")
    flow = rec.flow(CLIENT, SERVER)
    flow.data(False, b"PING\r\n", t)
    flow.data(True, b"+PONG\r\n" * 10_000, t + 0.1)
    flow.close(t + 0.2)
    d = rec.finish()
    spent = time.perf_counter() - begin
    assert spent < PROMPT, f"reactor-side calls took {spent:.3f} s with the disk stuck"
    time.sleep(0.1)  # the writer is stuck in its first write
    assert not d.called and not rec.done_path().exists()  # not pending before it is written
    assert disk.threads and "MainThread" not in disk.threads
    disk.gate.set()
    done = result_of(d, reactor)
    assert done == rec.done_path() and done.exists() and not rec.path.exists()
    assert spool.pending() == [done]
    [conv] = list(read_conversations(done))
    assert [(m.direction, m.data) for m in conv.messages] == [
        (Direction.CLIENT, b"PING\r\n"),
        (Direction.SERVER, b"+PONG\r\n" * 10_000),
    ]
    assert spool.disk.flush()
    learned = spool.settle(done, learned=True)
    assert spool.disk.flush() and learned.exists() and spool.pending() == []
    assert set(disk.threads) == {"scriptgen-spool"}  # pcap and index.jsonl alike
    steps = [line.split('"what": "')[1].split('"')[0] for line in
             (tmp_path / "index.jsonl").read_text().splitlines()]  # fmt: skip
    assert steps == ["recording", "pending", "learned"]
    result_of(spool.stop(), reactor)


def test_a_full_queue_ends_the_recording_cleanly_without_blocking(tmp_path: Path) -> None:
    bound = 64 * 1024
    spool, disk, reactor = started(tmp_path, queue_bytes=bound)
    rec = spool.new(CLIENT[0], "127.0.0.2")
    flow = rec.flow(CLIENT, SERVER)
    t = time.time()
    sent = b"".join(bytes([65 + i % 26]) * 10_000 for i in range(50))  # 500 kB, bound 64 KiB
    begin = time.perf_counter()
    for i in range(50):
        flow.data(False, sent[i * 10_000 : (i + 1) * 10_000], t + i * 0.001)
        assert spool.disk.queued <= bound  # never grows past its bound
    spent = time.perf_counter() - begin
    assert spent < PROMPT, f"writing into a full queue took {spent:.3f} s"
    assert rec.incomplete and rec.dropped > 0 and spool.disk.dropped > 0
    assert not rec.room(1)  # the proxy records nothing more for this source
    flow.data(True, b"late answer\r\n", t + 1)  # refused too: the file stays a clean prefix
    flow.close(t + 2)
    d = rec.finish()
    disk.gate.set()
    done = result_of(d, reactor)
    [conv] = list(read_conversations(done))
    assert [m.direction for m in conv.messages] == [Direction.CLIENT]
    got = conv.messages[0].data
    assert 0 < len(got) <= bound and len(got) % 10_000 == 0  # whole packets, then nothing
    assert sent.startswith(got)
    result_of(spool.stop(), reactor)


def test_stop_writes_everything_queued_and_leaves_open_recordings_recoverable(
    tmp_path: Path,
) -> None:
    spool, disk, reactor = started(tmp_path)
    rec = spool.new(CLIENT[0], "127.0.0.2")
    flow = rec.flow(CLIENT, SERVER)
    t = time.time()
    for i in range(100):
        flow.data(False, b"REQ %d\r\n" % i, t + i * 0.01)
        flow.data(True, b"ANS %d\r\n" % i, t + i * 0.01 + 0.005)
    stopped = spool.stop()  # nothing written yet: the disk is stuck
    assert not stopped.called and spool.disk.queued > 0
    disk.gate.set()
    result_of(stopped, reactor)
    assert spool.disk.queued == 0 and rec.path.exists()  # not finished: stays .part
    [done] = Spool(tmp_path).recover()
    [conv] = list(read_conversations(done))
    assert conv.requests == [b"REQ %d\r\n" % i for i in range(100)]


def relaying_proxy(
    spool: Spool, tmp_path: Path
) -> tuple[Proxy, Any, list[tuple[str, dict]], list[Path], Clock]:
    """A proxy (fakes, no sockets) whose one source relays through a fake host connection."""
    events: list[tuple[str, dict]] = []
    learned: list[Path] = []
    clock = Clock()
    config = ProxyConfig(enabled=True, pool=("127.0.0.9",), spool=tmp_path, expiry=10)
    proxy = Proxy(
        config,
        lambda eid, where=None, **f: events.append((eid, f)),
        clock,
        lambda host, port, factory, timeout: None,
        spool,
        learned.extend,
    )
    tap = proxy.attach(FakeProto(machine(), "127.0.0.5", 4000))
    assert proxy.take_over(tap, b"HELLO\r\n")
    tap.connected(type("Upstream", (), {"transport": FakeTransport()})())  # relaying at once
    return proxy, tap, events, learned, clock


def test_the_proxy_learns_a_recording_only_after_the_writer_renamed_it(tmp_path: Path) -> None:
    spool, disk, reactor = started(tmp_path)
    proxy, tap, events, learned, clock = relaying_proxy(spool, tmp_path)
    tap.from_host(b"200 ok HELLO\r\n")
    clock.advance(11)  # expiry: released
    assert proxy.pool.free == ["127.0.0.9"]  # the host is free at once
    time.sleep(0.1)
    assert learned == [] and not spool.pending()  # the writer has not written it yet
    assert "scriptgen.proxy.released" not in [e for e, _ in events]
    disk.gate.set()
    reactor.run_until(lambda: learned)
    [path] = learned
    assert path.exists() and spool.pending() == [path]
    [released] = [f for e, f in events if e == "scriptgen.proxy.released"]
    assert released["recording"] == path.name and released["incomplete"] is False
    assert released["dropped_bytes"] == 0
    [conv] = list(read_conversations(path))
    assert conv.requests == [b"HELLO\r\n"]
    result_of(spool.stop(), reactor)


def test_the_proxy_relays_on_when_the_queue_is_full_and_says_so(tmp_path: Path) -> None:
    spool, disk, reactor = started(tmp_path, queue_bytes=64 * 1024)
    proxy, tap, events, learned, clock = relaying_proxy(spool, tmp_path)
    answer = b"x" * 10_000
    begin = time.perf_counter()
    for _ in range(20):  # 200 kB for a stuck disk and a 64 KiB queue
        tap.from_host(answer)
    assert time.perf_counter() - begin < PROMPT
    assert tap.proto.transport.written == answer * 20  # the client got everything
    clock.advance(11)
    disk.gate.set()
    reactor.run_until(lambda: learned)  # what was recorded is real: learned like a truncated one
    [released] = [f for e, f in events if e == "scriptgen.proxy.released"]
    assert released["incomplete"] is True and released["dropped_bytes"] >= 10 * 10_000
    [conv] = list(read_conversations(learned[0]))
    got = b"".join(m.data for m in conv.messages if m.direction is Direction.SERVER)
    assert conv.requests == [b"HELLO\r\n"] and answer * 20 != got and (answer * 20).startswith(got)
    result_of(spool.stop(), reactor)
