"""Per-state indexes over a loaded machine, so matching cost does not grow
linearly with the number of transitions at a state.

Why: a state that leaves through hundreds of learned transitions (every SMB
command, every FTP verb, microclusters of each) would otherwise run hundreds
of regular expressions per request. Most patterns have a fixed region at a
constant offset from the start (only fixed-length regions before it); the
first bytes of the longest such region are the pattern's *anchor*. Each state keeps a dict per
(offset, anchor length) from anchor bytes to the rules with that anchor, so a
request only meets the rules whose anchor it actually carries, plus the few
"floating" rules without a constant-offset anchor. Candidates are tried in
order of decreasing specificity (ties: transition order), so the first full
match is the answer of ``State.best_transition`` and the search stops there.

The result must always equal ``State.best_transition`` (the model's matching
function); the tests check that on random machines.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import regex

from scriptgen.model import End, Machine, Pattern, State, Transition

ANCHOR_BYTES = 16  # bytes of the anchoring fixed region used as the dict key
CACHE_ENTRIES = 1024  # decisions remembered per state
CACHE_MAX_REQUEST = 512  # only for buffers up to this size


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
    anchor: tuple[int, bytes] | None  # (offset, first bytes of a fixed region)
    tail_max: int | None  # max length of a final mutating region (None: ends fixed)
    literal: bytes | None  # the only request it accepts, when all regions are fixed
    required: bytes  # its longest fixed region: a full or prefix match contains it

    def __repr__(self) -> str:
        return f"Rule({self.order}: {self.pattern.describe()} -> {self.target})"

    @property
    def sort_key(self) -> tuple[int, int]:
        return (-self.specificity, self.order)

    def fullmatch(self, data: bytes) -> bool:
        if self.literal is not None:
            return data == self.literal
        return self.pattern.fullmatch(data) is not None

    def match(self, data: bytes) -> Any:
        """The regex match (live values of the regions), for later stages."""
        return self.pattern.fullmatch(data)

    def could_extend(self, data: bytes) -> bool:
        """More bytes appended to ``data`` could make a match (``data`` is not one yet)."""
        if self.literal is not None:
            return len(data) < len(self.literal) and self.literal.startswith(data)
        return self.pattern.could_extend(data)

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
        m = self.pattern.fullmatch(data)
        last = len(self.pattern.regions)
        return m is not None and m.end(last) - m.start(last) < self.tail_max

    def shortest_prefix(self, data: bytes) -> int:
        """Length of the shortest proper prefix of ``data`` this rule fullmatches (0: none)."""
        if self.literal is not None:
            n = len(self.literal)
            return n if 0 < n < len(data) and data.startswith(self.literal) else 0
        if len(data) <= self.pattern.min_len:
            return 0
        m = self.prefix_re.match(data)
        return m.end() if m is not None and 0 < m.end() < len(data) else 0


def _prefix_regex(pattern: Pattern) -> Any:
    """The pattern with lazy quantifiers, for finding where a request ends in a stream."""
    parts = []
    for region in pattern.regions:
        if region.fixed is not None:
            parts.append(regex.escape(region.fixed))
        else:
            parts.append(b".{%d,%d}?" % (region.min_len, region.max_len))
    return regex.compile(b"(?s)" + b"".join(parts))


def _literal(pattern: Pattern) -> bytes | None:
    if all(r.fixed is not None for r in pattern.regions):
        return b"".join(r.fixed for r in pattern.regions)  # type: ignore[misc]
    return None


def _tail_max(pattern: Pattern) -> int | None:
    if not pattern.regions or pattern.regions[-1].fixed is not None:
        return None
    last = pattern.regions[-1]
    return last.max_len if last.max_len > last.min_len else None


def _anchor(pattern: Pattern) -> tuple[int, bytes] | None:
    """The longest fixed region at a constant offset (only fixed-length regions
    before it), as (offset, its first ANCHOR_BYTES bytes)."""
    best: tuple[int, bytes] | None = None
    offset = 0
    for region in pattern.regions:
        if region.fixed is not None and region.fixed:
            if best is None or len(region.fixed) > len(best[1]):
                best = (offset, region.fixed[:ANCHOR_BYTES])
        elif region.min_len != region.max_len:
            break
        offset += region.min_len
    return best


@dataclass(slots=True, repr=False)
class StateIndex:
    """A state's answer, end and transitions, indexed for matching."""

    id: int
    answer: bytes
    end: End
    rules: list[Rule]
    groups: list[tuple[int, int, dict[bytes, list[Rule]]]] = field(default_factory=list)
    floating: list[Rule] = field(default_factory=list)
    # Where a request ends depends only on (state, buffer, settled): scanners
    # repeat the same requests, so remember recent decisions.
    decisions: dict[tuple[bytes, bool], Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"StateIndex({self.id}, {len(self.rules)} rules)"

    @classmethod
    def build(cls, state: State) -> StateIndex:
        rules = []
        for order, t in enumerate(state.transitions):
            rules.append(
                Rule(
                    order=order,
                    transition=t,
                    pattern=t.pattern,
                    target=t.target,
                    specificity=t.pattern.specificity,
                    prefix_re=_prefix_regex(t.pattern),
                    anchor=_anchor(t.pattern),
                    tail_max=_tail_max(t.pattern),
                    literal=_literal(t.pattern),
                    required=max(
                        (r.fixed for r in t.pattern.regions if r.fixed), key=len, default=b""
                    ),
                )
            )
            t.pattern.compiled  # noqa: B018 - compile now (off the reactor thread), not at first use
        index = cls(state.id, state.answer, state.end, rules)
        by_shape: dict[tuple[int, int], dict[bytes, list[Rule]]] = {}
        for rule in sorted(rules, key=lambda r: r.sort_key):
            if rule.anchor is None:
                index.floating.append(rule)
                continue
            offset, key = rule.anchor
            by_shape.setdefault((offset, len(key)), {}).setdefault(key, []).append(rule)
        index.groups = [(o, k, m) for (o, k), m in sorted(by_shape.items())]
        return index

    def candidates(self, data: bytes) -> list[Rule]:
        """Rules that could match ``data`` or a prefix/extension of it, best first."""
        found: list[Rule] = list(self.floating)
        several = False
        for offset, size, table in self.groups:
            if len(data) >= offset + size:
                hit = table.get(data[offset : offset + size])
                if hit:
                    several = several or bool(found)
                    found.extend(hit)
            else:  # partial request: the anchor is not all there yet
                seen = data[offset:]
                for key, rules in table.items():
                    if key.startswith(seen):
                        several = several or bool(found)
                        found.extend(rules)
        if several:
            found.sort(key=lambda r: r.sort_key)
        return found

    def best(self, data: bytes, cands: list[Rule] | None = None) -> Rule | None:
        """The most specific rule that fullmatches ``data`` (State.best_transition's answer)."""
        for rule in self.candidates(data) if cands is None else cands:
            if rule.required not in data:  # cheap memmem before the regex
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
            if rule.required not in data:
                continue
            n = rule.shortest_prefix(data)
            if n:
                yield rule, n

    def cached(self, key: tuple[bytes, bool]) -> Any:
        return self.decisions.get(key)

    def remember(self, key: tuple[bytes, bool], decision: Any) -> None:
        """Keep a decision for a small buffer; the table is bounded (cleared when full)."""
        if len(key[0]) > CACHE_MAX_REQUEST:
            return
        if len(self.decisions) >= CACHE_ENTRIES:
            self.decisions.clear()
        self.decisions[key] = decision


@dataclass(slots=True)
class CompiledMachine:
    """A loaded machine with one index per state; built once per model load."""

    machine: Machine
    states: dict[int, StateIndex]
    root: int
    source: str = ""  # the file it came from, for events

    @classmethod
    def build(cls, machine: Machine, source: str = "") -> CompiledMachine:
        states = {sid: StateIndex.build(s) for sid, s in machine.states.items()}
        return cls(machine, states, machine.root, source)

    @property
    def key(self) -> tuple[str, int]:
        return self.machine.key
