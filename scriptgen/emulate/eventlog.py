"""The JSON-lines event log, written from a bounded queue by one writer thread.

Why a thread: a slow or failing disk must never stall the reactor, so
``emit`` only appends to a bounded queue (dropping and counting when full)
and a daemon thread serialises and writes. Why no exceptions escape: a
honeypot that dies because its log disk filled up is a honeypot an attacker
can switch off. On any write or open failure the writer warns once, drops
and counts events, retries opening at most once a second, and when writing
works again first writes a ``scriptgen.log.dropped`` event with the count.
A log file removed or rotated under us is noticed (inode check) and reopened.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scriptgen.emulate.events import CATALOGUE

REOPEN_INTERVAL = 1.0  # seconds between attempts to (re)open a failing log
IDENTITY_CHECK_INTERVAL = 1.0  # seconds between "was the file removed/rotated" checks
BATCH = 512  # events written per os.write at most


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Who an event is about: the contract fields shared by all session events."""

    protocol: str
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    session: str

    def fields(self) -> dict[str, Any]:
        return {
            "src_ip": self.src_ip,
            "src_port": self.src_port,
            "dst_ip": self.dst_ip,
            "dst_port": self.dst_port,
            "protocol": self.protocol,
            "session": self.session,
        }


NO_ENDPOINT: dict[str, Any] = {
    "src_ip": None,
    "src_port": None,
    "dst_ip": None,
    "dst_port": None,
    "protocol": None,
    "session": None,
}

_STOP = object()


class _Payload:
    """Attacker bytes, already cut to the logging bound, plus their real length."""

    __slots__ = ("data", "length")

    def __init__(self, data: bytes, limit: int) -> None:
        self.data = bytes(data[:limit])
        self.length = len(data)


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _serialise(ts: float, eventid: str, where: dict[str, Any], fields: dict[str, Any]) -> str:
    obj: dict[str, Any] = {"eventid": eventid, "timestamp": iso_utc(ts), **where}
    for key, value in fields.items():
        if isinstance(value, _Payload):
            obj[key] = value.data.hex()
            obj[f"{key}_len"] = value.length
            if value.length > len(value.data):
                obj[f"{key}_truncated"] = True
        else:
            obj[key] = value
    return json.dumps(obj, separators=(",", ":"), default=str)


class EventLog:
    """Emit events from the reactor thread; a writer thread appends them to ``path``.

    ``path`` None keeps the API (and the catalogue checks) but writes nothing.
    ``warn`` receives one human line per failure episode; it is called from
    the writer thread, so the service passes a thread-safe function.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        queue_size: int = 10000,
        payload_bytes: int = 4096,
        warn: Callable[[str], None] = lambda line: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.payload_bytes = payload_bytes
        self._warn = warn
        self._clock = clock
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._next_open = 0.0
        self._next_identity_check = 0.0
        self._failing = False
        self._lock = threading.Lock()
        self._queue_dropped = 0  # dropped on emit (queue full); guarded by _lock
        self._write_dropped = 0  # dropped by the writer (I/O failure); writer thread only
        self.dropped_total = 0  # everything ever dropped (for tests and the stop event)
        self.written = 0

    # --- reactor side ---

    def payload(self, data: bytes) -> _Payload:
        """Wrap attacker bytes: logged as bounded hex plus ``<key>_len``."""
        return _Payload(data, self.payload_bytes)

    def emit(self, eventid: str, where: Endpoint | None = None, **fields: Any) -> None:
        """Queue one event; never blocks, never raises for I/O reasons."""
        if eventid not in CATALOGUE:
            raise ValueError(f"event id {eventid!r} is not in the catalogue")
        if self.path is None:
            return
        for key, value in fields.items():
            if isinstance(value, bytes | bytearray | memoryview):
                fields[key] = _Payload(bytes(value), self.payload_bytes)
        item = (self._clock(), eventid, where.fields() if where else NO_ENDPOINT, fields)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._lock:
                self._queue_dropped += 1
                self.dropped_total += 1

    def start(self) -> None:
        if self.path is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="scriptgen-eventlog", daemon=True)
        self._thread.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far was handled (tests, shutdown)."""
        if self._thread is None:
            return True
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._thread = None

    # --- writer thread ---

    def _run(self) -> None:
        running = True
        while running:
            batch = [self._queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            events = []
            markers = []
            for item in batch:
                if item is _STOP:
                    running = False
                elif isinstance(item, threading.Event):
                    markers.append(item)
                else:
                    events.append(item)
            if events:
                self._write_events(events)
            for marker in markers:
                marker.set()
        self._close_fd()

    def _write_events(
        self, events: list[tuple[float, str, dict[str, Any], dict[str, Any]]]
    ) -> None:
        try:
            lines = [_serialise(*e) for e in events]
        except Exception as e:  # never let a bad field kill the writer
            self._warn(f"scriptgen: event log: cannot serialise events: {e}")
            self._write_dropped += len(events)
            self.dropped_total += len(events)
            return
        with self._lock:
            queue_dropped, self._queue_dropped = self._queue_dropped, 0
        pending = self._write_dropped + queue_dropped
        if pending:
            note = _serialise(
                self._clock(), "scriptgen.log.dropped", NO_ENDPOINT, {"count": pending}
            )
            lines.insert(0, note)
        if self._write("".join(line + "\n" for line in lines)):
            self._write_dropped = 0
            self.written += len(events)
            if self._failing:
                self._failing = False
                self._warn(f"scriptgen: event log {self.path}: writing again ({pending} dropped)")
        else:
            self._write_dropped = pending + len(events)
            self.dropped_total += len(events)

    def _write(self, text: str) -> bool:
        now = time.monotonic()
        if self._fd is not None and now >= self._next_identity_check:
            self._next_identity_check = now + IDENTITY_CHECK_INTERVAL
            if not self._same_file():
                self._close_fd()
        if self._fd is None:
            if now < self._next_open:
                return False
            self._next_open = now + REOPEN_INTERVAL
            if not self._open():
                return False
        data = text.encode("utf-8")
        try:
            while data:
                n = os.write(self._fd, data)
                data = data[n:]
        except OSError as e:
            self._fail(f"cannot write: {e.strerror or e}")
            self._close_fd()
            return False
        return True

    def _open(self) -> bool:
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as e:
            self._fail(f"cannot open: {e.strerror or e}")
            return False
        st = os.fstat(fd)
        self._fd, self._identity = fd, (st.st_dev, st.st_ino)
        return True

    def _same_file(self) -> bool:
        try:
            st = os.stat(self.path)  # type: ignore[arg-type]
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _fail(self, problem: str) -> None:
        if not self._failing:
            self._failing = True
            self._warn(
                f"scriptgen: event log {self.path}: {problem}; dropping events until it works again"
            )
