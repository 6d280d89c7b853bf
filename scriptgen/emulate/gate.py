"""Per-source port gating: a port that waits for a signal is closed until the source emits it.

Why the kernel: a closed port must look closed -- the client's SYN answered
by a RST, ``connect()`` failing with "connection refused" -- and a listening
socket cannot do that: the kernel completes the handshake before the
application sees the connection. So the gate keeps, per gated port, an
nftables set of source addresses with element timeouts and one rule that
resets new connections (SYN without ACK) from sources not in the set::

    table inet scriptgen {
      set a4_4444 { type ipv4_addr; flags timeout; }
      chain input { type filter hook input priority filter - 10; policy accept;
        ip daddr 127.0.0.1 tcp dport 4444 tcp flags syn / syn,ack
          ip saddr != @a4_4444 reject with tcp reset } }

A signal adds ``SRC timeout Ns`` to the set (refreshing it when present); the
kernel forgets the element by itself when it expires, even if the emulator
died. Established connections are never touched. ``nft`` runs in a worker
thread, never on the reactor; calls are batched and serialised, and the
state's answer is held until the kernel has the element (so a client that
connects the moment it reads the answer is not refused by a race), at most
``hold_timeout`` seconds.

Needs: root (CAP_NET_ADMIN) and the ``nft`` binary (Debian: nftables). When
either is missing, or the set-up script fails, the gate falls back and says
so (log line and ``scriptgen.gate.ready`` with the reason): the port listens
for everyone, and a connection from a source that is not signalled is
accepted by the kernel and then aborted at once with a RST. A client then
sees its connect succeed and the first read or write fail with "connection
reset by peer" (a port scanner sees the port open). The same check runs in
nftables mode too, as a second line behind the kernel.

The in-memory table (source, port) → expiry is the reference for events and
for that check; it is bounded (``max_entries``): beyond it, new signals are
refused (the port stays closed for that source) and reported.
"""

from __future__ import annotations

import ipaddress
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from scriptgen.emulate.eventlog import Endpoint, EventLog

log = Logger(namespace="scriptgen")

Key = tuple[str, int]
MECHANISMS = ("auto", "nftables", "fallback")
MAX_SIGNAL_SECONDS = 86400.0  # a model asking for longer is capped (models are input too)
NFT_TIMEOUT = 10.0  # seconds one nft run may take before it counts as failed

# (script) -> Deferred[(exit status, error text)], run off the reactor thread.
Runner = Callable[[str], Deferred]


def signal_targets(signals: Iterable[Any]) -> list[tuple[Key, float]]:
    """Valid (target, seconds) pairs of a state's signals; malformed entries are skipped."""
    found: list[tuple[Key, float]] = []
    for sig in signals:
        if not isinstance(sig, dict):
            continue
        target = _parse_target(sig.get("opens"))
        try:
            seconds = float(sig.get("for", 0))
        except (TypeError, ValueError):
            continue
        if target is None or not math.isfinite(seconds) or seconds <= 0:
            continue
        found.append((target, min(seconds, MAX_SIGNAL_SECONDS)))
    return found


def _parse_target(text: Any) -> Key | None:
    if not isinstance(text, str):
        return None
    proto, sep, port = text.partition("/")
    if not sep or proto not in ("tcp", "udp") or not port.isdigit() or len(port) > 5:
        return None
    number = int(port)
    return (proto, number) if 0 < number <= 65535 else None


def gated_ports(machines: Iterable[Any]) -> set[Key]:
    """Every TCP (protocol, port) some state of some machine can open."""
    found: set[Key] = set()
    for machine in machines:
        for state in machine.states.values():
            found.update(t for t, _ in signal_targets(state.signals) if t[0] == "tcp")
    return found


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A source address fit for an nft script (v4-mapped v6 becomes v4), or None."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def setup_script(table: str, ports: Iterable[int], listen: str) -> str:
    """The whole table, replaced atomically (the first two lines drop a stale copy)."""
    lines = [f"table inet {table} {{ }}", f"delete table inet {table}", f"table inet {table} {{"]
    rules = []
    dest = ipaddress.ip_address(listen)
    families = []
    if isinstance(dest, ipaddress.IPv4Address):
        families.append(
            ("ip", "a4", "ipv4_addr", "" if dest.is_unspecified else f"ip daddr {dest} ")
        )
    if isinstance(dest, ipaddress.IPv6Address):
        if dest.is_unspecified:
            families.append(("ip", "a4", "ipv4_addr", ""))
        families.append(
            ("ip6", "a6", "ipv6_addr", "" if dest.is_unspecified else f"ip6 daddr {dest} ")
        )
    for port in sorted(set(ports)):
        for fam, prefix, kind, daddr in families:
            lines.append(f"  set {prefix}_{port} {{ type {kind}; flags timeout; }}")
            rules.append(
                f"    {daddr}tcp dport {port} tcp flags & (syn | ack) == syn "
                f"{fam} saddr != @{prefix}_{port} reject with tcp reset"
            )
    lines.append("  chain input {")
    lines.append("    type filter hook input priority -10; policy accept;")
    lines.extend(rules)
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def element_script(table: str, items: Iterable[tuple[int, str, float]]) -> str:
    """Add or refresh (port, address, seconds) elements in one transaction."""
    out = []
    for port, text, seconds in items:
        addr = _address(text)
        if addr is None:
            continue
        prefix = "a4" if addr.version == 4 else "a6"
        ms = max(1, int(math.ceil(seconds * 1000)))
        element = f"inet {table} {prefix}_{port} {{ {addr} timeout {ms}ms }}"
        out.append(f"add element {element}")  # exists afterwards, so the delete cannot fail
        out.append(f"delete element inet {table} {prefix}_{port} {{ {addr} }}")
        out.append(f"add element {element}")  # a fresh timeout
    return "\n".join(out) + ("\n" if out else "")


