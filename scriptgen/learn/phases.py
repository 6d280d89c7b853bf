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

*Verbatim leftovers*: what is still in a bucket after analysis formed no
cluster of ``min_cluster_size``; each distinct such request becomes an
exact transition (the request byte for byte, flagged ``verbatim``), so that
every training dialog replays, without generalising from fewer samples than
the threshold. Bounded per state and per machine (a flood of one-offs stays
in the bucket, counted).

Training from scratch and training an existing machine on more data are the
same code path: load, update with the new dialogs, refine. Three additions
make "A, then B" learn what "A and B at once" learns, although the model
keeps no past dialogs: *widening* lets a transition's mutating lengths grow
to take a bucketed request that misses it only by length;
*regeneralisation* analyses a bucket together with a few remembered example
requests of each known transition (weighted by the samples they stand for),
so that a cluster joining new requests with one transition's examples leads
to that transition's state (a second incoming transition: the machine is
then a DAG, not a tree); and *sibling merge*: a cluster joining the examples
of several known transitions (A split what A+B keeps whole, or A's one-offs
became verbatim transitions that B's requests now join) merges their target
states, recursively, never into a cycle. A verbatim transition that a
general one comes to cover gives way to it (*absorb*).
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from heapq import heapify, heappop, heappush
from typing import Any, Protocol

import regex

from scriptgen.learn.dialog import Dialog
from scriptgen.model import Machine, Pattern, Region, State, Suffix, Transition
from scriptgen.model.shape import shape


class ClusterLike(Protocol):
    """What region analysis returns per group of requests with one meaning."""

    pattern: Pattern
    members: tuple[int, ...]


# Region analysis with its options bound: requests, and the answer each got (None:
# unknown) → clusters (indices into the list).
Analyser = Callable[[Sequence[bytes], Sequence[bytes | None]], Sequence[ClusterLike]]


@dataclass(frozen=True)
class LearnOptions:
    """Bounds and switches of the learner (region analysis has its own options)."""

    # Suffixes kept per state bucket: when full, a sample that does not depend on
    # arrival order (smallest hash keys); the others are dropped and counted.
    max_bucket: int = 1000
    # Bytes (requests + answers) kept per state bucket, sampled the same way:
    # hostile traffic learned online must not grow memory or the model file.
    max_bucket_bytes: int = 16 << 20
    # A request or answer larger than this ends what a bucket keeps of a
    # conversation (the rest is dropped and counted), and such an answer is
    # not kept as evidence: region analysis never sees more than a few KiB of
    # a request (its max_align_len), so a huge message only costs memory.
    max_message_bytes: int = 1 << 20
    max_answers: int = 16  # distinct answers kept as evidence per state
    max_iterations: int = 1024  # refinement steps per training run (≥ dialog depth)
    widen: bool = True  # let a transition's mutating lengths grow to take near misses
    widen_slack: int = 8  # a mutating region may grow by max(slack, its max length) per step
    # Analyse bucket requests together with examples of the known transitions.
    regeneralise: bool = True
    max_examples: int = 8  # distinct requests remembered per transition (for regeneralise)
    max_example_bytes: int = 4096  # longer requests are not remembered
    # Requests still in a bucket after region analysis (too few alike to form a
    # cluster) become exact transitions, one per distinct request, so every
    # training dialog replays; nothing is generalised from them.
    # Measured on the lab captures (50-100 dialogs each): at most 15 verbatim
    # transitions at one state (redis's root), 163 in one machine (FTP), the
    # longest request 216 bytes; the bounds leave room and stop floods (at most
    # 4096 x 4 KiB of literal requests per machine: a model file that still loads).
    verbatim: bool = True
    max_verbatim: int = 64  # verbatim transitions per state (a flood stays in the bucket)
    max_verbatim_total: int = 4096  # verbatim transitions per machine
    max_verbatim_bytes: int = 4096  # longer requests stay in the bucket

    def __post_init__(self) -> None:
        for name in (
            "max_bucket",
            "max_bucket_bytes",
            "max_message_bytes",
            "max_answers",
            "max_iterations",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in (
            "widen_slack",
            "max_examples",
            "max_example_bytes",
            "max_verbatim",
            "max_verbatim_total",
            "max_verbatim_bytes",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StepReport:
    """What one refinement step did (for progress display and tests)."""

    iteration: int
    analysed: list[int] = field(default_factory=list)  # states whose bucket was analysed
    new_transitions: int = 0  # verbatim ones included
    verbatim: int = 0  # new verbatim transitions
    absorbed: int = 0  # verbatim transitions a general one took over
    merged: int = 0  # states merged into a sibling (what A+B at once would have learned)
    widened: int = 0
    bucketed: int = 0  # suffixes in all buckets after the step

    @property
    def learned(self) -> bool:
        return bool(self.new_transitions or self.widened or self.merged or self.absorbed)


class Learner:
    """Update and refinement of one machine; owns no global state."""

    def __init__(
        self,
        machine: Machine,
        analyser: Analyser,
        options: LearnOptions | None = None,
        salt: bytes = b"",
    ):
        self.machine = machine
        self.analyser = analyser
        self.options = options or LearnOptions()
        # Keys the sample hash of full buckets (_sample_key): online, where the
        # dialogs come from attackers, a secret salt keeps them from choosing
        # which of their requests stay in a full bucket.
        self.salt = salt[:64]
        # Every non-empty bucket is worth one look: the options or the new data may differ.
        self.dirty: set[int] = {s.id for s in machine.states.values() if s.bucket}
        self.iterations = 0
        # Full buckets: a max-heap of (-sample key, tie, suffix) over the bucket's suffixes,
        # the smallest key dropped so far (no larger key gets in), and the bytes kept.
        self._full: dict[int, list[tuple[int, int, Suffix]]] = {}
        self._cut: dict[int, int] = {}
        self._bytes: dict[int, int] = {}
        self._tie = itertools.count()
        self._verbatim_total = _count_verbatim(machine)
        self._merged = 0  # states merged away (sibling merges), for the step reports
        self._merged_into: set[int] = set()  # states that took others in this step

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
        elif (
            len(answers) < self.options.max_answers
            and len(answer) <= self.options.max_message_bytes
        ):
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
            self._remember(transition, turn.request)
            state = self.machine.states[transition.target]
            self._arrive(state, turn.answer)
        key = suffix.end.value if suffix.end is not None else "client"
        state.ends[key] = state.ends.get(key, 0) + 1

    def _remember(self, transition: Transition, request: bytes) -> None:
        kept = transition.examples
        if (
            len(kept) < self.options.max_examples
            and len(request) <= self.options.max_example_bytes
            and request not in kept
        ):
            kept.append(request)

    def _bucket(self, state: State, suffix: Suffix, dirty: bool) -> None:
        """Keep ``suffix`` in the bucket; a full bucket keeps the smallest sample keys.

        Keeping the first arrivals would let one-off junk that fills a bucket
        refuse every later request there forever (nothing new could ever be
        learned at that state, in this run or a later one); the keyed sample
        keeps a share of each kind of request. "Full" is by count
        (``max_bucket``) or by bytes (``max_bucket_bytes``): the kept set is
        the longest run of smallest keys that fits both, so within a run it
        is the same set whatever the arrival order.
        """
        clipped = self._clip(state, suffix)
        if clipped is None:
            return
        suffix = clipped
        opts = self.options
        bucket = state.bucket
        size = _suffix_bytes(suffix)
        used = self._bytes.get(state.id)
        if used is None:
            used = sum(_suffix_bytes(s) for s in bucket)
        cut = self._cut.get(state.id)
        if cut is None and len(bucket) < opts.max_bucket and used + size <= opts.max_bucket_bytes:
            bucket.append(suffix)
            self._bytes[state.id] = used + size
        else:
            key = _sample_key(suffix, self.salt)
            if cut is not None and key >= cut:
                state.dropped += 1
                return
            heap = self._full.get(state.id)
            if heap is None:
                heap = [(-_sample_key(s, self.salt), next(self._tie), s) for s in bucket]
                heapify(heap)
                self._full[state.id] = heap
            heappush(heap, (-key, next(self._tie), suffix))
            bucket.append(suffix)
            used += size
            kept = True
            while len(bucket) > opts.max_bucket or used > opts.max_bucket_bytes:
                neg, _, out = heappop(heap)
                self._cut[state.id] = -neg  # evicted in decreasing key order
                used -= _suffix_bytes(out)
                del bucket[next(i for i, s in enumerate(bucket) if s is out)]
                state.dropped += 1
                kept = kept and out is not suffix
            self._bytes[state.id] = used
            if not kept:
                return
        if dirty:
            self.dirty.add(state.id)

    def _clip(self, state: State, suffix: Suffix) -> Suffix | None:
        """What a bucket keeps of ``suffix``: its turns up to the first message over
        ``max_message_bytes``, and past the first turn no more than an eighth of
        ``max_bucket_bytes`` in all (so that no one conversation can take a
        bucket's budget). A clipped suffix ends unknown (``None``); what was cut
        counts once in ``state.dropped``; None when not even the first turn fits.
        """
        opts = self.options
        share = opts.max_bucket_bytes // 8
        total = 0
        for i, turn in enumerate(suffix.turns):
            n = len(turn.request) + len(turn.answer)
            if (
                len(turn.request) > opts.max_message_bytes
                or len(turn.answer) > opts.max_message_bytes
                or n > opts.max_bucket_bytes
                or (i > 0 and total + n > share)
            ):
                state.dropped += 1
                return Suffix(suffix.turns[:i], None, suffix.origin) if i else None
            total += n
        return suffix

    # -- refinement phase ---------------------------------------------------

    def refine_step(self) -> StepReport:
        """Analyse every bucket that got new data, add transitions, re-feed the buckets.

        Per state: widen, region analysis (with sibling merges), absorb the
        verbatim transitions a general one now covers, re-feed the bucket;
        then what is still in the bucket becomes verbatim transitions and is
        re-fed once more, so the next step works one level deeper.
        """
        self.iterations += 1
        report = StepReport(self.iterations)
        merged_before = self._merged
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
            report.absorbed += self._absorb(state)
            report.new_transitions += len(created)
            self._refeed(state)
            report.new_transitions -= self._prune(state, created)
            if self.options.verbatim and state.bucket:
                made = self._leftovers(state)
                if made:
                    report.verbatim += made
                    report.new_transitions += made
                    self._refeed(state)
        # Merged states hold the transitions of several: a verbatim one of one may be
        # covered by a general one of another (as if they had been analysed together).
        while self._merged_into:
            sid = min(self._merged_into)
            self._merged_into.discard(sid)
            if sid in self.machine.states:
                report.absorbed += self._absorb(self.machine.states[sid])
        report.merged = self._merged - merged_before
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

    def _refeed(self, state: State) -> None:
        """Empty the bucket and walk its suffixes again from ``state`` (new transitions take some)."""
        suffixes, state.bucket = state.bucket, []
        self._forget_bucket(state.id)
        for suffix in suffixes:
            self._feed(state, suffix, refeed_of=state.id)

    def _forget_bucket(self, sid: int) -> None:
        self._full.pop(sid, None)
        self._cut.pop(sid, None)
        self._bytes.pop(sid, None)

    def _grow(self, state: State) -> list[tuple[Transition, bool]]:
        """Region analysis on the unmatched first requests of the bucket → new transitions.

        With ``regeneralise``, examples of the requests each existing
        transition already takes are analysed together with the bucket: a
        cluster that joins new requests with one transition's stand-ins is a
        wider form of that transition and leads to *its* state (as training
        on all the data at once would have), instead of starting a new
        subtree that splits the samples below the cluster-size threshold; a
        cluster that joins several transitions' stand-ins merges their
        states (``_add_clusters``). Returns (transition, made a new state) pairs.
        """
        unmatched = [
            s.turns[0] for s in state.bucket if state.best_transition(s.turns[0].request) is None
        ]
        if not unmatched:
            return []
        pending = [t.request for t in unmatched]
        answers: list[bytes | None] = [t.answer for t in unmatched]
        exemplars: list[bytes] = []
        owners: list[Transition] = []
        if self.options.regeneralise:
            # Exceptions (answersplit) are requests kept with their own answer, taken
            # from a general transition's samples: not a kind to regeneralise.
            for t in (t for t in state.transitions if not t.exception):
                for e, copies in self._weighted_examples(t):
                    exemplars.extend([e] * copies)
                    owners.extend([t] * copies)
        created: list[tuple[Transition, bool]] = []
        taken = self._add_clusters(state, pending, answers, exemplars, owners, created)
        if exemplars:
            # Requests whose cluster could not be placed (it would have taken other
            # transitions' requests, or merging would make a cycle): plain analysis.
            rest = [i for i in range(len(pending)) if i not in taken]
            if rest:
                again = ([pending[i] for i in rest], [answers[i] for i in rest])
                self._add_clusters(state, *again, [], [], created)
        return created

    def _add_clusters(
        self,
        state: State,
        pending: list[bytes],
        answers: list[bytes | None],
        exemplars: list[bytes],
        owners: list[Transition],
        created: list[tuple[Transition, bool]],
    ) -> set[int]:
        """Analyse ``pending`` (+ stand-ins), add the transitions; returns the pending indices used.

        A cluster holding stand-ins of known transitions leads where they
        lead. When it holds those of several (A split what A+B keeps whole,
        or one-offs of A became verbatim transitions that B's requests now
        join), their target states are merged into one (``_merge_states``):
        the machine that all the data at once would have learned. The known
        transitions stay (more specific ones keep winning for their requests,
        now leading to the merged state) except verbatim ones, which the new
        transition absorbs (``_absorb``). Examples are weighted by the samples
        they stand for (``_weighted_examples``), so a microcluster's value
        still recurs and the analysis keeps it apart as before.
        """
        n = len(pending)
        distinct = {id(t): t for t in owners}  # owners repeat each transition per weight
        known = {key: self._answer_of(t) for key, t in distinct.items()}
        said = answers + [known[id(t)] for t in owners]
        clusters = sorted(
            self.analyser(pending + exemplars, said), key=lambda c: min(c.members, default=0)
        )
        existing = {t.pattern for t in state.transitions}
        everyone = [e for t in state.transitions for e in self.examples_of(t)]
        everyone_owner = [t for t in state.transitions for _ in self.examples_of(t)]
        taken: set[int] = set()
        for cluster in clusters:
            new = [i for i in cluster.members if i < n]
            if cluster.pattern in existing or not new:
                continue
            joined = {id(owners[i - n]): owners[i - n] for i in cluster.members if i >= n}
            merging = list(joined.values())
            if self._steals(cluster.pattern, merging, everyone, everyone_owner):
                continue
            targets = sorted({t.target for t in merging})
            target: int | None = targets[0] if targets else None
            if len(targets) > 1:
                target = self._merge_states(targets)
                if target is None:
                    continue  # merging would make a cycle
            existing.add(cluster.pattern)
            fresh = target is None
            if target is None:
                target = self.machine.new_state().id
            transition = Transition(cluster.pattern, target)
            state.transitions.append(transition)
            created.append((transition, fresh))
            taken.update(new)
        return taken

    def _answer_of(self, transition: Transition) -> bytes | None:
        """The answer a transition's examples stand with in analysis: its state's most
        frequent one when all its answers have one shape (None: no answer known,
        or several kinds of answer: nothing to link on)."""
        target = self.machine.states.get(transition.target)
        if target is None or not target.answers:
            return None
        if len({shape(a) for a in target.answers}) > 1:
            return None
        return max(target.answers.items(), key=lambda kv: (kv[1], -len(kv[0]), kv[0]))[0]

    def _weighted_examples(self, transition: Transition) -> list[tuple[bytes, int]]:
        """The examples, each with its share of the transition's samples (at least 1,
        ``max_bucket`` in all): re-analysis then sees about the multiset that all
        the data at once would show, so a value that recurred (a microcluster)
        recurs again instead of counting once among the new requests."""
        examples = self.examples_of(transition)
        weight = max(len(examples), min(transition.samples, self.options.max_bucket))
        share, extra = divmod(weight, len(examples)) if examples else (0, 0)
        return [(e, share + (k < extra)) for k, e in enumerate(examples)]

    def examples_of(self, transition: Transition) -> list[bytes]:
        """Requests the transition took; stand-ins made from its pattern when none were kept."""
        if transition.examples:
            return transition.examples
        return _exemplars(transition.pattern)

    @staticmethod
    def _steals(
        pattern: Pattern,
        allowed: Sequence[Transition],
        exemplars: list[bytes],
        owners: list[Transition],
    ) -> bool:
        """True when ``pattern`` would take requests a transition other than ``allowed`` takes now."""
        mine = {id(t) for t in allowed}
        for e, t in zip(exemplars, owners, strict=True):
            if id(t) in mine or pattern.specificity <= t.pattern.specificity:
                continue
            if pattern.fullmatch(e) is not None:
                return True
        return False

    def _prune(self, state: State, created: list[tuple[Transition, bool]]) -> int:
        """Drop new transitions that no request took (a cluster shadowed by a more specific one)."""
        unused = [(t, fresh) for t, fresh in created if t.samples == 0 and t in state.transitions]
        for t, fresh in unused:
            state.transitions.remove(t)
            if fresh and t.target in self.machine.states and not self._incoming(t.target):
                del self.machine.states[t.target]
        return len(unused)

    def _incoming(self, sid: int) -> bool:
        return any(t.target == sid for s in self.machine.states.values() for t in s.transitions)

    # -- verbatim leftovers ---------------------------------------------------

    def _leftovers(self, state: State) -> int:
        """Exact transitions for the distinct requests still in the bucket after analysis.

        They formed no cluster of ``min_cluster_size``, so nothing may be
        generalised from them; but the server's answer to exactly that
        request is known, and so is the rest of the dialog, which refinement
        learns below the new state as usual. The most frequent first (ties:
        shorter, then bytewise), up to ``max_verbatim`` per state and
        ``max_verbatim_total`` per machine: a flood of one-offs stays in the
        bucket, counted. Returns how many were made.
        """
        opts = self.options
        have = sum(1 for t in state.transitions if t.verbatim)
        room = min(opts.max_verbatim - have, opts.max_verbatim_total - self._verbatim_total)
        if room <= 0:
            return 0
        counts = Counter(s.turns[0].request for s in state.bucket)
        ranked = sorted(
            (r for r in counts if len(r) <= opts.max_verbatim_bytes),
            key=lambda r: (-counts[r], len(r), r),
        )
        made = 0
        for request in ranked[:room]:
            if state.best_transition(request) is not None:
                continue
            target = self.machine.new_state()
            state.transitions.append(Transition(Pattern.literal(request), target.id, verbatim=True))
            made += 1
        self._verbatim_total += made
        return made

    def _absorb(self, state: State) -> int:
        """Verbatim transitions that a general transition now matches give way to it.

        The general one (most fixed bytes among those matching the literal)
        takes over the samples and examples; when it leads elsewhere, the two
        target states are merged, as if the one-off had been in its cluster
        from the start. Returns how many were absorbed.
        """
        general = [t for t in state.transitions if not t.verbatim and not t.exception]
        if not general:
            return 0
        absorbed = 0
        for v in [t for t in state.transitions if t.verbatim]:
            literal = b"".join(r.fixed or b"" for r in v.pattern.regions)
            best: Transition | None = None
            for g in general:
                if best is not None and g.pattern.specificity <= best.pattern.specificity:
                    continue
                if g.pattern.fullmatch(literal) is not None:
                    best = g
            if best is None:
                continue
            if best.target != v.target and self._merge_states([best.target, v.target]) is None:
                continue
            state.transitions.remove(v)
            best.samples += v.samples
            for e in v.examples:
                self._remember(best, e)
            self._verbatim_total -= 1
            absorbed += 1
        return absorbed

    # -- sibling merge ----------------------------------------------------------

    def _merge_states(self, ids: Sequence[int]) -> int | None:
        """Merge the states ``ids`` into one; returns its id, or None (nothing changed)
        when the merge would make a cycle.

        What all the data at once would have learned is one state with the
        union of the evidence (answers, ends, samples, buckets) and of the
        transitions. Transitions with equal patterns become one, so their
        targets are merged too, recursively (computed first, as a closure).
        Every edge into a merged-away state is redirected to the survivor
        (the root if it is among them, else the smallest id: deterministic).
        The merged-away buckets are fed again from the survivor. Bounded:
        each union removes a state.
        """
        states = self.machine.states
        root = self.machine.root
        parent: dict[int, int] = {}

        def find(x: int) -> int:
            path = []
            while parent.get(x, x) != x:
                path.append(x)
                x = parent[x]
            for p in path:
                parent[p] = x
            return x

        patterns: dict[int, dict[Pattern, int]] = {}

        def outgoing(sid: int) -> dict[Pattern, int]:
            if sid not in patterns:
                table: dict[Pattern, int] = {}
                for t in states[sid].transitions:
                    table.setdefault(t.pattern, t.target)
                patterns[sid] = table
            return patterns[sid]

        work = [(ids[0], other) for other in ids[1:]]
        while work:
            a, b = work.pop()
            ra, rb = find(a), find(b)
            if ra == rb:
                continue
            keep, gone = sorted((ra, rb), key=lambda x: (x != root, x))
            parent[gone] = keep
            mine = outgoing(keep)
            for pattern, target in outgoing(gone).items():
                if pattern in mine:
                    work.append((mine[pattern], target))
                else:
                    mine[pattern] = target
            patterns.pop(gone, None)
        if not parent:
            return find(ids[0])
        if _cyclic(states, parent, find):
            return None
        refeed: list[tuple[int, Suffix]] = []
        for gid in sorted(parent):
            gone = states.pop(gid)
            keep = states[find(gid)]
            self._fold(keep, gone)
            refeed.extend((keep.id, s) for s in gone.bucket)
            self._forget_bucket(gid)
            self.dirty.discard(gid)
            self._merged += 1
        for s in states.values():
            for t in s.transitions:
                if t.target in parent:  # a dict lookup per edge, not a call: merges are many
                    t.target = find(t.target)
        survivors = sorted({find(g) for g in parent})
        verbatim = _count_verbatim_of(states[s] for s in survivors)
        for s in survivors:
            _dedupe(states[s], self)
            self._merged_into.add(s)
        self._verbatim_total += _count_verbatim_of(states[s] for s in survivors) - verbatim
        for sid, suffix in refeed:
            self._feed(states[sid], suffix, refeed_of=None)
        return find(ids[0])

    def _fold(self, keep: State, gone: State) -> None:
        """Add ``gone``'s evidence and transitions to ``keep`` (targets are redirected later)."""
        keep.samples += gone.samples
        keep.dropped += gone.dropped
        for answer, count in gone.answers.items():
            keep.answers[answer] = keep.answers.get(answer, 0) + count
        if len(keep.answers) > self.options.max_answers:
            top = sorted(keep.answers.items(), key=lambda kv: (-kv[1], kv[0]))
            keep.answers = dict(top[: self.options.max_answers])
        for key, count in gone.ends.items():
            keep.ends[key] = keep.ends.get(key, 0) + count
        for signal in gone.signals:
            if signal not in keep.signals:
                keep.signals.append(signal)
        if not keep.dependencies:
            keep.dependencies = gone.dependencies
        keep.transitions.extend(gone.transitions)

    def _widen(self, state: State) -> int:
        """Let existing transitions take bucketed requests that miss them only by length.

        Region analysis learned each mutating region's length range from the
        samples it saw; a later capture with a longer value would otherwise
        sit in the bucket alone. Fixed regions must still match exactly, only
        a single, unambiguous near match is widened, and never so far that it
        would take the known requests of a less specific sibling.
        """
        if not state.transitions:
            return 0
        relaxed: dict[int, Pattern | None] = {}
        widened = 0
        for suffix in state.bucket:
            request = suffix.turns[0].request
            if state.best_transition(request) is not None:
                continue
            hits = []
            for idx, t in enumerate(state.transitions):
                if idx not in relaxed:
                    relaxed[idx] = _relaxed(t.pattern, self.options.widen_slack)
                rx = relaxed[idx]
                m = None if rx is None else rx.fullmatch(request)
                if m is not None:
                    hits.append((t, m))
            if len(hits) != 1:
                continue
            t, m = hits[0]
            wider = _widened(t.pattern, m)
            others = [(e, u) for u in state.transitions if u is not t for e in self.examples_of(u)]
            if self._steals(wider, [t], [e for e, _ in others], [u for _, u in others]):
                continue  # the wider form would take requests another transition takes now
            t.pattern = wider
            widened += 1
        return widened


def _count_verbatim(machine: Machine) -> int:
    return _count_verbatim_of(machine.states.values())


def _count_verbatim_of(states: Iterable[State]) -> int:
    return sum(1 for s in states for t in s.transitions if t.verbatim)


def _cyclic(states: dict[int, State], parent: dict[int, int], find: Callable[[int], int]) -> bool:
    """Whether merging the states that ``parent`` joins (``find``: a state's survivor)
    would make a cycle (a transition into its own merged state counts).

    The learner keeps the machine acyclic, so a new cycle passes through a
    merged state: an iterative DFS from those only, over what they reach.
    Checking the whole machine per merge made thousands of merges (verbatim
    transitions absorbed one by one) quadratic.
    """
    members: dict[int, list[int]] = {}
    for x in parent:
        members.setdefault(find(x), []).append(x)
    for rep, group in members.items():
        group.append(rep)

    def out(node: int) -> Iterator[int]:
        targets = {find(t.target) for x in members.get(node, (node,)) if x in states
                   for t in states[x].transitions}  # fmt: skip
        return iter(sorted(targets))

    colour: dict[int, int] = {}  # 1: on the stack, 2: done
    for start in sorted(members):
        if start in colour:
            continue
        stack = [(start, out(start))]
        colour[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
            elif colour.get(nxt) == 1:
                return True
            elif nxt not in colour:
                colour[nxt] = 1
                stack.append((nxt, out(nxt)))
    return False


def _dedupe(state: State, learner: Learner) -> None:
    """One transition per pattern (after a merge two may be equal: same target by then)."""
    kept: dict[Pattern, Transition] = {}
    out = []
    for t in state.transitions:
        first = kept.get(t.pattern)
        if first is None:
            kept[t.pattern] = t
            out.append(t)
            continue
        first.samples += t.samples
        first.verbatim = first.verbatim and t.verbatim
        first.exception = first.exception and t.exception
        for e in t.examples:
            learner._remember(first, e)
    state.transitions = out


def _suffix_bytes(suffix: Suffix) -> int:
    return sum(len(t.request) + len(t.answer) for t in suffix.turns)


def _sample_key(suffix: Suffix, salt: bytes = b"") -> int:
    """A suffix's place in a full bucket's sample (smaller is kept): a hash, so
    the kept set is a fair sample and does not depend on arrival order; keyed
    with ``salt`` (at most 64 bytes) when one is given, so that nobody who
    does not know it can compute which suffixes stay."""
    h = hashlib.blake2b(digest_size=8, key=salt[:64])
    for turn in suffix.turns:
        h.update(len(turn.request).to_bytes(8, "little"))
        h.update(turn.request)
    h.update(suffix.origin.encode("utf-8", "replace"))
    return int.from_bytes(h.digest(), "big")


def _slack(region: Region, slack: int) -> int:
    return max(slack, region.max_len)


def _relaxed(pattern: Pattern, slack: int) -> Pattern | None:
    """The pattern with every mutating length range stretched by the slack; None
    when there is nothing fixed to anchor on. A ``Pattern``, so that a long
    request is matched without regex backtracking (see ``Pattern.feasible``)
    and its groups still number the regions."""
    if pattern.specificity == 0 or all(r.is_fixed for r in pattern.regions):
        return None
    regions = []
    for r in pattern.regions:
        if r.fixed is not None:
            regions.append(r)
        else:
            s = _slack(r, slack)
            regions.append(Region.mutating(max(0, r.min_len - s), r.max_len + s))
    return Pattern(tuple(regions))


def _widened(pattern: Pattern, match: regex.Match) -> Pattern:
    regions = []
    for i, r in enumerate(pattern.regions, start=1):
        if r.fixed is not None:
            regions.append(r)
            continue
        n = match.end(i) - match.start(i)
        regions.append(Region.mutating(min(r.min_len, n), max(r.max_len, n)))
    return Pattern(tuple(regions))


def _exemplars(pattern: Pattern) -> list[bytes]:
    """Requests ``pattern`` takes, as stand-ins for the samples it was learned from
    (the model keeps no request bytes): fixed regions as learned, mutating ones
    filled with deterministic noise of their shortest and longest length."""
    lengths = {tuple(r.min_len for r in pattern.regions), tuple(r.max_len for r in pattern.regions)}
    out = []
    for sizes in sorted(lengths):
        parts = []
        for k, (r, size) in enumerate(zip(pattern.regions, sizes, strict=True)):
            if r.fixed is not None:
                parts.append(r.fixed)
            else:
                parts.append(_noise(k, size))
        out.append(b"".join(parts))
    return out


def _noise(seed: int, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:size])


def replay(machine: Machine, suffix: Suffix) -> tuple[int, int | None]:
    """Walk a dialog without learning: (turns matched, state id where it stopped unmatched or None)."""
    state = machine.states[machine.root]
    for i, turn in enumerate(suffix.turns):
        hit = state.best_transition(turn.request)
        if hit is None:
            return i, state.id
        state = machine.states[hit[0].target]
    return len(suffix.turns), None
