"""Start and stop one real daemon in the foreground, with its config in a temp dir.

Why a base class: every lab server needs the same life cycle (render a
committed template, start in the foreground in its own process group, wait
until the port accepts, and on exit kill everything it started, including
helpers that a daemon re-parents to PID 1).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from string import Template
from types import TracebackType

CONF_DIR = Path(__file__).resolve().parent / "conf"
DEFAULT_ADDR = "127.0.0.2"


class LabError(RuntimeError):
    """A lab daemon could not be set up or did not come up."""


def render_template(name: str, values: dict[str, object]) -> str:
    """Fill a committed template from tests/lab/conf/ (``$name`` placeholders)."""
    text = (CONF_DIR / name).read_text()
    return Template(text).substitute({k: str(v) for k, v in values.items()})


def require_loopback(addr: str) -> None:
    """Refuse any address outside 127.0.0.0/8: the lab must never listen elsewhere."""
    if not addr.startswith("127."):
        raise LabError(f"lab servers bind only to 127.x addresses, not {addr!r}")


def wait_tcp(addr: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll until (addr, port) accepts a TCP connection or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise LabError(
                f"process exited with status {proc.returncode} before {addr}:{port} accepted"
            )
        try:
            with socket.create_connection((addr, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise LabError(f"{addr}:{port} did not accept within {timeout}s") from None
            time.sleep(0.05)


def _accepts(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=0.5):
            return True
    except OSError:
        return False


def _pids_matching(needle: str, pgid: int | None) -> list[int]:
    """Processes whose command line mentions ``needle`` or whose group is ``pgid``."""
    found: list[int] = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            in_group = pgid is not None and os.getpgid(pid) == pgid
        except (OSError, ProcessLookupError):
            continue
        if in_group or needle.encode() in cmdline:
            found.append(pid)
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class Daemon:
    """Base of the lab servers: a temp dir, one foreground process, clean stop.

    Subclasses implement :meth:`prepare` (write config, files) and
    :meth:`command`, and may override :meth:`wait_ready`.
    """

    name = "daemon"
    start_timeout = 20.0

    def __init__(self, addr: str = DEFAULT_ADDR, port: int = 0) -> None:
        require_loopback(addr)
        self.addr = addr
        self.port = port
        self.tmp: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._log = None

    # -- to override -------------------------------------------------------
    def prepare(self, tmp: Path) -> None:
        """Write configuration and content into ``tmp``."""

    def command(self, tmp: Path) -> list[str]:
        raise NotImplementedError

    def wait_ready(self) -> None:
        wait_tcp(self.addr, self.port, self.start_timeout, self.proc)

    def ports_in_use(self) -> list[int]:
        """TCP ports this server needs; they must be free before it starts."""
        return [self.port] if self.port else []

    # -- life cycle --------------------------------------------------------
    def start(self) -> Daemon:
        binary = self.command(Path("/nonexistent"))[0]
        if shutil.which(binary) is None:
            raise LabError(f"{binary} is not installed")
        busy = [p for p in self.ports_in_use() if _accepts(self.addr, p)]
        if busy:
            # Otherwise wait_ready() would happily talk to someone else's server.
            raise LabError(f"{self.name}: {self.addr} port(s) {busy} already in use")
        self.tmp = Path(tempfile.mkdtemp(prefix=f"sglab-{self.name}-"))
        self.tmp.chmod(0o755)  # daemons drop privileges and must still read it
        try:
            self.prepare(self.tmp)
            self._log = open(self.tmp / "daemon.out", "wb")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(
                self.command(self.tmp),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() kills the whole tree
                cwd=self.tmp,
            )
            self.wait_ready()
            time.sleep(0.05)
            if self.proc.poll() is not None:
                raise LabError(f"exited with status {self.proc.returncode} right after start")
        except BaseException as exc:
            tail = self.output_tail()
            self.stop()
            if isinstance(exc, LabError) and tail:
                raise LabError(f"{self.name}: {exc}\n--- output ---\n{tail}") from None
            raise
        return self

    def output_tail(self, limit: int = 2000) -> str:
        """The end of the daemon's stdout/stderr, for error messages."""
        if self.tmp is None or not (self.tmp / "daemon.out").exists():
            return ""
        return (self.tmp / "daemon.out").read_bytes()[-limit:].decode(errors="replace")

    def stop(self) -> None:
        """Kill the process group, then any straggler whose command line names our temp dir."""
        pgid = self.proc.pid if self.proc is not None else None
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if self.tmp is not None:
            self._reap_stragglers(str(self.tmp), pgid)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        self.proc = None

    def _reap_stragglers(self, needle: str, pgid: int | None) -> None:
        pids = _pids_matching(needle, pgid)
        _signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _is_zombie(p)]
        _signal_all(pids, signal.SIGKILL)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"
