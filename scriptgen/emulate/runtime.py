"""What every protocol instance of one emulator shares: config, event log,
models, limits and the clock.

One object passed explicitly (no module-level singletons), so tests build
one with a fake clock and a hand-built machine and drive protocols directly.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

from scriptgen.emulate.config import Config
from scriptgen.emulate.dialog import Matched, Unmatched
from scriptgen.emulate.eventlog import Endpoint, EventLog
from scriptgen.emulate.limits import (
    Activity,
    ConnectionLimiter,
    KeptRequest,
    SendBudget,
    Throttle,
    UnmatchedStore,
)
from scriptgen.emulate.matching import CompiledMachine


class Models(Protocol):
    def get(self, key: tuple[str, int]) -> CompiledMachine | None: ...


class Clock(Protocol):
    def seconds(self) -> float: ...

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> Any: ...  # noqa: N802


# A connection that spoke within this many seconds is in a dialog: a flood of
# new connections at max_connections must not cut it (it is not evicted).
EVICT_QUIET = 1.0


class Evictable(Protocol):
    def evictable(self) -> bool: ...

    def evict(self) -> None: ...


def new_session_id() -> str:
    return secrets.token_hex(6)


@dataclass
class Runtime:
    config: Config
    events: EventLog
    models: Models
    clock: Clock
    limiter: ConnectionLimiter = field(init=False)
    unmatched: UnmatchedStore = field(init=False)
    throttle: Throttle = field(init=False)
    activity: Activity[Evictable] = field(init=False)
    udp_budget: SendBudget = field(init=False)  # bytes per second to one UDP source address

    def __post_init__(self) -> None:
        lim = self.config.limits
        self.limiter = ConnectionLimiter(lim.max_connections, lim.max_connections_per_source)
        self.unmatched = UnmatchedStore(
            lim.unmatched_per_source, lim.max_sources, lim.unmatched_bytes
        )
        self.throttle = Throttle(self.clock.seconds)
        self.activity = Activity()
        self.udp_budget = SendBudget(lim.udp_answer_rate, lim.udp_answer_burst, lim.max_sources)

    def evict_quietest(self) -> Evictable | None:
        """Close the connection quiet the longest (at least EVICT_QUIET s) to make room."""
        victim = self.activity.quietest(self.clock.seconds(), EVICT_QUIET, _evictable)
        if victim is not None:
            self.activity.forget(victim)
            victim.evict()
        return victim

    def limit_hit(self, limit: str, where: Endpoint | None = None, **extra: Any) -> None:
        """Emit scriptgen.limit.hit, at most once a second per limit."""
        suppressed = self.throttle.allow(limit)
        if suppressed is None:
            return
        value = getattr(self.config.limits, limit, None)
        self.events.emit(
            "scriptgen.limit.hit", where, limit=limit, value=value, suppressed=suppressed, **extra
        )

    def request_matched(self, where: Endpoint, step: Matched, answer: bytes) -> None:
        """Log a matched request; one place, so TCP and UDP log the same fields."""
        target = step.target
        self.events.emit(
            "scriptgen.request.matched",
            where,
            state=step.state.id,
            transition=step.rule.order,
            target=target.id,
            request=step.request,
            answer=answer,
            end=target.end.value,
        )

    def request_unmatched(self, where: Endpoint, step: Unmatched) -> None:
        """Log an unmatched request and keep it for the learner (TCP and UDP alike)."""
        self.events.emit(
            "scriptgen.request.unmatched",
            where,
            state=step.state.id,
            reason=step.reason,
            request=step.request,
            policy=self.config.on_unmatched,
        )
        item = KeptRequest(
            self.clock.seconds(),
            where.protocol,
            where.dst_port,
            where.session,
            step.state.id,
            step.request,
        )
        self.unmatched.keep(where.src_ip, item)


def _evictable(conn: Evictable) -> bool:
    return conn.evictable()
