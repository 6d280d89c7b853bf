"""Per-state indexes over a loaded machine, so matching cost does not grow
linearly with the number of transitions at a state.

Why: a state that leaves through hundreds of learned transitions (every SMB
command, every FTP verb, microclusters of each) would otherwise run hundreds
of regular expressions per request. Each pattern gets an *anchor*: the first
bytes of its longest fixed region at a constant offset (only fixed-length
regions before it), or else of its first fixed region, whose offset varies
within a small window when variable-length regions come first. Each state
keeps one dict per anchor shape (offset window, key length) from key bytes
to rules, so a request only meets the rules whose key it carries where the
key must be, plus the few rules without an anchor. Candidates are tried in
order of decreasing specificity (ties: transition order), so the first full
match is the answer of ``State.best_transition`` and the search stops there.
Cheap byte tests (``required`` region present, first fixed region inside its
window) reject most remaining candidates before any regex runs, and each
machine remembers recent "where does the request end" decisions.

The result must always equal ``State.best_transition`` (the model's matching
function); the tests check that on random machines.

Regex time is bounded twice: each evaluation by ``timeout`` and all the
evaluations judging one request by the same amount in total (``Budget``), so a
hostile request costs about one timeout, not one per candidate rule and state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import regex

from scriptgen.model import End, Machine, Pattern, State, Transition

MATCH_TIMEOUT = 0.05  # seconds one regex evaluation, and one request in all, may take
ANCHOR_BYTES = 16  # bytes of the anchoring fixed region used as the dict key
MAX_WINDOW = 64  # largest offset range an anchor may float in and still be indexed
CACHE_ENTRIES = 4096  # decisions remembered per machine
CACHE_MAX_REQUEST = 512  # only for buffers up to this size
MAX_ALIKE = 8  # states reached by the same request elsewhere, kept per state (back-off)


class MatchTimeout(Exception):
    """A regex evaluation ran out of time.

    Patterns with several mutating regions separated by fixed bytes can make
    the regex engine backtrack polynomially on hostile input (tenths of a
    second for a few kB, growing fast); every evaluation gets a deadline and
    the dialog treats a timeout as an unmatched request.
    """


class Budget:
    """Seconds of regex work the judgement of one request may spend in total.

    Why: a deadline per evaluation alone lets one hostile request cost one
    timeout per candidate rule, per pass of the dialog over them (whole
    match, splits, extensions) and per back-off state -- seconds of a stalled
    reactor. A judgement opens when ``CompiledMachine.cached`` misses and closes
    at ``remember`` (a datagram: ``StateIndex.best`` called outside a
    judgement opens and closes one); judging the same buffer object again
    (back-off at earlier states, the final judgement after the settle delay or
    the request timeout) goes on spending the same budget: a new request is a
    new buffer object.
    Outside a judgement (live values of a match) only the per-evaluation
    timeout applies. Spent time, not a deadline, is kept: carrying a budget
    over costs nothing when the earlier judgement was cheap.
    """

    __slots__ = ("seconds", "clock", "spent", "active", "_buffer")

    def __init__(self, seconds: float, clock: Callable[[], float] = perf_counter) -> None:
        self.seconds = seconds
        self.clock = clock
        self.spent = 0.0
        self.active = False
        self._buffer: bytes | None = None

    def open(self, buffer: bytes) -> None:
        """A judgement of ``buffer`` starts (a new budget unless it judges it again)."""
        if buffer is not self._buffer:
            self.spent = 0.0
            self._buffer = buffer
        self.active = True

    def close(self) -> None:
        self.active = False

    def allowance(self, cap: float) -> float:
        """The timeout of the next evaluation; MatchTimeout when nothing is left."""
        if not self.active:
            return cap
        left = self.seconds - self.spent
        if left <= 0:
            raise MatchTimeout("request match budget spent")
        return min(cap, left)

    def charge(self, seconds: float) -> None:
        if self.active:
            self.spent += seconds


@dataclass(frozen=True, slots=True, repr=False)
class Rule:
    """One transition, prepared for matching.

    Patterns made only of fixed regions (``literal``) are compared as bytes,
    without the regex engine: many learned requests are exactly such.
    """

    order: int  # position among the state's transitions (tie-break)
    transition: Transition
    pattern: Pattern
    target: int
    specificity: int
    prefix_re: Any  # matches the shortest prefix of a buffer this pattern fullmatches
    anchor: tuple[int, int, bytes] | None  # key bytes of a fixed region at offset lo..hi
    tail_max: int | None  # max length of a final mutating region (None: ends fixed)
    literal: bytes | None  # the only request it accepts, when all regions are fixed
    required: bytes  # its longest fixed region: a full or prefix match contains it
    first: tuple[int, int, bytes] | None  # first fixed region and its possible offsets lo..hi
    timeout: float  # seconds per regex evaluation
    loose: bool  # has regions compiled as ``.*`` plus a length check (Region.is_loose)
    budget: Budget  # the machine's: regex seconds left for the request being judged

    def __repr__(self) -> str:
        return f"Rule({self.order}: {self.pattern.describe()} -> {self.target})"

    @property
    def sort_key(self) -> tuple[int, int]:
        return (-self.specificity, self.order)

    def fullmatch(self, data: bytes) -> bool:
        if self.literal is not None:
            return data == self.literal
        return self._full(data) is not None

    def _full(self, data: bytes) -> Any:
        """``Pattern.fullmatch`` with a deadline."""
        return self._timed(lambda t: self.pattern.fullmatch(data, timeout=t))

    def _timed(self, run: Callable[[float], Any]) -> Any:
        """One regex evaluation, bounded by its timeout and by the request's budget."""
        budget = self.budget
        timeout = budget.allowance(self.timeout)
        started = budget.clock()
        try:
            return run(timeout)
        except TimeoutError:
            raise MatchTimeout(self.pattern.describe()) from None
        finally:
            budget.charge(budget.clock() - started)

    def match(self, data: bytes) -> Any:
        """The regex match (live values of the regions), for later stages; None on timeout."""
        try:
            return self._full(data)
        except MatchTimeout:
            return None

    def excluded(self, data: bytes) -> bool:
        """Cheap proof that neither ``data`` nor anything it starts or could
        become matches: the first fixed region is not where it must be.

        Gives patterns without a constant-offset anchor (a variable-length
        field first) a memmem-speed rejection instead of a regex run.
        """
        if self.first is None:
            return False
        lo, hi, fixed = self.first
        end = hi + len(fixed)
        return len(data) >= end and data.find(fixed, lo, end) == -1

    def could_extend(self, data: bytes) -> bool:
        """More bytes appended to ``data`` could make a match (``data`` is not one yet)."""
        if self.literal is not None:
            return len(data) < len(self.literal) and self.literal.startswith(data)
        if len(data) >= self.pattern.max_len or self.excluded(data):
            return False
        compiled = self.pattern.compiled  # Pattern.could_extend, with a deadline
        m = self._timed(lambda t: compiled.fullmatch(data, partial=True, timeout=t))
        return m is not None and m.partial

    def tail_slack(self, data: bytes) -> bool:
        """True when matching ``data`` leaves the final mutating region room to grow.

        A request whose open-ended tail (a payload) was cut by a segment
        boundary still matches; this is the sign to wait for the settle delay
        before answering. A pattern that ends in a fixed region (a terminator)
        does not grow this way: only swallowing its own terminator would
        make it longer.
        """
        if self.tail_max is None:
            return False
        m = self._full(data)
        last = len(self.pattern.regions)
        return m is not None and m.end(last) - m.start(last) < self.tail_max

    def shortest_prefix(self, data: bytes) -> int:
        """Length of the shortest proper prefix of ``data`` this rule fullmatches (0: none)."""
        if self.literal is not None:
            n = len(self.literal)
            return n if 0 < n < len(data) and data.startswith(self.literal) else 0
        if len(data) <= self.pattern.min_len:
            return 0
        m = self._timed(lambda t: self.prefix_re.match(data, timeout=t))
        if m is None or not 0 < m.end() < len(data):
            return 0
        if self.loose and self._full(data[: m.end()]) is None:
            return 0  # a wide region's length bound failed: no split found here
        return m.end()


