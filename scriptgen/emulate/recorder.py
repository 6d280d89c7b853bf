"""Relayed dialogs on disk: pcap files that Wireshark opens and ``scriptgen.trace`` reads.

Why pcap with synthesized TCP/IP headers: the recording is then an ordinary
capture, so the learner needs no second input format (``scriptgen train``
reads it like any other), an analyst opens it in Wireshark, and the crash
story is simple. Each relayed connection becomes one TCP flow between the
real client address and the emulator's address, with consistent sequence
numbers, a handshake and a FIN/RST at the end. The server port written is
the *learned* port (the machine that is updated is chosen by it), not the
port the emulator served on (``tcp/21=2121`` records port 21).

Life of a recording (one file per source allocation), in the spool dir::

    <name>.pcap.part   being written; packets reach the OS as soon as the writer runs
    <name>.pcap        closed (source released), pending: waiting to be learned
    learned/<name>.pcap  learned and kept for the analyst (bounded: ``Spool.prune``)
    failed/<name>.pcap   the learner could not use it (kept, never retried)

No file is touched on the reactor thread: packets are built there and queued
(bounded in bytes) to one writer thread (``SpoolWriter``) that writes,
flushes, fsyncs, renames and appends to the index, in queue order. A
recording becomes pending (``finish``'s Deferred fires) only after its data
was written and fsynced and the file renamed. ``index.jsonl`` in the spool
dir logs every transition for humans; the directory itself is the source of
truth. After ``kill -9`` a ``.part`` file is complete up to the last packet
the writer had handled (what was still queued is lost: normally
milliseconds' worth): ``recover`` closes it (renames it to ``.pcap``) and it
is learned like any other pending file.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred, succeed

LINKTYPE_RAW = 101  # raw IPv4/IPv6 packets, no link header
_SNAPLEN = 262144
_CHUNK = 65000  # payload bytes per synthesized segment (IP total length stays < 65535)
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

PART, DONE = ".pcap.part", ".pcap"
QUEUE_BYTES = 32 * 1024 * 1024  # packet bytes waiting for the writer thread, at most
SALT, SALT_BYTES = "salt", 16  # the spool's secret for online learning (Spool.salt)
JOIN = 4 * 1024 * 1024  # bytes the writer joins into one write (see SpoolWriter._write_out)


def _sum16(data: bytes) -> int:
    """Ones'-complement sum of the 16-bit words of ``data`` (even length), mod 0xFFFF.

    2**16 = 1 (mod 0xFFFF), so the sum is the number itself modulo 0xFFFF:
    one C-level big-int operation instead of a Python loop. Sums of
    even-length parts add up, so headers and payload are summed apart
    (no copy of the payload)."""
    return int.from_bytes(data, "big") % 0xFFFF


def _fold(total: int) -> int:
    total %= 0xFFFF
    return ~total & 0xFFFF


def _checksum(data: bytes) -> int:
    """Internet checksum of ``data``."""
    if len(data) % 2:
        data += b"\0"
    n = int.from_bytes(data, "big")
    if n and n % 0xFFFF == 0:
        return 0  # the sum is 0xFFFF (ones' complement "negative zero")
    return _fold(n)


def _addr(ip: str) -> tuple[int, bytes]:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return family, socket.inet_pton(family, ip)


class _Side:
    """Precomputed addresses of one direction of a flow (packets are built often)."""

    def __init__(self, src: tuple[str, int], dst: tuple[str, int]) -> None:
        self.family, self.s = _addr(src[0])
        _, self.d = _addr(dst[0])
        self.sport, self.dport = src[1], dst[1]
        self.v4 = self.family == socket.AF_INET

    def headers(self, seq: int, ack: int, flags: int, payload: bytes) -> bytes:
        """IP and TCP headers for ``payload``, checksums filled in."""
        length = 20 + len(payload)
        if self.v4:
            pseudo = self.s + self.d + struct.pack("!BBH", 0, 6, length)
        else:
            pseudo = self.s + self.d + struct.pack("!I3xB", length, 6)
        tcp = struct.pack(
            "!HHIIBBHHH", self.sport, self.dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
            5 << 4, flags, 65535, 0, 0,
        )  # fmt: skip
        odd = payload + b"\0" if len(payload) % 2 else payload
        csum = _fold(_sum16(pseudo) + _sum16(tcp) + _sum16(odd))
        tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
        if self.v4:
            ip = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0x4000, 64, 6, 0, self.s, self.d
            )
            return ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:] + tcp
        return struct.pack("!IHBB16s16s", 6 << 28, length, 6, 64, self.s, self.d) + tcp


def tcp_packet(
    src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int, flags: int, payload: bytes
) -> bytes:
    """One IPv4 or IPv6 packet carrying one TCP segment, checksums filled in."""
    return _Side(src, dst).headers(seq, ack, flags, payload) + payload


class PcapWriter:
    """Formats classic pcap records (microsecond stamps, raw IP) and hands them to a sink.

    The sink (the spool's writer queue) may refuse a record: then this writer
    refuses everything after it too, so the file stays a clean prefix of the
    dialog (no hole in the middle of a flow)."""

    HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, _SNAPLEN, LINKTYPE_RAW)

    def __init__(self, sink: Callable[[tuple[bytes, ...]], bool]) -> None:
        self.sink = sink
        self.bytes = 0  # records queued (the file header is not counted)
        self.closed = False

    def write(self, ts: float, headers: bytes, payload: bytes = b"") -> bool:
        """Queue one packet; False when it was not (recording finished or queue full)."""
        if self.closed:
            return False  # finished (source released) before this flow ended, or refused
        sec = int(ts)
        usec = min(int((ts - sec) * 1_000_000), 999_999)
        n = len(headers) + len(payload)
        record = struct.pack("<IIII", sec, usec, n, n) + headers
        if not self.sink((record, payload) if payload else (record,)):
            self.closed = True
            return False
        self.bytes += 16 + n
        return True


class Flow:
    """One recorded TCP connection: keeps both sequence numbers consistent."""

    def __init__(
        self, writer: PcapWriter, client: tuple[str, int], server: tuple[str, int], ts: float
    ) -> None:
        self.w = writer
        self.sides = (_Side(client, server), _Side(server, client))
        self.seq = [secrets.randbits(32), secrets.randbits(32)]  # next seq: client, server
        self.closed = False
        self._packet(0, ts, SYN, b"", ack=False)
        self.seq[0] += 1
        self._packet(1, ts, SYN | ACK, b"")
        self.seq[1] += 1
        self._packet(0, ts, ACK, b"")

    def _packet(self, side: int, ts: float, flags: int, payload: bytes, ack: bool = True) -> bool:
        acknum = self.seq[1 - side] if ack else 0
        headers = self.sides[side].headers(self.seq[side], acknum, flags, payload)
        return self.w.write(ts, headers, payload)

    def data(self, from_server: bool, payload: bytes, ts: float) -> None:
        """Bytes one side sent (0 = client, 1 = server), cut into segments."""
        if self.closed or not payload:
            return
        side = int(from_server)
        view = memoryview(payload)
        for i in range(0, len(payload), _CHUNK):
            chunk = bytes(view[i : i + _CHUNK]) if len(payload) > _CHUNK else payload
            if not self._packet(side, ts, PSH | ACK, chunk):
                return  # refused: the recording ends here (sequence numbers stay consistent)
            self.seq[side] += len(chunk)

    def close(self, ts: float, by_server: bool = False, reset: bool = False) -> None:
        """The end of the connection: FIN from each side (closer first), or a RST."""
        if self.closed:
            return
        self.closed = True
        first = int(by_server)
        if reset:
            self._packet(first, ts, RST | ACK, b"")
            return
        for side in (first, 1 - first):
            self._packet(side, ts, FIN | ACK, b"")
            self.seq[side] += 1
        self._packet(first, ts, ACK, b"")


class UdpFlow:
    """One recorded UDP flow: one packet per datagram, as the client saw it."""

    def __init__(
        self, writer: PcapWriter, client: tuple[str, int], server: tuple[str, int]
    ) -> None:
        self.w = writer
        self.ends = (client, server)
        self.closed = False

    def data(self, from_server: bool, payload: bytes, ts: float) -> None:
        if self.closed or not payload:
            return
        src, dst = self.ends[::-1] if from_server else self.ends
        self.w.write(ts, udp_headers(src, dst, payload), payload)

    def close(self, ts: float, by_server: bool = False, reset: bool = False) -> None:
        self.closed = True  # UDP has no end on the wire


def udp_headers(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """IP and UDP headers for one datagram (checksums filled in)."""
    family, s = _addr(src[0])
    _, d = _addr(dst[0])
    length = 8 + len(payload)
    if family == socket.AF_INET:
        pseudo = s + d + struct.pack("!BBH", 0, 17, length)
    else:
        pseudo = s + d + struct.pack("!I3xB", length, 17)
    udp = struct.pack("!HHHH", src[1], dst[1], length, 0)
    odd = payload + b"\0" if len(payload) % 2 else payload
    csum = _fold(_sum16(pseudo) + _sum16(udp) + _sum16(odd)) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum)
    if family == socket.AF_INET:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0x4000, 64, 17, 0, s, d)
        return ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:] + udp
    return struct.pack("!IHBB16s16s", 6 << 28, length, 17, 64, s, d) + udp


class Recording:
    """The pcap of one source allocation, written as the dialogs happen.

    Everything here runs on the reactor thread and touches no file: packets
    go to the spool's writer queue. ``max_bytes`` bounds the file: beyond it
    new data is not written (the conversation still ends cleanly) and
    ``truncated`` says so. ``incomplete``: the writer queue was full (or the
    disk failed), so the file stops at that point, like a file cut by a crash.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        disk: SpoolWriter,
        source: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.disk = disk
        self.source = source
        self.clock = clock
        self.truncated = False
        self.incomplete = False  # reactor thread: a record was refused (queue full)
        self.dropped = 0  # bytes refused for this recording (reactor thread)
        self.error: str | None = None  # writer thread: the disk failed (read after finish)
        self.flows = 0
        self.writer = PcapWriter(self._sink)
        disk.submit(("open", self, PcapWriter.HEADER))

    def _sink(self, parts: tuple[bytes, ...]) -> bool:
        if self.disk.write(self, parts):
            return True
        self._stop_here(sum(map(len, parts)))
        return False

    def _stop_here(self, n: int) -> None:
        """The writer queue is full: the file ends here (a clean prefix), said once."""
        self.dropped += n
        self.writer.closed = True
        if not self.incomplete:
            self.incomplete = True
            self.disk.warn(
                f"scriptgen: spool {self.path.name}: writer queue full "
                f"({self.disk.queue_bytes} bytes); recording stops here (incomplete)"
            )

    def flow(self, client: tuple[str, int], server: tuple[str, int]) -> Flow:
        self.flows += 1
        return Flow(self.writer, client, server, self.clock())

    def udp_flow(self, client: tuple[str, int], server: tuple[str, int]) -> UdpFlow:
        self.flows += 1
        return UdpFlow(self.writer, client, server)

    def room(self, n: int) -> bool:
        """Whether ``n`` more bytes may be recorded (size bound, then writer queue)."""
        if self.writer.bytes + n > self.max_bytes:
            self.truncated = True
            return False
        if self.writer.closed:
            if self.incomplete:
                self.dropped += n  # every byte the queue cost this recording is counted
            return False
        if not self.disk.has_room(n):
            self._stop_here(n)
            return False
        return True

    def done_path(self) -> Path:
        return self.path.with_name(self.path.name[: -len(PART)] + DONE)

    def finish(self) -> Deferred[Path]:
        """Queue: fsync, close, rename ``.pcap.part`` -> ``.pcap`` (now pending), index it.

        The Deferred fires on the reactor thread once all that is done (with
        the pending path), or fails with the OSError; only then may the
        recording be learned."""
        self.writer.closed = True  # packets of flows still open are not written
        d: Deferred[Path] = Deferred()
        self.disk.submit(("finish", self, d))
        return d


_STOP = object()
_Op = tuple[Any, ...]


def _open_file(path: Path, mode: str) -> BinaryIO:
    return open(path, mode)  # noqa: SIM115 -- the writer closes it


class SpoolWriter:
    """Every file operation of the spool, in order, on one thread.

    Why a thread: the reactor must never wait for a disk (a slow or stalled
    disk would freeze every connection); compare ``eventlog.EventLog``. The
    reactor only appends to a deque (atomic under the GIL, no lock) bounded
    in bytes of packet data; control operations (open, finish, index lines,
    moves) are few and not counted. The thread is woken at once, so the
    queue is normally drained within milliseconds: that is what ``kill -9``
    can lose. Results come back through ``call_from_thread`` (the reactor's
    ``callFromThread``), so Deferreds fire on the reactor thread.

    Before ``start`` (command-line tools, tests), operations run inline in
    the caller's thread, with the same effects and order.
    """

    def __init__(
        self,
        queue_bytes: int,
        opener: Callable[[Path, str], BinaryIO] = _open_file,
        warn: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.queue_bytes = queue_bytes
        self.opener = opener
        self.warn = warn
        self._ops: deque[Any] = deque()
        self._in = 0  # packet bytes queued, ever (reactor thread only)
        self._out = 0  # packet bytes handled, ever (writer thread only)
        self.dropped = 0  # packet bytes refused because the queue was full (reactor thread)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._call: Callable[..., Any] = lambda f, *a: f(*a)
        self._stopped: Deferred[None] | None = None
        self._files: dict[Recording, BinaryIO] = {}  # the writer's (or inline caller's) only

    # --- reactor side ---

    @property
    def queued(self) -> int:
        """Packet bytes waiting for the writer thread."""
        return self._in - self._out

    def has_room(self, n: int) -> bool:
        if self._thread is None or self.queued + n <= self.queue_bytes:
            return True
        self.dropped += n
        return False

    def write(self, rec: Recording, parts: tuple[bytes, ...]) -> bool:
        """Queue packet bytes for ``rec``'s file; False (nothing queued) when full."""
        n = sum(map(len, parts))
        if not self.has_room(n):
            return False
        parts = tuple(p if type(p) is bytes else bytes(p) for p in parts)  # immutable copies
        self._in += n
        self.submit(("write", rec, parts))
        return True

    def submit(self, op: _Op) -> None:
        if self._thread is None:
            self._handle([op])
            return
        self._ops.append(op)
        if not self._wake.is_set():
            self._wake.set()

    def start(self, call_from_thread: Callable[..., Any]) -> None:
        if self._thread is not None:
            return
        self._call = call_from_thread
        self._thread = threading.Thread(target=self._run, name="scriptgen-spool", daemon=True)
        self._thread.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is on the OS's side (tests)."""
        if self._thread is None:
            return True
        done = threading.Event()
        self.submit(("marker", done))
        return done.wait(timeout)

    def stop(self) -> Deferred[None]:
        """Write everything queued, close files left open (they stay ``.part``), end the thread.

        Fires on the reactor thread once the thread is done."""
        if self._thread is None:
            self._close_all()
            return succeed(None)
        if self._stopped is None:
            self._stopped = Deferred()
            self._ops.append(_STOP)
            self._wake.set()
        return self._stopped

    def _ended(self) -> None:
        self._thread = None
        self._call = lambda f, *a: f(*a)
        stopped, self._stopped = self._stopped, None
        left = list(self._ops)  # queued after the thread's last look: written inline now
        self._ops.clear()
        self._handle([op for op in left if op is not _STOP])
        if stopped is not None:
            stopped.callback(None)

    # --- writer thread ---

    def _run(self) -> None:
        stopping = False
        while True:
            if not stopping:
                self._wake.wait()
            self._wake.clear()
            batch = []
            while self._ops:
                batch.append(self._ops.popleft())
            stopping = self._handle(batch) or stopping
            if stopping and not self._ops:
                break
        self._close_all()
        self._call(self._ended)

    def _handle(self, batch: list[Any]) -> bool:
        """Run a batch of operations in order; the packets of one file are written together."""
        stop = False
        waiting: dict[Recording, list[bytes]] = {}
        for op in batch:
            if op is _STOP:
                stop = True
                continue
            if op[0] == "write":
                waiting.setdefault(op[1], []).extend(op[2])
                continue
            self._write_out(waiting)
            try:
                self._control(op)
            except Exception as e:  # noqa: BLE001 -- the writer must survive anything
                self.warn(f"scriptgen: spool writer: {type(e).__name__}: {e}")
        self._write_out(waiting)
        return stop

    def _control(self, op: _Op) -> None:
        kind = op[0]
        if kind == "open":
            self._open(op[1], op[2])
        elif kind == "finish":
            self._finish(op[1], op[2])
        elif kind == "log":
            self._log(op[1], op[2])
        elif kind == "move":
            os.replace(op[1], op[2])
            self._log(op[3], op[4])
        elif kind == "remove":
            os.unlink(op[1])
            self._log(op[2], op[3])
        elif kind == "prune":
            self._prune(op[1], op[2], op[3], op[4])
        elif kind == "marker":
            op[1].set()

    def _open(self, rec: Recording, header: bytes) -> None:
        try:
            f = self.opener(rec.path, "wb")
            f.write(header)
        except OSError as e:
            rec.error = f"cannot open: {e.strerror or e}"
            self.warn(f"scriptgen: spool {rec.path}: {rec.error}")
            return
        self._files[rec] = f

    def _write_out(self, waiting: dict[Recording, list[bytes]]) -> None:
        """Write and flush what waits, per file, in few large writes.

        Why joined: every system call gives the GIL away, and while the
        reactor is busy getting it back can take a whole switch interval
        (5 ms); one write per ``JOIN`` bytes keeps the writer ahead of a fast
        relay. Flushed at once: ``kill -9`` then loses nothing written."""
        for rec, parts in waiting.items():
            try:
                self._append(rec, parts)
            except Exception as e:  # noqa: BLE001 -- the writer must survive anything
                self.warn(f"scriptgen: spool writer: {type(e).__name__}: {e}")
            finally:
                self._out += sum(map(len, parts))  # handled (written or not): room again
        waiting.clear()

    def _append(self, rec: Recording, parts: list[bytes]) -> None:
        f = self._files.get(rec)
        if f is None:
            return  # never opened, or failed earlier: the file ends where it ends
        try:
            start = size = 0
            for i, part in enumerate(parts):
                size += len(part)
                if size >= JOIN:
                    f.write(b"".join(parts[start : i + 1]))
                    start, size = i + 1, 0
            if start < len(parts):
                f.write(b"".join(parts[start:]))
            f.flush()
        except OSError as e:
            self._fail(rec, f, e)

    def _fail(self, rec: Recording, f: BinaryIO, e: OSError) -> None:
        rec.error = f"cannot write: {e.strerror or e}"
        self.warn(f"scriptgen: spool {rec.path}: {rec.error}; the recording stops here")
        self._files.pop(rec, None)
        try:
            f.close()
        except OSError:
            pass

    def _finish(self, rec: Recording, d: Deferred[Path]) -> None:
        """Data on disk first (flush + fsync), then the rename makes it pending."""
        try:
            f = self._files.pop(rec, None)
            if f is not None:
                try:
                    f.flush()
                    os.fsync(f.fileno())
                finally:
                    f.close()
            done = rec.done_path()
            os.replace(rec.path, done)
        except OSError as e:
            self._call(d.errback, e)
            return
        self._log(rec.path.parent, {"what": "pending", "file": done.name, "source": rec.source})
        self._call(d.callback, done)

    def _prune(
        self,
        root: Path,
        max_bytes: int | None,
        max_files: int | None,
        spared: Callable[[], Collection[str]],
    ) -> None:
        """learned/ back within its bounds: oldest first (a name starts with the UTC
        time its recording started), sparing the names ``spared`` lists."""
        keep = set(spared())
        files = []
        for path in sorted((root / "learned").glob("*" + DONE)):
            try:
                files.append((path, path.stat().st_size))
            except OSError:
                continue
        total, count = sum(n for _, n in files), len(files)
        for path, n in files:
            if (max_bytes is None or total <= max_bytes) and (
                max_files is None or count <= max_files
            ):
                break
            if path.name in keep:
                continue
            try:
                os.unlink(path)
            except OSError:
                continue
            total, count = total - n, count - 1
            self._log(root, {"what": "pruned", "file": path.name, "bytes": n})

    def _log(self, root: Path, fields: dict[str, Any]) -> None:
        line = json.dumps({"ts": time.time(), **fields}) + "\n"
        try:
            with self.opener(root / "index.jsonl", "ab") as f:
                f.write(line.encode("utf-8"))
        except OSError:
            pass  # the index is for humans; the directory is the truth

    def _close_all(self) -> None:
        for rec, f in list(self._files.items()):
            self._files.pop(rec, None)
            try:
                f.close()
            except OSError:
                pass


class Spool:
    """The recordings directory: new files, pending files, learned and failed ones.

    File writes go through ``disk`` (a ``SpoolWriter``): inline until
    ``start``, then on its thread. ``pending`` and ``recover`` stay
    synchronous: they run at start-up, before any recording exists.
    """

    def __init__(
        self,
        root: Path,
        max_bytes: int = 64 * 1024 * 1024,
        queue_bytes: int = QUEUE_BYTES,
        opener: Callable[[Path, str], BinaryIO] = _open_file,
        warn: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.keep_bytes: int | None = None  # learned/ bounds (None: unbounded), see retain
        self.keep_files: int | None = None
        for sub in ("", "learned", "failed"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.disk = SpoolWriter(queue_bytes, opener, warn)

    def salt(self) -> bytes:
        """The spool's secret (``SALT``, 16 random bytes, made once, mode 0600): it keys
        the online learner's sample of full buckets, so the dialogs attackers send
        cannot be chosen to be the ones kept. Read at start-up (synchronous)."""
        path = self.root / SALT
        try:
            value = path.read_bytes()
        except OSError:
            value = b""
        if len(value) == SALT_BYTES:
            return value
        value = secrets.token_bytes(SALT_BYTES)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(value)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return value

    def start(self, call_from_thread: Callable[..., Any]) -> None:
        """From now on the writer thread does every write (the service, after ``recover``)."""
        self.disk.start(call_from_thread)

    def stop(self) -> Deferred[None]:
        """Service stop: everything queued reaches the disk; fires when it has."""
        return self.disk.stop()

    def new(self, source: str, host: str) -> Recording:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        safe = "".join(c if c.isalnum() else "_" for c in source)
        name = f"{stamp}-{safe}-{secrets.token_hex(3)}"
        rec = Recording(self.root / (name + PART), self.max_bytes, self.disk, source)
        self.log("recording", rec.path.name, source=source, host=host)
        return rec

    def pending(self) -> list[Path]:
        """Closed recordings not learned yet, oldest first."""
        return sorted(self.root.glob("*" + DONE))

    def recover(self) -> list[Path]:
        """At start: recordings left open by a crash become pending (as far as written)."""
        out = []
        for part in sorted(self.root.glob("*" + PART)):
            done = part.with_name(part.name[: -len(PART)] + DONE)
            os.replace(part, done)
            self.log("recovered", done.name)
            out.append(done)
        return out

    def settle(self, path: Path, learned: bool) -> Path:
        """Move a pending file out of the way once learned (or found unusable).

        Queued like every write; returns where it goes."""
        target = self.root / ("learned" if learned else "failed") / path.name
        what = "learned" if learned else "failed"
        self.disk.submit(("move", path, target, self.root, {"what": what, "file": path.name}))
        return target

    def retain(self, max_bytes: int | None, max_files: int | None) -> None:
        """Bound ``learned/`` in bytes and in files ([proxy] keep_learned_bytes and
        keep_learned_files); ``prune`` applies the bounds."""
        self.keep_bytes, self.keep_files = max_bytes, max_files

    def prune(self, spared: Callable[[], Collection[str]] = frozenset) -> None:
        """Delete the oldest learned recordings past the bounds, except the names
        ``spared()`` returns (called on the writer thread: it may read files).

        Why: every learned recording used to stay forever; a honeypot proxies
        for months, and an attacker can make it record (up to ``record_bytes``
        per allocation). Queued like every write, so it follows the moves
        into ``learned/`` queued before it."""
        if self.keep_bytes is None and self.keep_files is None:
            return
        self.disk.submit(("prune", self.root, self.keep_bytes, self.keep_files, spared))

    def discard(self, path: Path) -> None:
        """Delete a pending recording that holds nothing (no flow): a host that never
        connected would otherwise leave one file per attempt. Queued like every write."""
        self.disk.submit(("remove", path, self.root, {"what": "discarded", "file": path.name}))

    def log(self, what: str, name: str, **extra: str) -> None:
        self.disk.submit(("log", self.root, {"what": what, "file": name, **extra}))
