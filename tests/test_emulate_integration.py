"""End to end: ``twistd -n scriptgen --config ...`` as a subprocess on
127.0.0.1 with a hand-built model of a tiny line protocol, driven by real
sockets; hostile clients (random bytes, a large stream, drip feeding, many
idle connections from one source) must not stop it answering others.
Counts and timeouts are scaled down through the config; the full-size
versions are in benchmarks/emulator_speed.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scriptgen.emulate.events import CATALOGUE
from scriptgen.model import save_machine
from tests.emulator_support import TWISTD, Emulator, run_twistd
from tests.test_emulate_support import line_machine

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(TWISTD is None, reason="twistd not installed"),
]

CONFIG = """\
[scriptgen]
model_dir = {models}
listen = 127.0.0.1
ports = tcp/7000=0, udp/5353=0
events = {events}
reload_interval = 0
request_settle = 0.1
on_unmatched = {policy}
[limits]
max_connections = 200
max_connections_per_source = 20
max_buffer_bytes = 65536
idle_timeout = 3
request_timeout = 1
session_timeout = 30
"""


@dataclass(kw_only=True)
class Server(Emulator):
    """The emulator and the model directory it serves, with its bound ports."""

    models: Path
    tcp: int = 0
    udp: int = 0


def start_server(tmp_path: Path, policy: str = "silent") -> Server:
    models = tmp_path / "models"
    save_machine(line_machine(7000), models)
    save_machine(line_machine(5353, "udp"), models)
    events = tmp_path / "events.json"
    config = CONFIG.format(models=models, events=events, policy=policy)
    server = Server.start(tmp_path, config, events, timeout=20, models=models)
    server.tcp = server.ports["tcp/7000=0"]
    server.udp = server.ports["udp/5353=0"]
    return server


def stop_server(server: Server) -> None:
    server.stop(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("emulator"))
    yield s
    stop_server(s)


def connect(server: Server, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", server.tcp))
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def test_line_dialog_with_real_socket(server: Server) -> None:
    with connect(server) as s:
        assert recv_exactly(s, 11) == b"220 hello\r\n"
        s.sendall(b"PING\r\n")
        assert recv_exactly(s, 7) == b"+PONG\r\n"
        s.sendall(b"USER al")
        time.sleep(0.05)
        s.sendall(b"ice\r\nPING\r\n")  # rest of one request plus a whole one
        assert recv_exactly(s, 22) == b"331 password?\r\n+PONG\r\n"
        s.sendall(b"QUIT\r\n")
        assert recv_until_closed(s) == b"221 bye\r\n"


def test_udp_dialog(server: Server) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(5)
        u.sendto(b"USER bob\r\n", ("127.0.0.1", server.udp))
        assert u.recvfrom(1000)[0] == b"331 password?\r\n"
        u.sendto(b"PING\r\n", ("127.0.0.1", server.udp))
        assert u.recvfrom(1000)[0] == b"+PONG\r\n"


def test_random_bytes_then_service_still_answers(server: Server) -> None:
    with connect(server) as s:
        recv_exactly(s, 11)
        s.sendall(os.urandom(5000))
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(100)  # silent policy: no answer
    with connect(server) as s:
        assert recv_exactly(s, 11) == b"220 hello\r\n"


def test_large_stream_is_cut_at_the_buffer_bound(server: Server) -> None:
    with connect(server) as s:
        recv_exactly(s, 11)
        chunk = b"USER " + b"x" * 65531
        try:
            for _ in range(80):  # 5 MB; the full 100 MB run is in the benchmark script
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(5)
        assert recv_until_closed(s) == b""  # closed by the server, not by a timeout here
    assert rss_kib(server.proc.pid) < 300 * 1024
    hit = server.wait_event(
        lambda e: e["eventid"] == "scriptgen.limit.hit" and e["limit"] == "max_buffer_bytes"
    )
    assert hit["value"] == 65536
    with connect(server) as s:
        assert recv_exactly(s, 11) == b"220 hello\r\n"


def test_drip_fed_request_times_out(server: Server) -> None:
    with connect(server) as s:
        recv_exactly(s, 11)
        s.sendall(b"USER ")
        for _ in range(3):
            time.sleep(0.5)
            s.sendall(b"a")
        port = s.getsockname()[1]
    e = server.wait_event(
        lambda e: e["eventid"] == "scriptgen.request.unmatched" and e["src_port"] == port
    )
    assert e["reason"] == "request_timeout" and bytes.fromhex(e["request"]).startswith(b"USER a")


def test_idle_connections_from_one_source_are_limited(server: Server) -> None:
    socks = []
    try:
        for _ in range(40):
            socks.append(connect(server, "127.0.0.1"))
        greeted = refused = 0
        for s in socks:
            s.settimeout(5)
            try:
                data = s.recv(11)
            except ConnectionResetError:
                data = b""
            if data.startswith(b"220"):
                greeted += 1
            else:
                refused += 1
        assert greeted == 20 and refused == 20
        with connect(server, "127.0.0.2") as other:  # another source is still served
            assert recv_exactly(other, 11) == b"220 hello\r\n"
    finally:
        for s in socks:
            s.close()
    server.wait_event(
        lambda e: (
            e["eventid"] == "scriptgen.limit.hit" and e["limit"] == "max_connections_per_source"
        )
    )


def test_idle_connections_from_many_sources_do_not_lock_others_out(server: Server) -> None:
    """300 idle connections from 300 sources against max_connections = 200: once
    they have been quiet for a second, a newcomer evicts the quietest one."""
    socks = []
    try:
        for i in range(300):
            try:
                socks.append(connect(server, f"127.0.{3 + i // 200}.{1 + i % 200}"))
            except OSError:
                pass  # refused at the limit: fine, they are the flood
        time.sleep(1.5)  # < idle_timeout (3 s): the flood is still connected
        with connect(server, "127.0.9.9") as newcomer:
            assert recv_exactly(newcomer, 11) == b"220 hello\r\n"
    finally:
        for s in socks:
            s.close()
    server.wait_event(
        lambda e: e["eventid"] == "scriptgen.session.closed" and e["reason"] == "evicted"
    )


def loaded_count(server: Server, machine: str) -> int:
    return sum(
        1
        for e in server.read_events()
        if e["eventid"] == "scriptgen.model.loaded" and e["machine"] == machine
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_half_closed_client_gets_its_answer(server: Server) -> None:
    """``printf 'PING\\r\\n' | nc``: the request arrives with the client's FIN."""
    with connect(server) as s:
        s.sendall(b"PING\r\n")
        s.shutdown(socket.SHUT_WR)
        assert recv_until_closed(s) == b"220 hello\r\n+PONG\r\n"


