"""The incremental learner: update phase and refinement phase (ScriptGen §4.3).

*Update*: each dialog walks the machine from the root with its requests
(exact match on fixed regions, most fixed bytes wins); every state reached
records evidence (arrivals, the answer seen, how the server ended there).
Where no transition matches, the rest of the dialog goes into that state's
bucket: raw data waiting for enough samples.

*Refinement*: region analysis runs on the first requests of a bucket's
suffixes; each cluster becomes a transition to a new state; the bucket is
emptied and its suffixes re-enter *from that state* (update again), which
fills the buckets one level deeper. Repeating until no bucket yields
anything grows the machine one level per step (the paper's Figure 6).

Training from scratch and training an existing machine on more data are the
same code path: load, update with the new dialogs, refine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import regex

from scriptgen.learn.dialog import Dialog
from scriptgen.model import Machine, Pattern, Region, State, Suffix, Transition


class ClusterLike(Protocol):
    """What region analysis returns per group of requests with one meaning."""

    pattern: Pattern
    members: tuple[int, ...]


# Region analysis with its options bound: requests → clusters (indices into the list).
Analyser = Callable[[Sequence[bytes]], Sequence[ClusterLike]]


@dataclass(frozen=True)
class LearnOptions:
    """Bounds and switches of the learner (region analysis has its own options)."""

    max_bucket: int = 1000  # suffixes kept per state bucket; more are dropped and counted
    max_answers: int = 16  # distinct answers kept as evidence per state
    max_iterations: int = 1024  # refinement steps per training run (≥ dialog depth)
    widen: bool = True  # let a transition's mutating lengths grow to take near misses
    widen_slack: int = 8  # a mutating region may grow by max(slack, its max length) per step

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StepReport:
    """What one refinement step did (for progress display and tests)."""

    iteration: int
    analysed: list[int] = field(default_factory=list)  # states whose bucket was analysed
    new_transitions: int = 0
    widened: int = 0
    bucketed: int = 0  # suffixes in all buckets after the step

    @property
    def learned(self) -> bool:
        return bool(self.new_transitions or self.widened)


DROPPED_KEY = "bucket_dropped"  # provenance: suffixes dropped per state because its bucket was full


class Learner:
    """Update and refinement of one machine; owns no global state."""

    def __init__(self, machine: Machine, analyser: Analyser, options: LearnOptions | None = None):
        self.machine = machine
        self.analyser = analyser
        self.options = options or LearnOptions()
        # Every non-empty bucket is worth one look: the options or the new data may differ.
        self.dirty: set[int] = {s.id for s in machine.states.values() if s.bucket}
        self.iterations = 0

    # -- update phase -------------------------------------------------------

    def add(self, dialogs: Iterable[Dialog]) -> None:
        """Update phase for new dialogs: walk from the root, record evidence, fill buckets."""
        root = self.machine.states[self.machine.root]
        for dialog in dialogs:
            self._arrive(root, dialog.banner)
            self._feed(root, dialog.suffix, refeed_of=None)

    def _arrive(self, state: State, answer: bytes) -> None:
        state.samples += 1
        answers = state.answers
        if answer in answers:
            answers[answer] += 1
        elif len(answers) < self.options.max_answers:
            answers[answer] = 1
        # else: dropped; samples - sum(answers) says how many

    def _feed(self, state: State, suffix: Suffix, refeed_of: int | None) -> None:
        turns = suffix.turns
        for i, turn in enumerate(turns):
            hit = state.best_transition(turn.request)
            if hit is None:
                rest = suffix if i == 0 else Suffix(turns[i:], suffix.end, suffix.origin)
                self._bucket(state, rest, dirty=not (i == 0 and state.id == refeed_of))
                return
            transition = hit[0]
            transition.samples += 1
            state = self.machine.states[transition.target]
            self._arrive(state, turn.answer)
        key = suffix.end.value if suffix.end is not None else "client"
        state.ends[key] = state.ends.get(key, 0) + 1

    def _bucket(self, state: State, suffix: Suffix, dirty: bool) -> None:
        if len(state.bucket) >= self.options.max_bucket:
            dropped = self.machine.provenance.setdefault(DROPPED_KEY, {})
            dropped[str(state.id)] = dropped.get(str(state.id), 0) + 1
            return
        state.bucket.append(suffix)
        if dirty:
            self.dirty.add(state.id)

    # -- refinement phase ---------------------------------------------------

    def refine_step(self) -> StepReport:
        """Analyse every bucket that got new data, add transitions, re-feed the buckets."""
        self.iterations += 1
        report = StepReport(self.iterations)
        todo = sorted(self.dirty)
        self.dirty = set()
        for sid in todo:
            state = self.machine.states.get(sid)
            if state is None or not state.bucket:
                continue
            report.analysed.append(sid)
            if self.options.widen:
                report.widened += self._widen(state)
            created = self._grow(state)
            report.new_transitions += len(created)
            suffixes, state.bucket = state.bucket, []
            for suffix in suffixes:
                self._feed(state, suffix, refeed_of=sid)
            report.new_transitions -= self._prune(state, created)
        report.bucketed = sum(len(s.bucket) for s in self.machine.states.values())
        return report

    def refine(self, on_step: Callable[[StepReport], None] | None = None) -> list[StepReport]:
        """Refinement steps until nothing new is learned (or the iteration bound)."""
        reports = []
        steps = 0
        while self.dirty and steps < self.options.max_iterations:
            report = self.refine_step()
            steps += 1
            reports.append(report)
            if on_step is not None:
                on_step(report)
        return reports

    def _grow(self, state: State) -> list[Transition]:
        """Region analysis on the unmatched first requests of the bucket → new transitions."""
        requests = [
            s.turns[0].request
            for s in state.bucket
            if state.best_transition(s.turns[0].request) is None
        ]
        if not requests:
            return []
        clusters = sorted(self.analyser(requests), key=lambda c: min(c.members, default=0))
        existing = {t.pattern for t in state.transitions}
        created = []
        for cluster in clusters:
            if cluster.pattern in existing:
                continue
            existing.add(cluster.pattern)
            target = self.machine.new_state()
            transition = Transition(cluster.pattern, target.id)
            state.transitions.append(transition)
            created.append(transition)
        return created

    def _prune(self, state: State, created: list[Transition]) -> int:
        """Drop new transitions that no request took (a cluster shadowed by a more specific one)."""
        unused = [t for t in created if t.samples == 0]
        for t in unused:
            state.transitions.remove(t)
            del self.machine.states[t.target]
        return len(unused)

    def _widen(self, state: State) -> int:
        """Let existing transitions take bucketed requests that miss them only by length.

        Region analysis learned each mutating region's length range from the
        samples it saw; a later capture with a longer value would otherwise
        sit in the bucket alone. Fixed regions must still match exactly, and
        only a single, unambiguous near match is widened.
        """
        if not state.transitions:
            return 0
        relaxed: dict[int, tuple[regex.Pattern, int, int] | None] = {}
        widened = 0
        for suffix in state.bucket:
            request = suffix.turns[0].request
            if state.best_transition(request) is not None:
                continue
            hits = []
            for idx, t in enumerate(state.transitions):
                if idx not in relaxed:
                    relaxed[idx] = _relaxed_regex(t.pattern, self.options.widen_slack)
                rx = relaxed[idx]
                if rx is None or not rx[1] <= len(request) <= rx[2]:
                    continue
                m = rx[0].fullmatch(request)
                if m is not None:
                    hits.append((t, m))
            if len(hits) != 1:
                continue
            t, m = hits[0]
            t.pattern = _widened(t.pattern, m)
            widened += 1
        return widened


def _slack(region: Region, slack: int) -> int:
    return max(slack, region.max_len)


def _relaxed_regex(pattern: Pattern, slack: int) -> tuple[regex.Pattern, int, int] | None:
    """The pattern with every mutating length range stretched by the slack, and its
    total length bounds; None when there is nothing fixed to anchor on."""
    if pattern.specificity == 0 or all(r.is_fixed for r in pattern.regions):
        return None
    parts = []
    lo = hi = 0
    for r in pattern.regions:
        if r.fixed is not None:
            parts.append(b"(" + regex.escape(r.fixed) + b")")
            lo, hi = lo + len(r.fixed), hi + len(r.fixed)
        else:
            s = _slack(r, slack)
            a, b = max(0, r.min_len - s), r.max_len + s
            parts.append(b"(.{%d,%d})" % (a, b))
            lo, hi = lo + a, hi + b
    return regex.compile(b"(?s)" + b"".join(parts)), lo, hi


def _widened(pattern: Pattern, match: regex.Match) -> Pattern:
    regions = []
    for i, r in enumerate(pattern.regions, start=1):
        if r.fixed is not None:
            regions.append(r)
            continue
        n = match.end(i) - match.start(i)
        regions.append(Region.mutating(min(r.min_len, n), max(r.max_len, n)))
    return Pattern(tuple(regions))


def replay(machine: Machine, suffix: Suffix) -> tuple[int, int | None]:
    """Walk a dialog without learning: (turns matched, state id where it stopped unmatched or None)."""
    state = machine.states[machine.root]
    for i, turn in enumerate(suffix.turns):
        hit = state.best_transition(turn.request)
        if hit is None:
            return i, state.id
        state = machine.states[hit[0].target]
    return len(suffix.turns), None
