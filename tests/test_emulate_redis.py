"""Train on the committed redis capture with ``scriptgen train``, serve the
model with twistd, and talk to it: replay each captured single-request
conversation and compare with what the real redis-server answered; then run
the real client (redis-cli) against the emulator and against a stub that
plays back the captured answer, and compare what redis-cli prints."""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from tests.emulator_support import ROOT, TWISTD
from tests.test_emulate_integration import Server, connect, stop_server

CAPTURES = ROOT / "tests" / "data" / "captures"
REDIS_CLI = shutil.which("redis-cli")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(TWISTD is None, reason="twistd not installed"),
    pytest.mark.skipif(not (CAPTURES / "redis.pcap").exists(), reason="no redis capture"),
]

CONFIG = """\
[scriptgen]
model_dir = {models}
ports = tcp/6379=0
events = {events}
reload_interval = 0
on_unmatched = close
[limits]
idle_timeout = 5
request_timeout = 1
"""


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("redis")
    models = tmp / "models"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    train = subprocess.run(
        ["scriptgen", "train", "--model-dir", str(models), str(CAPTURES / "redis.pcap")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    if train.returncode != 0 or not (models / "tcp-6379.json").exists():
        pytest.fail(f"scriptgen train failed: {train.stderr.strip()[-500:]}")
    events = tmp / "events.json"
    config = CONFIG.format(models=models, events=events)
    server = Server.start(tmp, config, events, models=models)
    server.tcp = server.ports["tcp/6379=0"]
    yield server
    stop_server(server)


def single_request_dialogs() -> list[tuple[int, bytes, bytes]]:
    from scriptgen.trace import Direction, read_conversations

    found = []
    for i, conv in enumerate(read_conversations(CAPTURES / "redis.pcap")):
        msgs = conv.messages
        if (
            len(msgs) == 2
            and msgs[0].direction is Direction.CLIENT
            and msgs[1].direction is Direction.SERVER
        ):
            found.append((i, msgs[0].data, msgs[1].data))
    return found


def ask(server: Server, request: bytes) -> bytes:
    with connect(server) as s:
        s.settimeout(2)
        s.sendall(request)
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                s.settimeout(0.3)  # whole answer arrives at once on loopback
        except (TimeoutError, ConnectionResetError):
            pass
        return data


def test_replayed_requests_get_the_real_answers(redis: Server) -> None:
    dialogs = single_request_dialogs()
    assert len(dialogs) >= 20
    same = sum(1 for _i, req, real in dialogs if ask(redis, req) == real)
    rate = same / len(dialogs)
    print(f"redis replay: {same}/{len(dialogs)} answers byte-identical ({rate:.0%})")
    assert rate >= 0.5


class PlaybackStub:
    """Accepts one connection, waits for a request, answers ``answer`` and closes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(65536)
                conn.sendall(self.answer)
            except OSError:
                pass
        self.sock.close()


def redis_cli(port: int, args: list[str]) -> str:
    try:
        out = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except subprocess.TimeoutExpired:
        return "<timeout>"
    return out.stdout


@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli not installed")
def test_redis_cli_prints_what_the_real_server_made_it_print(redis: Server) -> None:
    runs = [json.loads(line) for line in (CAPTURES / "redis.runs.jsonl").read_text().splitlines()]
    dialogs = {i: real for i, _req, real in single_request_dialogs()}
    compared = same = 0
    for i, run in enumerate(runs):
        text = run["run"]
        if i not in dialogs or "repeat" in text or not text.startswith("redis_cli(commands="):
            continue
        commands = ast.literal_eval(text[len("redis_cli(commands=") : -1])
        if len(commands) != 1:
            continue
        stub = PlaybackStub(dialogs[i])
        expected = redis_cli(stub.port, commands[0])
        got = redis_cli(redis.tcp, commands[0])
        compared += 1
        same += got == expected
    print(f"redis-cli: {same}/{compared} outputs identical to the real server's")
    assert compared >= 20 and same / compared >= 0.5