def test_idle_timeout_closes_half_open_client(server: Server) -> None:
    with connect(server) as s:
        recv_exactly(s, 11)
        started = time.monotonic()
        s.settimeout(10)
        assert recv_until_closed(s) == b""
        assert 2 < time.monotonic() - started < 8


def test_every_logged_event_is_catalogued(server: Server) -> None:
    contract = {
        "eventid",
        "timestamp",
        "src_ip",
        "src_port",
        "dst_ip",
        "dst_port",
        "protocol",
        "session",
    }
    events = server.read_events()
    assert events
    for e in events:
        assert e["eventid"] in CATALOGUE
        assert contract <= set(e)


def test_sighup_reloads_and_bad_model_keeps_old(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        changed = line_machine(7000)
        changed.states[1].answer = b"+RELOADED\r\n"
        save_machine(changed, server.models)
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while loaded_count(server, "tcp-7000") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert loaded_count(server, "tcp-7000") == 2  # SIGHUP reloads every file
        with connect(server) as s:
            recv_exactly(s, 11)
            s.sendall(b"PING\r\n")
            assert recv_exactly(s, 11) == b"+RELOADED\r\n"
        (server.models / "tcp-7000.json").write_text("{ broken")
        server.proc.send_signal(signal.SIGHUP)
        error = server.wait_event(lambda e: e["eventid"] == "scriptgen.model.error")
        assert "tcp-7000.json" in error["file"] and "invalid JSON" in error["error"]
        with connect(server) as s:
            recv_exactly(s, 11)
            s.sendall(b"PING\r\n")
            assert recv_exactly(s, 11) == b"+RELOADED\r\n"
    finally:
        stop_server(server)


def test_bad_config_stops_startup_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.ini"
    config.write_text("[limits]\nidle_timeout = abc\n")
    proc = run_twistd(tmp_path, config)
    assert proc.returncode == 1
    assert (
        proc.stderr == f"scriptgen: config {config}: [limits] idle_timeout: not a number: 'abc'\n"
    )
    assert "Traceback" not in proc.stdout + proc.stderr


def test_no_port_bound_stops_startup_with_one_line(tmp_path: Path) -> None:
    """Every served port in use: exit 1 with one line, not a process serving nothing."""
    models = tmp_path / "models"
    models.mkdir()
    save_machine(line_machine(7000), models)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "inuse.ini"
        config.write_text(
            f"[scriptgen]\nmodel_dir = {models}\nlisten = 127.0.0.1\n"
            f"ports = tcp/7000={port}\nevents = {tmp_path / 'events.json'}\n"
        )
        proc = run_twistd(tmp_path, config)
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert f"scriptgen: no port could be bound (tcp/7000={port} on 127.0.0.1)" in out
    assert "Traceback" not in out
    assert '"scriptgen.port.error"' in (tmp_path / "events.json").read_text()


def test_python_m_scriptgen_emulate_events_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "scriptgen.emulate.events"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| `scriptgen.session.connect` |" in out.stdout
