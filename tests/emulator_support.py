"""The one way tests and benchmarks run the emulator: ``twistd -n scriptgen
--config ...`` as a subprocess in a work directory, wait for its started event,
read its event log, stop it by the PID it started.

Benchmarks import it with the repository root on sys.path (as they import
tests.lab). A failure (twistd exited, an event did not come in time) raises
``EmulatorError``, an AssertionError: a test fails, a benchmark stops.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
TWISTD = shutil.which("twistd")
STARTED = "scriptgen.service.started"


class EmulatorError(AssertionError):
    """The emulator exited early or did not log what was awaited."""


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events logged so far; a line still being written is skipped, not fatal."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL when it does not exit within ``timeout``: never leave it running."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spawn_twistd(workdir: Path, config: Path, root: Path = ROOT) -> subprocess.Popen[bytes]:
    """Start ``twistd -n scriptgen --config CONFIG`` importing scriptgen from ``root``.

    Its log goes to workdir/twistd.log, its stderr to workdir/twistd.stderr (a
    file, not a pipe nobody drains), so a failure can quote both."""
    with (workdir / "twistd.stderr").open("ab") as stderr:
        return subprocess.Popen(
            [TWISTD or "twistd", "-n", "--pidfile=", f"--logfile={workdir / 'twistd.log'}"]
            + ["scriptgen", "--config", str(config)],
            cwd=workdir,
            env={**os.environ, "PYTHONPATH": str(root)},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def run_twistd(workdir: Path, config: Path, root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run twistd to its exit with its log on stdout: for start-ups that must fail."""
    return subprocess.run(
        [TWISTD or "twistd", "-n", "--pidfile=", "scriptgen", "--config", str(config)],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=30,
    )


@dataclass
class Emulator:
    """A running emulator process and its event log."""

    proc: subprocess.Popen[bytes]
    workdir: Path
    events: Path
    started: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        workdir: Path,
        config: str,
        events: Path,
        *,
        config_name: str = "scriptgen.ini",
        root: Path = ROOT,
        timeout: float = 30.0,
        **fields: Any,
    ) -> Self:
        """Write ``config`` (whose event log is ``events``), start twistd and wait for
        its started event; ``fields`` fill a subclass's own fields. A restart in the
        same directory waits for a new started event, not the previous run's."""
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / config_name
        path.write_text(config)
        before = sum(1 for e in read_events(events) if e.get("eventid") == STARTED)
        emu = cls(spawn_twistd(workdir, path, root), workdir, events, **fields)
        try:
            emu.started = emu.wait_count(STARTED, before + 1, timeout)[-1]
        except BaseException:
            emu.stop()
            raise
        return emu

    @property
    def ports(self) -> dict[str, int]:
        """Configured port spec -> bound port number, from the started event."""
        return self.started.get("ports", {})

    def read_events(self) -> list[dict[str, Any]]:
        return read_events(self.events)

    def count(self, eventid: str) -> int:
        return sum(1 for e in self.read_events() if e.get("eventid") == eventid)

    def wait_served(self, loaded_before: int, timeout: float = 60.0) -> None:
        """Wait until models learned online are served: a ``scriptgen.model.loaded``
        beyond ``loaded_before`` (counted before the proxied runs). The reload after
        learning runs in a thread, and the periodic reload may even come first, so
        waiting for something after ``scriptgen.proxy.learned`` could wait forever."""
        self.wait_count("scriptgen.model.loaded", loaded_before + 1, timeout)

    def wait_event(
        self, match: str | Callable[[dict[str, Any]], bool], timeout: float = 20.0
    ) -> dict[str, Any]:
        """The first event with id ``match`` (or for which ``match(event)`` is true)."""
        test = match if callable(match) else (lambda e: e.get("eventid") == match)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.read_events():
                if test(e):
                    return e
            self._check_running()
            time.sleep(0.05)
        raise EmulatorError(f"event {match!r} not seen in {timeout}s; {self.tail()}")

    def wait_count(self, eventid: str, n: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """All events ``eventid`` once there are at least ``n`` of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.read_events() if e.get("eventid") == eventid]
            if len(found) >= n:
                return found
            self._check_running()
            time.sleep(0.05)
        raise EmulatorError(f"{n} x {eventid} not seen in {timeout}s; {self.tail()}")

    def log(self) -> str:
        """twistd's log (all runs in this directory)."""
        path = self.workdir / "twistd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tail(self) -> str:
        """The ends of stderr and the log, to say why it failed."""
        err = self.workdir / "twistd.stderr"
        stderr = err.read_text(errors="replace") if err.exists() else ""
        return f"stderr: {stderr[-1000:]}\nlog: {self.log()[-1500:]}"

    def stop(self, kill: bool = False, timeout: float = 15.0) -> None:
        """SIGTERM (or SIGKILL with ``kill``: no clean shutdown) and wait for it."""
        if kill and self.proc.poll() is None:
            self.proc.kill()
        stop_process(self.proc, timeout)

    def _check_running(self) -> None:
        if self.proc.poll() is not None:
            raise EmulatorError(f"twistd exited ({self.proc.returncode}); {self.tail()}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