def _prefix_regex(pattern: Pattern) -> Any:
    """The pattern with lazy quantifiers, for finding where a request ends in a stream.

    Regions too wide for a counted repeat (``Region.is_loose``) become
    ``.*?``; a prefix found that way is checked with the real pattern.
    """
    parts = []
    for region in pattern.regions:
        if region.fixed is not None:
            parts.append(regex.escape(region.fixed))
        elif region.is_loose:
            parts.append(b".*?")
        else:
            parts.append(b".{%d,%d}?" % (region.min_len, region.max_len))
    return regex.compile(b"(?s)" + b"".join(parts))


def _first_fixed(pattern: Pattern) -> tuple[int, int, bytes] | None:
    lo = hi = 0
    for region in pattern.regions:
        if region.fixed:
            return (lo, hi, region.fixed)
        lo += region.min_len
        hi += region.max_len
    return None


def _literal(pattern: Pattern) -> bytes | None:
    if all(r.fixed is not None for r in pattern.regions):
        return b"".join(r.fixed for r in pattern.regions)  # type: ignore[misc]
    return None


def _tail_max(pattern: Pattern) -> int | None:
    if not pattern.regions or pattern.regions[-1].fixed is not None:
        return None
    last = pattern.regions[-1]
    return last.max_len if last.max_len > last.min_len else None


