"""Bounded bookkeeping: connection counts, per-source tables, kept requests.

Everything here is keyed by attacker-chosen values (source addresses), so
every table has a bound and evicts least-recently-used entries; nothing in
it depends on Twisted.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LruTable(Generic[K, V]):
    """A dict with at most ``bound`` entries; the least recently used goes first."""

    def __init__(self, bound: int, on_evict: Callable[[K, V], None] | None = None) -> None:
        self.bound = bound
        self._items: OrderedDict[K, V] = OrderedDict()
        self._on_evict = on_evict

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.bound:
            old_key, old_value = self._items.popitem(last=False)
            if self._on_evict is not None:
                self._on_evict(old_key, old_value)

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def oldest(self) -> Iterator[tuple[K, V]]:
        """Entries from least to most recently used (snapshot: safe to pop while iterating)."""
        return iter(list(self._items.items()))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items


class SendBudget:
    """Bytes a source address may be sent per second (a token bucket per address).

    Why: a UDP source address is not proven; an attacker can spoof a victim's
    address and use the honeypot as a reflector. Each address gets ``burst``
    bytes at once and ``rate`` bytes per second after that; the table of
    addresses is an ``LruTable`` bounded by ``max_sources``, so an address
    forgotten under a flood of sources starts again with a full bucket (at
    most ``burst`` per address per eviction round).
    """

    def __init__(self, rate: int, burst: int, max_sources: int) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self._buckets: LruTable[str, list[float]] = LruTable(max_sources)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, source: str, nbytes: int, now: float) -> bool:
        """Spend ``nbytes`` of ``source``'s budget; False (and nothing spent) if short."""
        if not self.enabled:
            return True
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = [float(self.burst), now]
            self._buckets.put(source, bucket)
        tokens = min(float(self.burst), bucket[0] + max(0.0, now - bucket[1]) * self.rate)
        bucket[1] = now
        if nbytes > tokens:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - nbytes
        return True


class ConnectionLimiter:
    """Concurrent connections, in total and per source address."""

    def __init__(self, total: int, per_source: int) -> None:
        self.total = total
        self.per_source = per_source
        self.active = 0
        self._by_source: dict[str, int] = {}

    def acquire(self, source: str, over_total: bool = False) -> str | None:
        """Count a new connection; return the name of the limit it breaks (then not counted).

        ``over_total``: a connection was just evicted to make room but is still
        counted until its close completes; admit this one past the total.
        """
        if self.active >= self.total and not over_total:
            return "max_connections"
        if self._by_source.get(source, 0) >= self.per_source:
            return "max_connections_per_source"
        self.active += 1
        self._by_source[source] = self._by_source.get(source, 0) + 1
        return None

    def release(self, source: str) -> None:
        n = self._by_source.get(source, 0)
        if n <= 1:
            self._by_source.pop(source, None)  # the table only holds live sources
        else:
            self._by_source[source] = n - 1
        self.active = max(0, self.active - 1)

    def count(self, source: str) -> int:
        return self._by_source.get(source, 0)


class Activity(Generic[K]):
    """Live connections ordered from least to most recently active.

    Why: when every connection slot is taken, the quietest connection makes
    room for the new one, so idle connections from many sources cannot lock
    everyone else out until they time out. One O(1) move per data event.
    """

    def __init__(self) -> None:
        self._order: OrderedDict[K, float] = OrderedDict()

    def touch(self, key: K, now: float) -> None:
        self._order[key] = now
        self._order.move_to_end(key)

    def forget(self, key: K) -> None:
        self._order.pop(key, None)

    def quietest(self, now: float, quiet: float, evictable: Callable[[K], bool]) -> K | None:
        """The least recently active evictable entry quiet for at least ``quiet`` seconds."""
        for key, last in self._order.items():
            if now - last < quiet:
                return None  # the rest were active even more recently
            if evictable(key):
                return key
        return None

    def __len__(self) -> int:
        return len(self._order)


@dataclass(frozen=True, slots=True)
class KeptRequest:
    """An unmatched request, kept so the proxy (a later issue) can replay it."""

    time: float
    protocol: str
    port: int
    session: str
    state: int
    request: bytes


class UnmatchedStore:
    """Unmatched requests per source: bounded per source, in sources and in bytes."""

    def __init__(self, per_source: int, max_sources: int, max_bytes: int) -> None:
        self.per_source = per_source
        self.max_bytes = max_bytes
        self.bytes = 0
        self._table: LruTable[str, deque[KeptRequest]] = LruTable(max_sources, self._evicted)

    def _evicted(self, _source: str, kept: deque[KeptRequest]) -> None:
        self.bytes -= sum(len(k.request) for k in kept)

    def keep(self, source: str, item: KeptRequest) -> bool:
        """Store ``item``; False when it is larger than the whole budget (not kept)."""
        if self.per_source == 0 or len(item.request) > self.max_bytes:
            return False
        kept = self._table.get(source)
        if kept is None:
            kept = deque()
            self._table.put(source, kept)
        if len(kept) >= self.per_source:
            self.bytes -= len(kept.popleft().request)
        kept.append(item)
        self.bytes += len(item.request)
        while self.bytes > self.max_bytes:
            self._shed()
        return True

    def _shed(self) -> None:
        for source, kept in self._table.oldest():
            if kept:
                self.bytes -= len(kept.popleft().request)
                if not kept:
                    self._table.pop(source)
                return
            self._table.pop(source)
        self.bytes = 0

    def requests(self, source: str) -> list[KeptRequest]:
        kept = self._table.get(source)
        return list(kept) if kept else []

    def take(self, source: str) -> list[KeptRequest]:
        """Remove and return a source's requests (the proxy consumes them)."""
        kept = self._table.pop(source)
        if not kept:
            return []
        self.bytes -= sum(len(k.request) for k in kept)
        return list(kept)

    def __len__(self) -> int:
        return len(self._table)


class Throttle:
    """At most one notice per key per ``interval`` seconds; counts the suppressed ones.

    Limit events are triggered by attackers; without this, a flood of
    refused connections would become a flood of log lines.
    """

    def __init__(
        self, clock: Callable[[], float], interval: float = 1.0, bound: int = 1024
    ) -> None:
        self._clock = clock
        self.interval = interval
        self._last: LruTable[str, list[float | int]] = LruTable(bound)

    def allow(self, key: str) -> int | None:
        """None: suppress; otherwise the number suppressed since the last notice."""
        now = self._clock()
        entry = self._last.get(key)
        if entry is None:
            self._last.put(key, [now, 0])
            return 0
        if now - entry[0] < self.interval:
            entry[1] += 1
            return None
        suppressed = int(entry[1])
        entry[0], entry[1] = now, 0
        return suppressed
