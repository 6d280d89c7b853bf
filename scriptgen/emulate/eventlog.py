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
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

from scriptgen.emulate.events import CATALOGUE

REOPEN_INTERVAL = 1.0  # seconds between attempts to (re)open a failing log
IDENTITY_CHECK_INTERVAL = 1.0  # seconds between "was the file removed/rotated" checks
BATCH = 1024  # events written per os.write at most
POLL = 0.05  # seconds the writer sleeps when there is nothing to write


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Who an event is about: the contract fields shared by all session events."""

    protocol: str
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    session: str
    json: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Serialised once per session, not once per event: emit is on the hot path.
        object.__setattr__(self, "json", _object_body(self.fields()))

    def fields(self) -> dict[str, Any]:
        return {
            "src_ip": self.src_ip,
            "src_port": self.src_port,
            "dst_ip": self.dst_ip,
            "dst_port": self.dst_port,
            "protocol": self.protocol,
            "session": self.session,
        }


_STOP = object()


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class _Stamper:
    """ISO 8601 UTC timestamps, formatting the date and time part once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ts: float) -> str:
        second = int(ts)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        micros = min(int((ts - second) * 1e6), 999999)
        return f"{self._prefix}.{micros:06d}Z"


def _json_value(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)
    if kind is int:
        return str(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    return json.dumps(value, separators=(",", ":"), default=str, sort_keys=True)


def _object_body(fields: dict[str, Any]) -> str:
    return ",".join(f'"{key}":{_json_value(value)}' for key, value in fields.items())


NO_ENDPOINT = _object_body(
    dict.fromkeys(("src_ip", "src_port", "dst_ip", "dst_port", "protocol", "session"))
)


def _serialise(
    ts: float,
    eventid: str,
    where: str,
    fields: dict[str, Any],
    stamp: Callable[[float], str] = iso_utc,
    payload_bytes: int = 4096,
) -> str:
    """One JSON object on one line.

    Assembled by hand from the C string escaper rather than ``json.dumps``
    on a dict, and with the session's fields serialised once per session:
    this runs for every event. Keys come from this package, never from the
    wire; every value is escaped. Attacker bytes become bounded hex plus
    ``<key>_len`` (and ``<key>_truncated`` when cut).
    """
    out = ['{"eventid":"', eventid, '","timestamp":"', stamp(ts), '",', where]
    for key, value in fields.items():
        kind = type(value)
        if kind is int:
            out.append(f',"{key}":{value}')
        elif kind is str:
            out.append(f',"{key}":{encode_basestring_ascii(value)}')
        elif kind is bytes or kind is bytearray or kind is memoryview:
            n = len(value)
            out.append(f',"{key}":"{bytes(value[:payload_bytes]).hex()}","{key}_len":{n}')
            if n > payload_bytes:
                out.append(f',"{key}_truncated":true')
        else:
            out.append(f',"{key}":{_json_value(value)}')
    out.append("}")
    return "".join(out)


class EventLog:
    """Emit events from the reactor thread; a writer thread appends them to ``path``.

    ``path`` None keeps the API (and the catalogue checks) but writes nothing.
    ``warn`` receives one human line per failure episode; it is called from
    the writer thread (and, for an unserialisable event, the emitting
    thread), so the service passes a thread-safe function.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        queue_size: int = 10000,
        queue_bytes: int = 16 * 1024 * 1024,
        payload_bytes: int = 4096,
        warn: Callable[[str], None] = lambda line: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.payload_bytes = payload_bytes
        self._warn = warn
        self._clock = clock
        # A deque, not queue.Queue: append/popleft are atomic under the GIL and
        # take no lock, so emit costs the reactor almost nothing; the writer
        # polls it (POLL seconds) instead of being woken per event.
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        # Bytes queued = _in_bytes - _out_bytes; each counter has one writer
        # thread (emitter, writer), so no lock is needed.
        self._in_bytes = 0
        self._out_bytes = 0
        self._pending: deque[Any] = deque()
        self._wake = threading.Event()
        self._urgent = max(1, queue_size // 2)
        self._thread: threading.Thread | None = None
        self._stamp = _Stamper()  # emitting thread only
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

    def emit(self, eventid: str, where: Endpoint | None = None, **fields: Any) -> None:
        """Queue one event; never blocks, never raises for I/O reasons."""
        if eventid not in CATALOGUE:
            raise ValueError(f"event id {eventid!r} is not in the catalogue")
        if self.path is None:
            return
        if (
            len(self._pending) >= self.queue_size
            or self._in_bytes - self._out_bytes >= self.queue_bytes
        ):
            self._drop()
            return
        # Serialised here, on the emitting thread: a writer thread busy in
        # Python code would hold the GIL and stall the reactor for whole
        # switch intervals (milliseconds); the writer only joins and writes.
        try:
            line = _serialise(
                self._clock(),
                eventid,
                where.json if where else NO_ENDPOINT,
                fields,
                self._stamp,
                self.payload_bytes,
            )
        except Exception as e:  # a bad field must not take the caller down
            self._drop()
            self._warn(f"scriptgen: event log: cannot serialise {eventid}: {e}")
            return
        self._in_bytes += len(line)
        self._pending.append(line)
        if len(self._pending) == self._urgent:
            self._wake.set()  # filling up: write now rather than at the next poll

    def _drop(self) -> None:
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
        self._pending.append(done)  # markers bypass the bound: they are ours, and few
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        self._pending.append(_STOP)
        self._wake.set()
        self._thread.join(timeout)
        self._thread = None

    # --- writer thread ---

    def _run(self) -> None:
        running = True
        while running:
            if len(self._pending) < BATCH:
                # Sleep even when a few events wait: writing in large, rare
                # batches keeps this thread off the GIL while the reactor is busy.
                self._wake.wait(POLL)
                self._wake.clear()
            batch = []
            while self._pending and len(batch) < BATCH:
                batch.append(self._pending.popleft())
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
                self._out_bytes += sum(len(line) for line in events)
                self._write_events(events)
            for marker in markers:
                marker.set()
        self._close_fd()

    def _write_events(self, events: list[str]) -> None:
        lines = list(events)
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