def _anchor(pattern: Pattern) -> tuple[int, int, bytes] | None:
    """Where to look for a pattern's key bytes: (lo, hi, key).

    Preferably the longest fixed region at a constant offset (lo == hi: only
    fixed-length regions before it); otherwise the first fixed region, whose
    offset varies within lo..hi when variable-length regions come first,
    if that window is small. None: the rule is checked for every request.
    """
    best: tuple[int, int, bytes] | None = None
    offset = 0
    for region in pattern.regions:
        if region.fixed:
            if best is None or len(region.fixed) > len(best[2]):
                best = (offset, offset, region.fixed[:ANCHOR_BYTES])
        elif region.min_len != region.max_len:
            break
        offset += region.min_len
    if best is not None:
        return best
    first = _first_fixed(pattern)
    if first is not None and first[1] - first[0] <= MAX_WINDOW:
        return (first[0], first[1], first[2][:ANCHOR_BYTES])
    return None


@dataclass(slots=True, repr=False)
class StateIndex:
    """A state's answer, end and transitions, indexed for matching."""

    id: int
    answer: bytes
    end: End
    rules: list[Rule]
    groups: list[tuple[int, int, int, dict[bytes, list[Rule]]]] = field(default_factory=list)
    floating: list[Rule] = field(default_factory=list)
    budget: Budget = field(default_factory=lambda: Budget(MATCH_TIMEOUT))  # its rules' budget

    def __repr__(self) -> str:
        return f"StateIndex({self.id}, {len(self.rules)} rules)"

    @classmethod
    def build(
        cls, state: State, timeout: float = MATCH_TIMEOUT, budget: Budget | None = None
    ) -> StateIndex:
        budget = Budget(timeout) if budget is None else budget
        rules = []
        for order, t in enumerate(state.transitions):
            literal = _literal(t.pattern)
            rules.append(
                Rule(
                    order=order,
                    transition=t,
                    pattern=t.pattern,
                    target=t.target,
                    specificity=t.pattern.specificity,
                    prefix_re=None if literal is not None else _prefix_regex(t.pattern),
                    anchor=_anchor(t.pattern),
                    tail_max=_tail_max(t.pattern),
                    literal=literal,
                    first=_first_fixed(t.pattern),
                    timeout=timeout,
                    budget=budget,
                    loose=any(r.is_loose for r in t.pattern.regions),
                    required=max(
                        (r.fixed for r in t.pattern.regions if r.fixed), key=len, default=b""
                    ),
                )
            )
            t.pattern.prepare()  # compile now (off the reactor thread), not at first use
        index = cls(state.id, state.answer, state.end, rules, budget=budget)
        by_shape: dict[tuple[int, int, int], dict[bytes, list[Rule]]] = {}
        for rule in sorted(rules, key=lambda r: r.sort_key):
            if rule.anchor is None:
                index.floating.append(rule)
                continue
            lo, hi, key = rule.anchor
            by_shape.setdefault((lo, hi, len(key)), {}).setdefault(key, []).append(rule)
        index.groups = [(lo, hi, k, m) for (lo, hi, k), m in sorted(by_shape.items())]
        return index

    def candidates(self, data: bytes) -> list[Rule]:
        """Rules that could match ``data`` or a prefix/extension of it, best first."""
        found: list[Rule] = list(self.floating)
        parts = 1 if found else 0
        n = len(data)
        for lo, hi, size, table in self.groups:
            if n >= hi + size:  # every place the key could be is there: look it up
                if lo == hi:
                    hit = table.get(data[lo : lo + size])
                    if hit:
                        found.extend(hit)
                        parts += 1
                    continue
                seen: set[bytes] = set()
                for offset in range(lo, hi + 1):
                    key = data[offset : offset + size]
                    hit = table.get(key)
                    if hit and key not in seen:
                        seen.add(key)
                        found.extend(hit)
                        parts += 1
            elif lo == hi:  # partial request: keys that what arrived could still become
                head = data[lo:]
                for key, rules in table.items():
                    if key.startswith(head):
                        found.extend(rules)
                        parts += 1
            else:
                for rules in table.values():
                    found.extend(rules)
                    parts += 1
        if parts > 1:
            found.sort(key=lambda r: r.sort_key)
        return found

    def best(self, data: bytes, cands: list[Rule] | None = None) -> Rule | None:
        """The most specific rule that fullmatches ``data`` (State.best_transition's answer).

        Called outside a judgement (a datagram, at its state and back-off states),
        it spends the budget of ``data`` (see ``Budget``)."""
        budget = self.budget
        if budget.active:
            return self._best(data, cands)
        budget.open(data)
        try:
            return self._best(data, cands)
        finally:
            budget.close()

    def _best(self, data: bytes, cands: list[Rule] | None) -> Rule | None:
        for rule in self.candidates(data) if cands is None else cands:
            if rule.required not in data or rule.excluded(data):  # memmem before regex
                continue
            if rule.fullmatch(data):
                return rule
        return None

    def could_extend(self, data: bytes, cands: list[Rule] | None = None) -> bool:
        """Some pattern could match ``data`` plus more bytes (``data`` does not match it yet)."""
        return any(
            r.could_extend(data) for r in (self.candidates(data) if cands is None else cands)
        )

    def prefix_matches(
        self, data: bytes, cands: list[Rule] | None = None
    ) -> Iterator[tuple[Rule, int]]:
        """(rule, length) for rules that fullmatch a proper prefix of ``data``, best first."""
        for rule in self.candidates(data) if cands is None else cands:
            if rule.required not in data or rule.excluded(data):
                continue
            n = rule.shortest_prefix(data)
            if n:
                yield rule, n


