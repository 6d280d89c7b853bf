"""Helpers shared by the proxy integration tests and benchmarks/proxy_learning.py:
start twistd with the proxy on (pool = a lab server on 127.0.0.2), read its
events, wait for a source's release and the learning that follows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.test_emulate_integration import ROOT, TWISTD

POOL = "127.0.0.2"

CONFIG = """\
[scriptgen]
model_dir = {models}
listen = 127.0.0.1
ports = {ports}
events = {events}
reload_interval = 0
request_settle = 0.1
on_unmatched = close
[proxy]
enabled = true
pool = {pool}
expiry = {expiry}
spool = {spool}
connect_timeout = 2
replay_quiet = 0.3
replay_timeout = 10
learn = {learn}
[limits]
idle_timeout = 10
request_timeout = 2
session_timeout = 60
"""


@dataclass
class Emulator:
    proc: subprocess.Popen[bytes]
    tmp: Path
    events: Path
    models: Path
    spool: Path
    ports: dict[str, int]

    def read_events(self) -> list[dict[str, Any]]:
        if not self.events.exists():
            return []
        out = []
        for line in self.events.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line being written
        return out

    def count(self, eventid: str) -> int:
        return sum(1 for e in self.read_events() if e["eventid"] == eventid)

    def wait_count(self, eventid: str, n: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.read_events() if e["eventid"] == eventid]
            if len(found) >= n:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"twistd exited: {self.log()[-2000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{n} x {eventid} not seen in {timeout}s; log: {self.log()[-1500:]}")

    def log(self) -> str:
        path = self.tmp / "twistd.log"
        return path.read_text(errors="replace") if path.exists() else ""


def start_emulator(
    tmp: Path,
    ports: str,
    *,
    pool: str = POOL,
    expiry: float = 1.0,
    learn: bool = True,
    models: Path | None = None,
) -> Emulator:
    models = models or tmp / "models"
    models.mkdir(parents=True, exist_ok=True)
    events, spool = tmp / "events.json", tmp / "spool"
    config = tmp / "scriptgen.ini"
    config.write_text(
        CONFIG.format(
            models=models,
            ports=ports,
            events=events,
            pool=pool,
            expiry=expiry,
            spool=spool,
            learn=str(learn).lower(),
        )  # fmt: skip
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert TWISTD is not None
    proc = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", f"--logfile={tmp / 'twistd.log'}", "scriptgen",
         "--config", str(config)],
        cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    emu = Emulator(proc, tmp, events, models, spool, {})
    started = emu.wait_count("scriptgen.service.started", 1, timeout=30)[-1]
    emu.ports = started["ports"]
    return emu


def stop_emulator(emu: Emulator, kill: bool = False) -> None:
    if emu.proc.poll() is None:
        emu.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            emu.proc.wait(15)
        except subprocess.TimeoutExpired:
            emu.proc.kill()
            emu.proc.wait()


def tracebacks(emu: Emulator) -> list[str]:
    return [line for line in emu.log().splitlines() if "Traceback" in line]