def run_nft(script: str, binary: str = "nft") -> tuple[int, str]:
    """Run ``nft -f -``; blocking, so only ever called in a worker thread."""
    try:
        proc = subprocess.run(
            [binary, "-f", "-"],
            input=script.encode(),
            capture_output=True,
            timeout=NFT_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return 127, str(e)
    return proc.returncode, proc.stderr.decode(errors="replace").strip()


def nft_unavailable(binary: str = "nft") -> str | None:
    """Why nftables cannot be used here, or None."""
    if shutil.which(binary) is None:
        return f"{binary} is not installed"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "not running as root (nftables needs CAP_NET_ADMIN)"
    return None


@dataclass
class _Open:
    until: float
    timer: Any


@dataclass
class _Batch:
    items: dict[tuple[int, str], float] = field(default_factory=dict)
    waiters: list[Deferred] = field(default_factory=list)


class Gate:
    """Which sources may connect to which gated ports, and the kernel rules that enforce it."""

    def __init__(
        self,
        events: EventLog,
        clock: Any,
        defer_to_thread: Callable[..., Deferred],
        *,
        mechanism: str = "auto",
        table: str = "scriptgen",
        listen: str = "127.0.0.1",
        hold_timeout: float = 2.0,
        max_entries: int = 10000,
        runner: Runner | None = None,
        unavailable: Callable[[], str | None] = nft_unavailable,
    ) -> None:
        if mechanism not in MECHANISMS:
            raise ValueError(f"gate mechanism must be one of {', '.join(MECHANISMS)}")
        self.events = events
        self.clock = clock
        self.mechanism = mechanism
        self.table = table
        self.listen = listen
        self.hold_timeout = hold_timeout
        self.max_entries = max_entries
        self.runner: Runner = runner or (lambda script: defer_to_thread(run_nft, script))
        self._unavailable = unavailable
        self.ports: dict[Key, int] = {}  # gated learned key -> served (bound) port
        self.open: dict[tuple[Key, str], _Open] = {}
        self.kernel = False  # True once the nft table is in place
        self.ready = False
        self._pending = _Batch()
        self._running = False
        self.announcer: Any = None  # scriptgen.emulate.announce.Announcer: ports drawn per answer

    # --- life cycle ---

    def start(self, ports: Mapping[Key, int]) -> Deferred:
        """Gate ``ports`` (learned key -> bound port); fires when the mechanism is decided."""
        if self.announcer is not None:
            self.announcer.start()  # a service started again after a stop draws again
        self.ports = {k: p for k, p in ports.items() if k[0] == "tcp"}
        if not self.ports:
            self.ready = True
            return succeed(None)
        why = "configured" if self.mechanism == "fallback" else self._unavailable()
        if why is not None:
            self._fallback(why)
            return succeed(None)
        script = setup_script(self.table, self.ports.values(), self.listen)
        d = self.runner(script)
        d.addCallbacks(self._set_up, self._set_up_failed)
        return d

    def _set_up(self, result: tuple[int, str]) -> None:
        status, error = result
        if status != 0:
            self._fallback(f"nft failed ({status}): {error[:300]}")
            return
        self.kernel = self.ready = True
        self.events.emit(
            "scriptgen.gate.ready",
            mechanism="nftables",
            table=self.table,
            ports=self._port_names(),
            reason="",
        )
        log.info(
            "scriptgen: gated ports {ports} closed per source with nftables table inet {t}",
            ports=self._port_names(),
            t=self.table,
        )
        if self._pending.items:
            self._flush()

    def _set_up_failed(self, failure: Any) -> None:
        self._fallback(f"nft could not run: {failure.getErrorMessage()}")

    def _fallback(self, why: str) -> None:
        self.kernel = False
        self.ready = True
        self.events.emit(
            "scriptgen.gate.ready",
            mechanism="fallback",
            table="",
            ports=self._port_names(),
            reason=why,
        )
        log.warn(
            "scriptgen: nftables unavailable ({why}); gated ports {ports} fall back to "
            "accept-then-reset: a closed port looks open to a scanner, then resets",
            why=why,
            ports=self._port_names(),
        )
        for waiter in self._pending.waiters:
            waiter.callback(None)
        self._pending = _Batch()

    def stop(self) -> None:
        """Drop the table (blocking, once, at shutdown) and cancel the expiry timers."""
        if self.announcer is not None:
            self.announcer.stop()
        for entry in self.open.values():
            if entry.timer is not None and entry.timer.active():
                entry.timer.cancel()
        self.open.clear()
        if self.kernel:
            self.kernel = False
            status, error = run_nft(f"delete table inet {self.table}\n")
            if status != 0:
                log.warn("scriptgen: could not delete nftables table: {e}", e=error)

    def _port_names(self) -> list[str]:
        return [f"{k[0]}/{k[1]}={p}" for k, p in sorted(self.ports.items())]

    # --- decisions ---

    def gated(self, key: Key) -> bool:
        return key in self.ports

    def allows(self, key: Key, src_ip: str) -> bool:
        """True when ``src_ip`` may use ``key`` now (ungated ports: always)."""
        if key not in self.ports:
            return True
        entry = self.open.get((key, src_ip))
        return entry is not None and self.clock.seconds() < entry.until

    def admit(self, key: Key, where: Endpoint) -> bool:
        """The connect-time check: False (and an event) when the connection must be reset."""
        if self.allows(key, where.src_ip):
            return True
        self.events.emit(
            "scriptgen.gate.refused",
            where,
            port=f"{key[0]}/{key[1]}",
            mechanism="nftables" if self.kernel else "fallback",
        )
        return False

    # --- signals ---

    def announce(
        self, where: Endpoint, state: int, signals: list[Any], answer: bytes
    ) -> tuple[bytes, list[Any]]:
        """Ports drawn for the signals whose answer names them (scriptgen.emulate.announce):
        the answer naming them, and the signals left to :meth:`signal`."""
        if self.announcer is None:
            return answer, signals
        return self.announcer.announce(where, state, signals, answer)

    def signal(self, where: Endpoint, state: int, signals: Iterable[Any]) -> Deferred:
        """Open every gated target of ``signals`` for the source; fires when the kernel has it."""
        kernel_items: list[tuple[int, str, float]] = []
        for target, seconds in signal_targets(signals):
            if target not in self.ports:
                continue
            if self._open(target, where, state, seconds):
                kernel_items.append((self.ports[target], where.src_ip, seconds))
        if not kernel_items or (self.ready and not self.kernel):
            return succeed(None)  # nothing new, or fallback: memory is all there is
        return self._queue(kernel_items)  # before set-up finished too: flushed once ready

    def _open(self, target: Key, where: Endpoint, state: int, seconds: float) -> bool:
        slot = (target, where.src_ip)
        entry = self.open.get(slot)
        if entry is None and len(self.open) >= self.max_entries:
            self.events.emit(
                "scriptgen.gate.error",
                where,
                port=f"{target[0]}/{target[1]}",
                error=f"gate table full ({self.max_entries} entries); port stays closed",
            )
            return False
        if entry is not None and entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        until = self.clock.seconds() + seconds
        timer = self.clock.callLater(seconds, self._expire, slot, where)
        self.open[slot] = _Open(until, timer)
        self.events.emit(
            "scriptgen.gate.opened",
            where,
            port=f"{target[0]}/{target[1]}",
            state=state,
            seconds=seconds,
            refreshed=entry is not None,
        )
        return True

    def _expire(self, slot: tuple[Key, str], where: Endpoint) -> None:
        entry = self.open.pop(slot, None)
        if entry is None:
            return
        target = slot[0]
        self.events.emit("scriptgen.gate.expired", where, port=f"{target[0]}/{target[1]}")

    # --- the kernel side: batched, one nft run at a time ---

    def _queue(self, items: list[tuple[int, str, float]]) -> Deferred:
        d: Deferred = Deferred()
        for port, ip, seconds in items:
            self._pending.items[(port, ip)] = seconds
        self._pending.waiters.append(d)
        timer = self.clock.callLater(self.hold_timeout, self._late, d)
        d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        if self.ready and self.kernel:
            self._flush()
        return d

    def _late(self, d: Deferred) -> None:
        if not d.called:
            self.events.emit(
                "scriptgen.gate.error",
                error=f"nft did not confirm within {self.hold_timeout}s; answer released",
            )
            d.callback(None)

    def _flush(self) -> None:
        if self._running or not self._pending.items:
            return
        batch, self._pending = self._pending, _Batch()
        self._running = True
        script = element_script(self.table, ((p, ip, s) for (p, ip), s in batch.items.items()))
        d = self.runner(script)
        d.addCallbacks(
            self._flushed, self._flush_failed, callbackArgs=(batch,), errbackArgs=(batch,)
        )

    def _flushed(self, result: tuple[int, str], batch: _Batch) -> None:
        status, error = result
        if status != 0:
            self.events.emit("scriptgen.gate.error", error=f"nft failed ({status}): {error[:300]}")
        self._done(batch)

    def _flush_failed(self, failure: Any, batch: _Batch) -> None:
        self.events.emit(
            "scriptgen.gate.error", error=f"nft could not run: {failure.getErrorMessage()}"
        )
        self._done(batch)

    def _done(self, batch: _Batch) -> None:
        self._running = False
        for waiter in batch.waiters:
            if not waiter.called:
                waiter.callback(None)
        self._flush()