def alike_states(machine: Machine, limit: int = MAX_ALIKE) -> dict[int, tuple[int, ...]]:
    """Per state, up to ``limit`` other states that a transition with the same pattern
    leads to, those with most samples first.

    Why: the learned machine is a tree of positions, so after ``TYPE I`` in one
    session the commands learned after ``TYPE I`` in another are unknown. The
    same request reached both states, so what follows one is a good guess for
    the other (the answer to it was learned there). Linear in transitions:
    each state keeps the first ``limit`` of its group.
    """
    groups: dict[Pattern, set[int]] = {}
    for state in machine.states.values():
        for t in state.transitions:
            if t.target in machine.states:
                groups.setdefault(t.pattern, set()).add(t.target)
    out: dict[int, list[int]] = {}
    for targets in groups.values():
        if len(targets) < 2:
            continue
        ranked = sorted(targets, key=lambda sid: (-machine.states[sid].samples, sid))
        head = ranked[: limit + 1]
        for sid in ranked:
            mine = out.setdefault(sid, [])
            for other in head:
                if other != sid and other not in mine and len(mine) < limit:
                    mine.append(other)
    return {sid: tuple(v) for sid, v in out.items() if v}


@dataclass(slots=True)
class CompiledMachine:
    """A loaded machine with one index per state; built once per model load."""

    machine: Machine
    states: dict[int, StateIndex]
    root: int
    source: str = ""  # the file it came from, for events
    # Where a request ends depends only on (state, buffer, settled): scanners
    # repeat the same requests, so recent decisions are remembered, in one
    # table per machine with a fixed bound (an attacker can fill it, not grow it).
    decisions: dict[tuple[int, bytes, bool], Any] = field(default_factory=dict)
    budget: Budget = field(default_factory=lambda: Budget(MATCH_TIMEOUT))  # shared by its rules
    # Per state, the other states that a transition with the same pattern leads to
    # (``alike_states``): where back-off may also read a request.
    alike: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def cached(self, key: tuple[int, bytes, bool]) -> Any:
        """The remembered decision, or None: the caller judges now (its budget opens)."""
        decision = self.decisions.get(key)
        if decision is None:
            self.budget.open(key[1])
        return decision

    def remember(self, key: tuple[int, bytes, bool], decision: Any) -> None:
        """A judgement's decision (its budget closes)."""
        self.budget.close()
        if len(key[1]) > CACHE_MAX_REQUEST:
            return
        if len(self.decisions) >= CACHE_ENTRIES:
            self.decisions.clear()
        self.decisions[key] = decision

    @classmethod
    def build(
        cls, machine: Machine, source: str = "", timeout: float = MATCH_TIMEOUT
    ) -> CompiledMachine:
        budget = Budget(timeout)
        states = {sid: StateIndex.build(s, timeout, budget) for sid, s in machine.states.items()}
        return cls(
            machine, states, machine.root, source, budget=budget, alike=alike_states(machine)
        )

    @property
    def key(self) -> tuple[str, int]:
        return self.machine.key
