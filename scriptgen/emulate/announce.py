"""Ports drawn per answer: the port an answer announces is the port served, per source.

Some servers answer with the number of a port they have just opened for the
client (a passive data port): a new one per answer, so the learned answer
names a port of the capture, which this host may not serve and which every
client would share. The learner marks such a signal with the place its
answer names the port (``"announce": {"at", "len", "form"}``, see
docs/session-dependencies.md). Here, on entering that state, a free port is
drawn, bound on the listen address with the learned machine of the signal's
``opens`` port, and written into the answer at that place, spelt as learned
(decimal text, or two decimal bytes) and with the same number of digits, so
no length in the answer changes. The answer a client reads names the port
that serves it.

Only the source it was drawn for may connect (others are accepted and reset
at once, the way a server refuses a data connection from a stranger); it
stops listening after the learned duration (connections made go on). Bounds:
``per_source`` drawn ports per source (a new one replaces that source's
oldest: a client only uses the port it was told last) and ``total`` for
everyone (beyond it the learned answer goes out unchanged and the gate opens
the learned port instead, as without drawing). Nothing here knows a
protocol: what a port is and where it is spelt come from the model.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.error import CannotListenError

from scriptgen.emulate.eventlog import Endpoint, EventLog

Key = tuple[str, int]
# (learned key, port to bind, the drawn port's gate) -> the listening port, or None
# when no machine is loaded for that key; raises CannotListenError when taken.
Serve = Callable[[Key, int, Any], Any]
FORMS = ("decimal", "pair")
LOWEST_PORT = 1024  # never bind a privileged port for a client
MAX_SECONDS = 300.0  # a drawn port listens at most this long (models are input too)
ATTEMPTS = 8  # ports tried per answer before the learned answer goes out


def port_text(port: int, form: str) -> bytes:
    """``port`` spelt in ``form``: decimal text, or its two bytes as decimals."""
    return str(port).encode() if form == "decimal" else f"{port >> 8},{port & 0xFF}".encode()


_SHAPES = {
    "decimal": re.compile(rb"[0-9]{1,5}(?![0-9])"),
    "pair": re.compile(rb"([0-9]{1,3}),([0-9]{1,3})(?![0-9])"),
}


def spelt_at(answer: bytes, at: int, length: int, form: str) -> bool:
    """True when ``answer`` spells a port in ``form`` at ``at``, ``length`` bytes long."""
    if form not in _SHAPES or not 0 <= at or at + length > len(answer):
        return False
    if at and answer[at - 1 : at].isdigit():
        return False
    m = _SHAPES[form].match(answer, at)
    return m is not None and m.end() - at == length


def draw_port(text: bytes, form: str, rng: random.Random, avoid: Iterable[int]) -> int | None:
    """A port >= LOWEST_PORT spelt in ``form`` with exactly as many digits as ``text``."""
    taken = set(avoid)
    if form == "decimal":
        lo, hi = max(LOWEST_PORT, 10 ** (len(text) - 1)), min(65535, 10 ** len(text) - 1)
        if lo > hi:
            return None
        for _ in range(ATTEMPTS):
            port = rng.randint(lo, hi)
            if port not in taken:
                return port
        return None
    high, low = (_digit_range(len(part)) for part in text.split(b","))
    for _ in range(ATTEMPTS):
        port = rng.randint(*high) * 256 + rng.randint(*low)
        if port >= LOWEST_PORT and port not in taken:
            return port
    return None


def _digit_range(digits: int) -> tuple[int, int]:
    """Byte values (0-255) written with exactly ``digits`` decimal digits."""
    return (0 if digits == 1 else 10 ** (digits - 1)), min(255, 10**digits - 1)


@dataclass(frozen=True)
class Spot:
    """What a signal says about its announcement (validated: models are hostile input)."""

    target: Key
    seconds: float
    at: int
    length: int
    form: str


def spot_of(signal: Any) -> Spot | None:
    """The announcement of a signal, or None (no ``announce``, or malformed)."""
    if not isinstance(signal, dict) or not isinstance(signal.get("announce"), dict):
        return None
    place = signal["announce"]
    at, length, form = place.get("at"), place.get("len"), place.get("form")
    opens = signal.get("opens")
    try:
        seconds = float(signal.get("for", 0))
    except (TypeError, ValueError):
        return None
    if not (isinstance(at, int) and isinstance(length, int) and form in FORMS):
        return None
    if not isinstance(opens, str) or not opens.startswith("tcp/") or not opens[4:].isdigit():
        return None
    port = int(opens[4:])
    if not (0 <= at and 0 < length <= 7 and 0 < port <= 65535 and 0 < seconds):
        return None
    return Spot(("tcp", port), min(seconds, MAX_SECONDS), at, length, form)


@dataclass
class _Drawn:
    port: int
    source: str
    learned: Key
    listening: Any
    timer: Any
    where: Endpoint


class DrawnGate:
    """The gate a drawn port's connections see: only its source gets in; the states
    of its machine signal through the emulator's gate like any other."""

    def __init__(self, announcer: Announcer, port: int, outer: Any) -> None:
        self.announcer = announcer
        self.port = port
        self.outer = outer

    def admit(self, key: Key, where: Endpoint) -> bool:
        return self.announcer.admits(self.port, where)

    def announce(
        self, where: Endpoint, state: int, signals: list[Any], answer: bytes
    ) -> tuple[bytes, list[Any]]:
        return self.outer.announce(where, state, signals, answer)

    def signal(self, where: Endpoint, state: int, signals: Iterable[Any]) -> Any:
        return self.outer.signal(where, state, signals)


