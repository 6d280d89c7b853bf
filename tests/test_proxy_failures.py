"""Proxy failures have defined behaviour (docs/proxy.md): the client's
connection ends promptly, an event names the reason, twistd logs no
traceback, and the emulator keeps serving. Pool hosts are small fake servers
on 127.0.0.2 (tests.proxy_support.FakeHost); the model is the line protocol
of tests.test_emulate_support. Also: kill -9 between recording and learning
loses nothing (the next start learns the recording)."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scriptgen.model import save_machine
from scriptgen.trace import Direction, read_conversations
from tests.emulator_support import TWISTD
from tests.proxy_support import (
    LISTEN,
    Emulator,
    FakeHost,
    start_emulator,
    stop_emulator,
    tracebacks,
)
from tests.test_emulate_support import line_machine

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(TWISTD is None, reason="twistd not installed"),
]


def emulator(tmp: Path, port: int, **proxy: object) -> Emulator:
    models = tmp / "models"
    if not models.exists():
        save_machine(line_machine(port), models)
    return start_emulator(tmp, f"tcp/{port}=0", models=models, **proxy)


def connect(emu: Emulator, source: str = "127.0.0.1") -> socket.socket:
    [port] = emu.ports.values()
    sock = socket.create_connection((LISTEN, port), timeout=5, source_address=(source, 0))
    assert sock.recv(100) == b"220 hello\r\n"  # the emulated banner
    return sock


def ask(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line)
    return sock.recv(1000)


def ended(sock: socket.socket, within: float) -> float:
    """Seconds until the emulator closed the connection (fails after ``within``)."""
    start = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(1000):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def failure(emu: Emulator, reason: str) -> dict:
    found = emu.wait_count("scriptgen.proxy.failed", 1, timeout=10)
    assert [e["reason"] for e in found] == [reason]
    return found[0]


@pytest.fixture
def free_port() -> Iterator[int]:
    with FakeHost() as h:
        port = h.port
    yield port  # nothing listens there now


def test_relay_after_replay(tmp_path: Path) -> None:
    with FakeHost("good") as host:
        emu = emulator(tmp_path, host.port)
        try:
            sock = connect(emu)
            assert ask(sock, b"PING\r\n") == b"+PONG\r\n"  # emulated
            assert ask(sock, b"HELLO there\r\n") == b"200 ok HELLO there\r\n"  # relayed
            assert ask(sock, b"USER x\r\n") == b"331 password?\r\n"  # relayed
            sock.close()
            replayed = emu.wait_count("scriptgen.proxy.replayed", 1)[0]
            assert replayed["turns"] == 2 and replayed["similarity"] == [1.0, 1.0]
            assert host.accepted == 1
            emu.wait_count("scriptgen.proxy.learned", 1, timeout=120)
            [rec] = (emu.spool / "learned").glob("*.pcap")
            [conv] = read_conversations(rec)  # what the client saw; the client closed first
            assert conv.closed_by is Direction.CLIENT
            assert conv.requests == [b"PING\r\n", b"HELLO there\r\n", b"USER x\r\n"]
        finally:
            stop_emulator(emu)
        assert tracebacks(emu) == []


def test_host_refuses(tmp_path: Path, free_port: int) -> None:
    emu = emulator(tmp_path, free_port)
    try:
        sock = connect(emu)
        sock.sendall(b"HELLO\r\n")
        assert ended(sock, 5) < 5
        failure(emu, "host_refused")
        emu.wait_count("scriptgen.proxy.released", 1)
        sock = connect(emu)  # released: the emulator serves this source again
        assert ask(sock, b"PING\r\n") == b"+PONG\r\n"
    finally:
        stop_emulator(emu)
    assert tracebacks(emu) == []


@pytest.mark.parametrize(
    ("mode", "reason", "extra"),
    [
        ("garbage", "answers_differ", {"replay_mismatch": "close"}),
        ("drip", "replay_timeout", {"replay_timeout": 1}),
    ],
)
def test_replay_fails(tmp_path: Path, mode: str, reason: str, extra: dict) -> None:
    with FakeHost(mode) as host:
        emu = emulator(tmp_path, host.port, **extra)
        try:
            sock = connect(emu)
            sock.sendall(b"HELLO\r\n")
            assert ended(sock, 5) < 3
            failure(emu, reason)
        finally:
            stop_emulator(emu)
        assert tracebacks(emu) == []


def test_client_leaves_during_replay(tmp_path: Path) -> None:
    with FakeHost("drip") as host:
        emu = emulator(tmp_path, host.port, replay_timeout=30)
        try:
            sock = connect(emu)
            sock.sendall(b"HELLO\r\n")
            time.sleep(0.3)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # with a reset: the client is gone
            failure(emu, "client_left")
            sock = connect(emu, "127.0.0.3")  # the emulator serves others (this one: the host)
            assert ask(sock, b"PING\r\n") == b"+PONG\r\n"
        finally:
            stop_emulator(emu)
        assert tracebacks(emu) == []


def test_host_dies_mid_relay(tmp_path: Path) -> None:
    with FakeHost("dies") as host:
        emu = emulator(tmp_path, host.port)
        try:
            sock = connect(emu)
            assert ask(sock, b"HELLO\r\n") == b""  # the host closed: so does the client's
            emu.wait_count("scriptgen.proxy.host_closed", 1)
        finally:
            stop_emulator(emu)
        assert tracebacks(emu) == []


def test_pool_exhausted_falls_back_to_the_unmatched_policy(tmp_path: Path) -> None:
    with FakeHost("good") as host:
        emu = emulator(tmp_path, host.port, expiry=30)
        try:
            first = connect(emu, "127.0.0.1")
            assert ask(first, b"HELLO\r\n") == b"200 ok HELLO\r\n"  # the only host is taken
            second = connect(emu, "127.0.0.3")
            second.sendall(b"HELLO\r\n")
            assert ended(second, 5) < 5  # on_unmatched = close
            failure(emu, "pool_exhausted")
            assert ask(first, b"AGAIN\r\n") == b"200 ok AGAIN\r\n"  # the first still relays
        finally:
            stop_emulator(emu)
        assert tracebacks(emu) == []


def test_source_buffer_bound(tmp_path: Path) -> None:
    with FakeHost("good") as host:
        emu = emulator(tmp_path, host.port, source_buffer_bytes=100)
        try:
            sock = connect(emu)
            for _ in range(10):
                assert ask(sock, b"PING\r\n") == b"+PONG\r\n"
            sock.sendall(b"HELLO\r\n")
            assert ended(sock, 5) < 5
            failure(emu, "buffer_overflow")
            assert host.accepted == 0  # nothing was sent to the host
        finally:
            stop_emulator(emu)
        assert tracebacks(emu) == []


def test_kill_9_between_recording_and_learning_loses_nothing(tmp_path: Path) -> None:
    with FakeHost("good") as host:
        emu = emulator(tmp_path, host.port, expiry=600)
        for i in range(3):
            sock = connect(emu)
            assert ask(sock, f"HELLO {i}\r\n".encode()) == f"200 ok HELLO {i}\r\n".encode()
            sock.close()
        emu.wait_count("scriptgen.session.closed", 3)
        stop_emulator(emu, kill=True)
        [part] = emu.spool.glob("*.pcap.part")
        assert len(list(read_conversations(part))) == 3
        # Restarted: the recording left open is recovered and learned.
        learned = emu.count("scriptgen.proxy.learned")
        emu = emulator(tmp_path, host.port, expiry=1)
    loaded = emu.count("scriptgen.model.loaded")
    try:
        report = emu.wait_count("scriptgen.proxy.learned", learned + 1, timeout=120)[-1]
        assert report["files"] == [part.name.removesuffix(".part")]
        assert report["ports"][0]["conversations"] == 3 and report["new_transitions"] >= 1
        assert list((emu.spool / "learned").glob("*.pcap")) and not list(emu.spool.glob("*.pcap*"))
        emu.wait_served(loaded)
        allocated = emu.count("scriptgen.proxy.allocated")
        sock = connect(emu)  # the pool host is gone: the emulator answers alone
        assert ask(sock, b"HELLO 7\r\n").startswith(b"200 ok HELLO ")
        time.sleep(0.3)
        assert emu.count("scriptgen.proxy.allocated") == allocated
    finally:
        stop_emulator(emu)
    assert tracebacks(emu) == []


def test_answers_differ_relay_anyway(tmp_path: Path) -> None:
    """replay_mismatch = relay (the default): the relay goes on, the event says which turn."""
    with FakeHost("garbage") as host:
        emu = emulator(tmp_path, host.port)
        try:
            sock = connect(emu)
            assert ask(sock, b"HELLO\r\n") == b"200 ok HELLO\r\n"
            replayed = emu.wait_count("scriptgen.proxy.replayed", 1)[0]
            assert replayed["differs"] == [0]  # the banner
        finally:
            stop_emulator(emu)
        assert tracebacks(emu) == []


def test_every_open_connection_of_the_source_is_handed_over(tmp_path: Path) -> None:
    """The paper's p open connections: all replayed to the host, then relayed."""
    with FakeHost("good") as host:
        emu = emulator(tmp_path, host.port)
        try:
            a, b = connect(emu), connect(emu)
            assert ask(b, b"USER bob\r\n") == b"331 password?\r\n"  # emulated
            assert ask(a, b"HELLO a\r\n") == b"200 ok HELLO a\r\n"  # a: unmatched, relayed
            assert ask(b, b"HELLO b\r\n") == b"200 ok HELLO b\r\n"  # b was handed over too
            c = connect_raw(emu)  # a new connection of that source: straight to the host
            assert c.recv(100) == b"220 hello\r\n" and ask(c, b"NEW\r\n") == b"200 ok NEW\r\n"
            assert host.accepted == 3
            replayed = emu.wait_count("scriptgen.proxy.replayed", 2)
            assert sorted(e["turns"] for e in replayed) == [1, 2]  # a: banner; b: banner, USER
        finally:
            stop_emulator(emu)
        assert tracebacks(emu) == []


def connect_raw(emu: Emulator) -> socket.socket:
    [port] = emu.ports.values()
    return socket.create_connection((LISTEN, port), timeout=5)
