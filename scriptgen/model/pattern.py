"""Regions and patterns: what a transition requires of a request.

A pattern is the ordered list of regions that region analysis found for a
cluster of requests. It compiles to a regular expression that requires every
*fixed* region byte for byte and lets each *mutating* region take any bytes
within its learned length range (the reference's conservative exact-match
matching function). Each region is a capture group, so later stages
(content dependencies) can read the live values of mutating regions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import regex

# Mutating regions wider than this compile to ``.*`` plus a length check.
MAX_COUNTED_REPEAT = 4096


@dataclass(frozen=True, slots=True)
class Region:
    """A fixed byte run (``fixed`` set) or a mutating one (length range only)."""

    fixed: bytes | None = None
    min_len: int = 0
    max_len: int = 0

    def __post_init__(self) -> None:
        if self.fixed is not None:
            object.__setattr__(self, "min_len", len(self.fixed))
            object.__setattr__(self, "max_len", len(self.fixed))
        if not 0 <= self.min_len <= self.max_len:
            raise ValueError(f"bad region length range {self.min_len}..{self.max_len}")

    @classmethod
    def mutating(cls, min_len: int, max_len: int) -> Region:
        return cls(None, min_len, max_len)

    @property
    def is_fixed(self) -> bool:
        return self.fixed is not None

    @property
    def is_loose(self) -> bool:
        """Too wide for a counted repeat: compiled as ``.*`` and length-checked after.

        The ``regex`` module compiles ``.{n,m}`` in time and memory that grow
        with the counts (``.{10000000}`` takes seconds and gigabytes), so a
        hostile or huge model must not reach it with large counts.
        """
        return self.fixed is None and self.max_len > MAX_COUNTED_REPEAT

    def to_regex(self) -> bytes:
        if self.fixed is not None:
            return b"(" + regex.escape(self.fixed) + b")"
        if self.is_loose:
            return b"(.*)"
        return b"(.{%d,%d})" % (self.min_len, self.max_len)

    def to_json(self) -> dict[str, Any]:
        if self.fixed is not None:
            return {"fixed": self.fixed.hex()}
        return {"min": self.min_len, "max": self.max_len}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Region:
        if "fixed" in obj:
            return cls(bytes.fromhex(obj["fixed"]))
        return cls.mutating(int(obj["min"]), int(obj["max"]))


@dataclass(frozen=True)
class Pattern:
    """Ordered regions; matches a whole request, never a prefix."""

    regions: tuple[Region, ...] = field(default_factory=tuple)

    @cached_property
    def specificity(self) -> int:
        """Number of fixed bytes: the more, the more refined the transition."""
        return sum(r.max_len for r in self.regions if r.is_fixed)

    @cached_property
    def min_len(self) -> int:
        return sum(r.min_len for r in self.regions)

    @cached_property
    def max_len(self) -> int:
        return sum(r.max_len for r in self.regions)

    @property
    def source(self) -> bytes:
        """The regex text (for display and signatures: compiling a long literal costs
        milliseconds, the regex module parses it in Python)."""
        return b"(?s)" + b"".join(r.to_regex() for r in self.regions)

    @cached_property
    def compiled(self) -> regex.Pattern:
        return regex.compile(self.source)

    @cached_property
    def _exact(self) -> bytes | None:
        """The one request an all-fixed pattern takes: compared as bytes, since the
        regex module compiles a literal in Python (~3 us a byte) and verbatim
        transitions are up to 4 KiB long, thousands per machine."""
        if all(r.fixed is not None for r in self.regions):
            return b"".join(r.fixed or b"" for r in self.regions)
        return None

    @cached_property
    def _spans(self) -> regex.Pattern:
        """Groups of an all-fixed pattern's region lengths: on its one request, the
        same match (groups, spans) as ``compiled``, without compiling the bytes."""
        return regex.compile(b"(?s)" + b"".join(_exactly(r.max_len) for r in self.regions))

    def prepare(self) -> None:
        """Compile what ``fullmatch`` needs now (off the reactor thread), not at first use."""
        if self._exact is None:
            self.compiled  # noqa: B018
        else:
            self._spans  # noqa: B018

    def fullmatch(self, data: bytes, timeout: float | None = None) -> regex.Match | None:
        """The match object when ``data`` is exactly one request of this kind.

        ``timeout`` (seconds) bounds the regex engine; it raises TimeoutError.
        """
        if not self.min_len <= len(data) <= self.max_len:
            return None
        if self._exact is not None:
            return self._spans.fullmatch(data) if data == self._exact else None
        if self._loose_groups and not self.feasible(data):
            # ``.*`` next to other regions backtracks for seconds to minutes
            # on a long request that does not match (measured: 6 s per MB).
            return None
        m = self.compiled.fullmatch(data, timeout=timeout)
        if m is not None and self._loose_groups:
            for group, region in self._loose_groups:
                if not region.min_len <= m.end(group) - m.start(group) <= region.max_len:
                    return None
        return m

    @cached_property
    def _loose_groups(self) -> tuple[tuple[int, Region], ...]:
        return tuple((i + 1, r) for i, r in enumerate(self.regions) if r.is_loose)

    @cached_property
    def _steps(self) -> tuple[tuple[int, int, bytes], ...]:
        """(gap min, gap max, fixed bytes) per fixed run, then the trailing gap with b"".

        Consecutive mutating regions are one gap whose length range is the
        sum of theirs: only the total is constrained between two fixed runs.
        """
        steps = []
        lo = hi = 0
        for r in self.regions:
            if r.fixed is None:
                lo, hi = lo + r.min_len, hi + r.max_len
            else:
                steps.append((lo, hi, r.fixed))
                lo = hi = 0
        steps.append((lo, hi, b""))
        return tuple(steps)

    def feasible(self, data: bytes) -> bool:
        """Whether some split of ``data`` fits the regions, in time linear in its length.

        Walks the fixed runs left to right keeping the offsets where the
        next region can start, as intervals; occurrences of a fixed run are
        found with ``bytes.find`` and chained when the gap after them would
        join them anyway, so a long run of one byte costs O(length), not
        one step per occurrence. Exact (the same answer as the regex), only
        without backtracking.
        """
        n = len(data)
        spans = [(0, 0)]
        steps = self._steps
        for k, (lo, hi, fixed) in enumerate(steps):
            spans = _grow(spans, lo, hi, n)
            if not fixed or not spans:
                continue
            nlo, nhi, _ = steps[k + 1]
            spans = [chain for a, b in spans for chain in _chains(data, fixed, a, b, nhi - nlo)]
        return any(a <= n <= b for a, b in spans)

    def could_extend(self, data: bytes) -> bool:
        """True when more bytes appended to ``data`` could still make a match.

        The emulator uses this to wait for the rest of a request that arrives
        over several segments instead of declaring it unmatched too early.
        """
        if len(data) >= self.max_len:
            return False
        m = self.compiled.fullmatch(data, partial=True)
        return m is not None and m.partial

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.regions]

    @classmethod
    def from_json(cls, obj: list[dict[str, Any]]) -> Pattern:
        return cls(tuple(Region.from_json(r) for r in obj))

    @classmethod
    def literal(cls, data: bytes) -> Pattern:
        """A pattern that accepts exactly ``data`` (one all-fixed region)."""
        return cls((Region(data),)) if data else cls(())

    def describe(self, max_fixed: int = 24) -> str:
        """Human-readable form: fixed bytes as text or hex, mutating as ``<n..m>``."""
        return " ".join(_describe_region(r, max_fixed) for r in self.regions) or "<empty>"


def _exactly(n: int) -> bytes:
    """A group of exactly ``n`` bytes; counts over MAX_COUNTED_REPEAT nested (the regex
    module compiles ``.{n}`` in time and memory that grow with n)."""
    q, r = divmod(n, MAX_COUNTED_REPEAT)
    if not q:
        return b"(.{%d})" % r
    return b"((?:.{%d}){%d}.{%d})" % (MAX_COUNTED_REPEAT, q, r)


def _grow(spans: list[tuple[int, int]], lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    """Offsets reachable from ``spans`` through a gap of ``lo..hi`` bytes, merged, within n."""
    out: list[tuple[int, int]] = []
    for a, b in spans:
        a, b = a + lo, min(b + hi, n)
        if a > b:
            continue
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _chains(data: bytes, fixed: bytes, a: int, b: int, tol: int) -> list[tuple[int, int]]:
    """Offsets just past each ``fixed`` starting in ``a..b``, as (first, last) chains.

    Consecutive offsets of a chain are at most ``tol + 1`` apart, so the next
    gap (whose range is ``tol`` wide) turns the chain into one interval;
    with ``tol == 0`` the chain is exactly the offsets it spans.
    """
    size = len(fixed)
    end = min(b + size, len(data))
    out = []
    i = data.find(fixed, a, end)
    while i != -1:
        first = i
        while True:  # jump to the last occurrence still within reach
            j = data.rfind(fixed, i + 1, min(i + tol + 1 + size, end))
            if j == -1:
                break
            i = j
        out.append((first + size, i + size))
        i = data.find(fixed, i + 1, end)
    return out


def _describe_region(region: Region, max_fixed: int) -> str:
    if region.fixed is None:
        if region.min_len == region.max_len:
            return f"<{region.min_len}>"
        return f"<{region.min_len}..{region.max_len}>"
    data = region.fixed
    short = data[:max_fixed]
    more = "…" if len(data) > max_fixed else ""
    if all(32 <= b < 127 or b in (9, 10, 13) for b in short):
        text = short.decode("ascii").encode("unicode_escape").decode("ascii")
        return f'"{text}"{more}'
    return f"0x{short.hex()}{more}"