class Announcer:
    """Draws, serves and closes the ports answers announce; bounded per source and in all."""

    def __init__(
        self,
        events: EventLog,
        clock: Any,
        serve: Serve,
        outer: Any = None,
        *,
        per_source: int = 20,
        total: int = 1000,
        rng: random.Random | None = None,
    ) -> None:
        self.events = events
        self.clock = clock
        self.serve = serve
        self.per_source = max(1, per_source)
        self.total = max(1, total)
        self.rng = rng or random.Random(os.urandom(16))
        self.outer = outer  # the emulator's gate: a drawn port's states signal through it
        self.live: dict[int, _Drawn] = {}  # drawn port -> entry, oldest first
        self.stopped = False  # after stop(): nothing is drawn (no port outlives the service)

    def announce(
        self, where: Endpoint, state: int, signals: list[Any], answer: bytes
    ) -> tuple[bytes, list[Any]]:
        """The answer with a drawn, served port in each announcing signal's place, and the
        signals left for the gate (those not drawn: the learned port opens instead)."""
        if self.stopped:
            return answer, signals
        rest = []
        for signal in signals:
            spot = spot_of(signal)
            drawn = None if spot is None else self._draw(where, state, spot, answer)
            if drawn is None:
                rest.append(signal)
            else:
                answer = drawn
        return answer, rest

    def _draw(self, where: Endpoint, state: int, spot: Spot, answer: bytes) -> bytes | None:
        if not spelt_at(answer, spot.at, spot.length, spot.form):
            return None  # the answer is not the learned shape here: leave it as learned
        if len(self.live) >= self.total and not self._mine(where.src_ip):
            self.events.emit(
                "scriptgen.gate.error",
                where,
                port=f"{spot.target[0]}/{spot.target[1]}",
                error=f"{self.total} drawn ports listening; the learned port is announced",
            )
            return None
        text = answer[spot.at : spot.at + spot.length]
        for _ in range(ATTEMPTS):
            port = draw_port(text, spot.form, self.rng, self.live)
            if port is None:
                return None
            gate = DrawnGate(self, port, self.outer)
            try:
                listening = self.serve(spot.target, port, gate)
            except (CannotListenError, OSError):
                continue  # in use here: draw another
            if listening is None:
                return None  # no machine for the learned port: nothing to serve
            self._keep(where, state, spot, port, listening)
            new = port_text(port, spot.form)
            return answer[: spot.at] + new + answer[spot.at + spot.length :]
        return None

    def _mine(self, source: str) -> bool:
        """A source at its own bound replaces its oldest port, so it needs no new room."""
        return sum(d.source == source for d in self.live.values()) >= self.per_source

    def _keep(self, where: Endpoint, state: int, spot: Spot, port: int, listening: Any) -> None:
        mine = [d for d in self.live.values() if d.source == where.src_ip]
        if len(mine) >= self.per_source:
            self._close(mine[0].port, "replaced")
        timer = self.clock.callLater(spot.seconds, self._close, port, "expired")
        self.live[port] = _Drawn(
            port,
            where.src_ip,
            spot.target,
            listening,
            timer,
            where,
        )
        self.events.emit(
            "scriptgen.gate.opened",
            where,
            port=f"tcp/{port}",
            learned=f"{spot.target[0]}/{spot.target[1]}",
            state=state,
            seconds=spot.seconds,
            refreshed=False,
            drawn=True,
        )

    def admits(self, port: int, where: Endpoint) -> bool:
        """The drawn port's connect-time check: its source, while it is drawn."""
        entry = self.live.get(port)
        if entry is not None and entry.source == where.src_ip:
            return True
        self.events.emit("scriptgen.gate.refused", where, port=f"tcp/{port}", mechanism="drawn")
        return False

    def _close(self, port: int, why: str) -> None:
        entry = self.live.pop(port, None)
        if entry is None:
            return
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        entry.listening.stopListening()  # connections already made go on
        self.events.emit(
            "scriptgen.gate.expired", entry.where, port=f"tcp/{port}", drawn=True, reason=why
        )

    def start(self) -> None:
        """Draw ports (again, after a stop)."""
        self.stopped = False

    def stop(self) -> None:
        """Stop every drawn port, and draw none from now on (service shutdown: a
        connection still open must not bind a port nobody closes but its timer)."""
        self.stopped = True
        for port in list(self.live):
            self._close(port, "stopped")
