"""Helpers shared by the proxy integration tests and benchmarks/proxy_learning.py:
start twistd with the proxy on (pool = a lab server on 127.0.0.2), read its
events, wait for a source's release and the learning that follows."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import emulator_support

# The pool host's and the emulator's addresses; the environment can move them
# (several people run these tests on one machine).
POOL = os.environ.get("SCRIPTGEN_PROXY_POOL", "127.0.0.2")
LISTEN = os.environ.get("SCRIPTGEN_PROXY_LISTEN", "127.0.0.1")

CONFIG = """\
[scriptgen]
model_dir = {models}
listen = {listen}
ports = {ports}
events = {events}
reload_interval = 0
request_settle = 0.1
on_unmatched = close
[proxy]
{proxy}
[limits]
idle_timeout = 10
request_timeout = 2
session_timeout = 60
"""


@dataclass(kw_only=True)
class Emulator(emulator_support.Emulator):
    """The emulator with its model directory and the proxy's spool."""

    models: Path
    spool: Path


def start_emulator(
    tmp: Path,
    ports: str,
    *,
    pool: str = POOL,
    expiry: float = 1.0,
    learn: bool = True,
    models: Path | None = None,
    listen: str = LISTEN,
    scriptgen: dict[str, Any] | None = None,
    **proxy: Any,
) -> Emulator:
    """twistd with the proxy on, listening on ``listen``; ``proxy`` overrides [proxy]
    keys, ``scriptgen`` adds [scriptgen] keys."""
    models = models or tmp / "models"
    models.mkdir(parents=True, exist_ok=True)
    events, spool = tmp / "events.json", tmp / "spool"
    keys = {
        "enabled": "true", "pool": pool, "expiry": expiry, "spool": spool,
        "connect_timeout": 2, "replay_quiet": 0.3, "replay_timeout": 10,
        "learn": str(learn).lower(), **proxy,
    }  # fmt: skip
    section = "\n".join(f"{k} = {v}" for k, v in keys.items())
    config = CONFIG.format(models=models, ports=ports, events=events, proxy=section, listen=listen)
    if scriptgen:
        extra = "".join(f"{k} = {v}\n" for k, v in scriptgen.items())
        config = config.replace("[proxy]\n", extra + "[proxy]\n", 1)
    return Emulator.start(tmp, config, events, models=models, spool=spool)


def assert_emulated_alone(emu: Emulator, mark: int) -> None:
    """Since event ``mark`` no request was unmatched: the only allocations are of
    doubted requests ([proxy] doubt_samples), and with the real server stopped
    each of them fell back to the emulator's answer."""
    events = emu.read_events()[mark:]
    allocated = [e for e in events if e["eventid"] == "scriptgen.proxy.allocated"]
    assert all("doubt" in e for e in allocated), allocated
    fallbacks = [e for e in events if e.get("fallback") == "emulated"]
    assert len(fallbacks) == len(allocated)
    assert not [e for e in events if e["eventid"] == "scriptgen.proxy.relaying"]


def stop_emulator(emu: Emulator, kill: bool = False) -> None:
    emu.stop(kill)


def tracebacks(emu: Emulator) -> list[str]:
    return [line for line in emu.log().splitlines() if "Traceback" in line]


class FakeHost:
    """A pool host on 127.0.0.2 speaking the line protocol of ``line_machine``.

    ``mode``: "good" (banner, PING, USER, anything else ``200 ok <line>``),
    "garbage" (a banner unlike the emulated one), "drip" (a byte every 5 ms,
    forever), "dies" (good, but closes without answering an unknown line).
    """

    def __init__(self, mode: str = "good", addr: str = POOL, port: int = 0) -> None:
        import socket
        import threading

        self.mode = mode
        self.sock = socket.create_server((addr, port))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import threading

        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: Any) -> None:
        conn.settimeout(10)
        try:
            with conn:
                if self.mode == "drip":
                    while not self.stopped.wait(0.005):
                        conn.sendall(b".")
                    return
                conn.sendall(
                    b"\x00\x01\x02\x03\x04\xfe\xff" if self.mode == "garbage" else b"220 hello\r\n"
                )
                buf = b""
                while not self.stopped.is_set():
                    data = conn.recv(4096)
                    if not data:
                        return
                    buf += data
                    while b"\r\n" in buf:
                        line, buf = buf.split(b"\r\n", 1)
                        if line == b"PING":
                            conn.sendall(b"+PONG\r\n")
                        elif line.startswith(b"USER "):
                            conn.sendall(b"331 password?\r\n")
                        elif self.mode == "dies":
                            return
                        else:
                            conn.sendall(b"200 ok " + line + b"\r\n")
        except OSError:
            pass

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        self.thread.join(2)

    def __enter__(self) -> FakeHost:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
