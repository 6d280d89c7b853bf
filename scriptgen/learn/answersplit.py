"""Answer-aware microclustering: split a transition whose answers depend on a region's value.

Region analysis clusters requests only, so requests that differ in one
mutating region (a command word, an id looked up, a name) can share one
transition and one state, while the server answered them differently:
``PING`` and ``DBSIZE`` in ``*1\\r\\n$<1>\\r\\n<1..12>\\r\\n`` get one answer;
a lookup of two different ids gets the answer of one. After refinement this
pass replays the training dialogs, and for each transition looks for a
mutating region whose recurring values predict the answer:

* the requests are grouped by the region's value; only values seen in at
  least ``min_group`` (2) requests count (one sample cannot tell a server
  choice from a per-connection id);
* a group's *signature* is its answers' common length and the bytes that are
  the same in all of them (bytes that vary within the group -- ids,
  challenges, clocks -- are left out); two groups differ when their lengths
  differ or a byte both hold constant differs;
* a *type-like* region (values of at most 2 bytes, fewer distinct values
  than requests, at most about half as many) also counts single requests:
  a value whose requests and answers both have lengths outside those of
  another value's is a message type (the rare commands region analysis
  could not split, 3-5 requests, ``micro_min_count`` 3), while a value that
  predicts only the answer may be chance;
* the region whose differing groups cover most requests wins; each of its
  differing groups (at most ``MAX_SPLITS``, most requests first) becomes a
  sub-transition with the value fixed (more fixed
  bytes: it beats the generic one) leading to a new state that has that
  group's answers as evidence and the generic state's transitions, copied
  after every split is made, so including the generic state's own new
  sub-transitions (the dialog continues as before: the machine becomes a
  DAG).

Measured with ``benchmarks/learn_holdout.py`` (held-out requests matched
unchanged everywhere; mean answer similarity of the states reached): type
fields redis 0.667 -> 0.759, smb139 0.869 -> 0.894, smb445 0.880 -> 0.891,
ftp 0.996 -> 0.996, others unchanged. Copying the splits was needed to keep
"A then B" equal to "A+B" (smb139: 2 dialogs differed without it).

*Exceptions*: a transition learned from fewer than ``EXCEPTION_ROWS`` (8)
requests where no region's values recur (online learning: each argument
seen once) can still hold requests with different answers (``SIZE`` of two
files, a DNS query for two names). When a region's values vary in length
among the requests (names, keys, paths: an argument), the requests are
grouped by the values of every mutating region but those holding a new
value of one length in every request (``_drawn``: a query id, a cookie,
which stay mutating: fixed, the exception would never match again), and
each group whose answer differs from another's (``_differing``, single
requests counted) gets a sub-transition with those regions fixed, flagged
``exception``: the request seen gets its own answer back (a DNS name its
own address, with the new query's id), the generic transition still
answers every other value (the most frequent answer). Content inference
walks past exceptions (the generic state keeps its samples), and the
learner never absorbs or regeneralises them. An exception's state inherits
the generic state's dependencies where the two answers line up, from the
start or, moved by the length difference, from the end
(``inherit_dependencies``); one that cannot inherit every applicable
dependency is dropped (``drop_incomplete_exceptions``: it would send a
stale id where the generic state echoes the live one; SMB1 exceptions lost
the process id echo before this rule). Single requests are evidence
enough here because nothing is lost when one never recurs (the split state
copies the generic state's transitions), and the size bound keeps the
model from growing with large clusters.

The generic transition stays for values never seen. A new state has few
samples, often too few for content inference to prove the ids it must echo;
after inference, ``inherit_dependencies`` gives such a state those of its
parent's dependencies that still apply (the region numbering of the split
pattern is the parent's, so request references stay valid). Nothing here knows a protocol.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from scriptgen.learn.dialog import Dialog
from scriptgen.model import Machine, Pattern, Region, State, Transition

# Requests per value before its answers count as evidence. A new state with fewer
# samples than content inference needs (3) inherits its parent's dependencies
# (inherit_dependencies), or ids it should echo would stay learned constants.
MIN_GROUP = 2
MAX_VALUE_LEN = 256  # longer region values are payloads, not keys
NARROW_LEN = 2  # a type-like field (_narrow) is at most this wide
MAX_ANSWERS = 16  # distinct answers kept as evidence per new state (as the learner)
# Values split off one transition, those with most requests first: every split state
# copies its generic state's transitions, splits included, so successive transitions
# with n values each would otherwise make n x n transitions (hostile input).
MAX_SPLITS = 32
# Transitions learned from fewer requests may split off single requests (exceptions).
EXCEPTION_ROWS = 8


@dataclass(frozen=True, slots=True)
class _Row:
    request: bytes
    match: object  # regex match of the transition's pattern
    answer: bytes
    end: str | None  # how the dialog ended right after this turn, if it did


Key = tuple[bytes, ...]  # the values of the regions a split fixes, in region order


def split_by_answer(
    machine: Machine,
    dialogs: Iterable[Dialog],
    min_group: int = MIN_GROUP,
    exceptions: bool = True,
) -> dict[int, tuple[int, tuple[int, ...]]]:
    """Add sub-transitions where regions' values predict the answer; returns
    {new state id: (the generic state it was split from, the region indices fixed)}.
    ``exceptions`` off (the learner's ``verbatim`` off): nothing exact from single requests."""
    rows = _collect(machine, dialogs)
    parents: dict[int, tuple[int, tuple[int, ...]]] = {}
    for (sid, index), taken in sorted(rows.items(), key=lambda kv: kv[0]):
        state = machine.states[sid]
        transition = state.transitions[index]
        choice = _best_region(transition.pattern, taken, min_group)
        exact = choice is None
        if exact and exceptions:
            choice = _exceptions(transition.pattern, taken)
        if choice is None:
            continue
        ks, groups = choice
        others = [r.request for (s, i), rs in rows.items() if s == sid and i != index for r in rs]
        kept = sorted(groups, key=lambda v: (-len(groups[v]), v))[:MAX_SPLITS]
        for key in sorted(kept):
            values = dict(zip(ks, key, strict=True))
            new = _add(machine, state, transition, values, groups[key], others, exact)
            if new is not None:
                parents[new] = (transition.target, ks)
    # Copied last, so that a split state also has the sub-transitions its generic state
    # gained here: once incremental training merges the two, neither may steal the
    # other's requests into a state that never learned their continuation.
    for new, (generic, _) in sorted(parents.items()):
        machine.states[new].transitions = [
            Transition(t.pattern, t.target, t.samples, list(t.examples), t.verbatim, t.exception)
            for t in machine.states[generic].transitions
        ]
    return parents


def inherit_dependencies(machine: Machine, parents: dict[int, tuple[int, tuple[int, ...]]]) -> int:
    """Give a split state without dependencies those of its parent that still apply;
    returns how many states inherited any.

    A dependency on a split region is left out (the child's pattern holds that
    value fixed and its template already carries it); the others are kept when
    they lie in the part where both templates agree, bytes that the kept
    dependencies rewrite anyway counting as agreeing (an echoed id): the head
    the two templates share keeps its offsets, the tail they share is moved by
    the difference of their lengths (an answer that names the argument is
    longer or shorter in the middle: an echoed cookie at the end still lines up).
    """
    done = 0
    for child_id, (parent_id, ks) in sorted(parents.items()):
        child, parent = machine.states.get(child_id), machine.states.get(parent_id)
        if child is None or parent is None or child.dependencies or not parent.dependencies:
            continue
        kept = _inherited(child.answer, parent.answer, _applicable(parent.dependencies, ks))
        if kept:
            child.dependencies = kept
            done += 1
    return done


def _applicable(deps: list[dict], ks: tuple[int, ...]) -> list[dict]:
    """The parent's dependencies but those copying a region the split fixed."""
    return [dict(d) for d in deps if not (d.get("region") in ks and d.get("request", 0) == 0)]


def _inherited(child: bytes, parent: bytes, deps: list[dict]) -> list[dict]:
    """``deps`` (at the parent template's offsets) that lie where the child's template
    agrees with the parent's, from the start or from the end, moved to the child's."""
    covered = {i for d in deps for i in range(int(d.get("at", 0)), _end(d)) if _end(d) < 1 << 20}
    head = 0
    for i, (x, y) in enumerate(zip(child, parent, strict=False)):
        if x != y and i not in covered:
            break
        head = i + 1
    shift = len(child) - len(parent)
    tail = 0  # bytes agreeing from the end, not overlapping the head in either template
    while tail < min(len(child), len(parent)) - head:
        i = len(parent) - 1 - tail
        if child[i + shift] != parent[i] and i not in covered:
            break
        tail += 1
    out = []
    for d in deps:
        if _end(d) <= head:
            out.append(d)
        elif int(d.get("at", 0)) >= len(parent) - tail and _end(d) <= len(parent):
            out.append({**d, "at": int(d["at"]) + shift})
    return sorted(out, key=lambda d: (int(d["at"]), str(d.get("kind"))))


def drop_incomplete_exceptions(
    machine: Machine, parents: dict[int, tuple[int, tuple[int, ...]]]
) -> int:
    """Remove the exceptions whose state lacks one of its parent's applicable
    dependencies after inference and inheritance (a process id at an offset the
    two templates do not share): it would answer with a stale id where the
    generic state echoes the live one. Returns how many were removed."""
    exceptional = {
        t.target for st in machine.states.values() for t in st.transitions if t.exception
    }
    gone = _lacking(machine, {c: p for c, p in parents.items() if c in exceptional})
    for st in machine.states.values():
        st.transitions = [t for t in st.transitions if not (t.exception and t.target in gone)]
    for sid in gone:
        machine.states.pop(sid, None)
        parents.pop(sid, None)
    return len(gone)


def _lacking(machine: Machine, parents: dict[int, tuple[int, tuple[int, ...]]]) -> set[int]:
    """Split states with fewer dependencies than their parent's applicable ones."""
    lacking = set()
    for child_id, (parent_id, ks) in parents.items():
        child, parent = machine.states.get(child_id), machine.states.get(parent_id)
        if child is None or parent is None:
            continue
        if len(child.dependencies) < len(_applicable(parent.dependencies, ks)):
            lacking.add(child_id)
    return lacking


def _end(dep: dict[str, object]) -> int:
    """Where a dependency's template bytes end (unknown shapes: never inherited)."""
    try:
        at = int(dep["at"])  # type: ignore[call-overload]
        size = int(dep.get("len", dep.get("width", 0)))  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError):
        return 1 << 62
    return at + max(size, 0)


def _collect(machine: Machine, dialogs: Iterable[Dialog]) -> dict[tuple[int, int], list[_Row]]:
    """Replay the dialogs: per (state id, transition index), the turns it took."""
    rows: dict[tuple[int, int], list[_Row]] = defaultdict(list)
    for dialog in dialogs:
        state = machine.states[machine.root]
        turns = dialog.suffix.turns
        for n, turn in enumerate(turns):
            hit = state.best_transition(turn.request)
            if hit is None:
                break
            transition, match = hit
            last = n == len(turns) - 1
            end = (dialog.suffix.end.value if dialog.suffix.end else "client") if last else None
            index = next(i for i, t in enumerate(state.transitions) if t is transition)
            rows[(state.id, index)].append(_Row(turn.request, match, turn.answer, end))
            state = machine.states[transition.target]
    return rows


def _best_region(
    pattern: Pattern, rows: Sequence[_Row], min_group: int
) -> tuple[tuple[int], dict[Key, list[_Row]]] | None:
    """The mutating region whose recurring values split the answers best, and its groups."""
    best: tuple[int, int, dict[bytes, list[_Row]]] | None = None
    for k, region in enumerate(pattern.regions):
        if region.is_fixed:
            continue
        by_value: dict[bytes, list[_Row]] = defaultdict(list)
        for row in rows:
            value = row.request[row.match.start(k + 1) : row.match.end(k + 1)]  # type: ignore[attr-defined]
            if 0 < len(value) <= MAX_VALUE_LEN:
                by_value[value].append(row)
        differing = _differing({v: rs for v, rs in by_value.items() if len(rs) >= min_group})
        if _narrow(by_value, len(rows)):
            differing.update(_shape_differing(by_value))
        covered = sum(len(rs) for rs in differing.values())
        if covered and (best is None or covered > best[1]):
            best = (k, covered, differing)
    if best is None:
        return None
    return (best[0],), {(v,): rs for v, rs in best[2].items()}


def _exceptions(
    pattern: Pattern, rows: Sequence[_Row]
) -> tuple[tuple[int, ...], dict[Key, list[_Row]]] | None:
    """In a transition of fewer than ``EXCEPTION_ROWS`` requests with a region whose
    values vary in length: the regions to fix (every mutating one but those drawn
    per request, ``_drawn``) and the requests grouped by their values there,
    those whose answers differ from another group's (module doc, *exceptions*)."""
    if len(rows) >= EXCEPTION_ROWS:
        return None
    mutating = [k for k, region in enumerate(pattern.regions) if not region.is_fixed]
    values = {k: [_value(row, k) for row in rows] for k in mutating}
    ks = tuple(k for k in mutating if not _drawn(values[k]))
    if not any(len({len(v) for v in values[k]}) > 1 for k in ks):
        return None
    groups: dict[Key, list[_Row]] = defaultdict(list)
    for n, row in enumerate(rows):
        key = tuple(values[k][n] for k in ks)
        if all(key) and len(row.request) <= MAX_VALUE_LEN:
            groups[key].append(row)
    differing = _differing(groups)
    return (ks, differing) if differing else None


def _drawn(values: Sequence[bytes]) -> bool:
    """Values of one length (2+ bytes), a new one in every request: drawn per request
    or connection (a query id, a cookie, a process id), not an argument; fixed, the
    exception would never match again, so it stays mutating."""
    lengths = {len(v) for v in values}
    return len(lengths) == 1 and min(lengths) >= 2 and len(set(values)) == len(values)


def _value(row: _Row, k: int) -> bytes:
    """What the request holds in region ``k`` of the pattern it matched."""
    return row.request[row.match.start(k + 1) : row.match.end(k + 1)]  # type: ignore[attr-defined]


def _differing(groups: dict[bytes, list[_Row]]) -> dict[bytes, list[_Row]]:
    """The groups whose answer signature differs from another group's.

    Signatures of two lengths differ; of one length, a group differs when another
    holds a different constant byte at one of its constant offsets. A group whose
    answers vary in length says nothing reliable. Not compared pairwise: thousands
    of values made that quadratic.
    """
    if len(groups) < 2:
        return {}
    sigs = {v: _signature([r.answer for r in rs]) for v, rs in groups.items()}
    known = {v: sig for v, sig in sigs.items() if sig is not None}
    if len({sig[0] for sig in known.values()}) > 1:
        return {v: groups[v] for v in known}
    seen: dict[int, set[int]] = defaultdict(set)
    for _, consts in known.values():
        for i, byte in consts.items():
            seen[i].add(byte)
    return {
        v: groups[v] for v, (_, consts) in known.items() if any(len(seen[i]) > 1 for i in consts)
    }


def _narrow(by_value: dict[bytes, list[_Row]], total: int) -> bool:
    """A type-like field: at most ``NARROW_LEN`` bytes, few values that recur.

    A 1-2 byte field taking two values in three requests is a message type or
    flag far more often than a per-connection id; in the small clusters that
    rare requests make, it is the only evidence there is.
    """
    if len(by_value) < 2 or any(len(v) > NARROW_LEN for v in by_value):
        return False
    return len(by_value) < total and 2 * len(by_value) <= total + 1


def _shape_differing(by_value: dict[bytes, list[_Row]]) -> dict[bytes, list[_Row]]:
    """Groups (single requests included) that differ from another group in the
    length range of both their requests and their answers.

    A value that predicts the shape of the request and of the answer is a
    message type; one that predicts only the answer (an error for one id, a
    success for another) may be a coincidence of a few samples.
    """
    spans = {
        v: (_span([len(r.request) for r in rs]), _span([len(r.answer) for r in rs]))
        for v, rs in by_value.items()
    }
    apart = _ApartIndex(list(spans.values()))
    return {v: by_value[v] for v, (req, ans) in spans.items() if apart.any_apart(req, ans)}


class _ApartIndex:
    """Whether some (request range, answer range) pair is apart from a given one in
    both: prefix and suffix extremes over the pairs sorted by request range, so that
    thousands of values cost O(n log n), not a comparison of every pair.

    A range is never apart from itself, so a value never counts against itself.
    """

    def __init__(self, spans: list[tuple[tuple[int, int], tuple[int, int]]]) -> None:
        below = sorted(spans, key=lambda s: s[0][1])  # by request max: those left of a range
        above = sorted(spans, key=lambda s: s[0][0])  # by request min: those right of it
        self._below_hi = [s[0][1] for s in below]
        self._above_lo = [s[0][0] for s in above]
        self._below = list(itertools.accumulate(((s[1][1], s[1][0]) for s in below), _extreme))
        rev = itertools.accumulate(((s[1][1], s[1][0]) for s in reversed(above)), _extreme)
        self._above = list(rev)[::-1]

    def any_apart(self, req: tuple[int, int], ans: tuple[int, int]) -> bool:
        n = bisect.bisect_left(self._below_hi, req[0])  # request max < req min
        if n and _outside(self._below[n - 1], ans):
            return True
        m = bisect.bisect_right(self._above_lo, req[1])  # request min > req max
        return m < len(self._above) and _outside(self._above[m], ans)


def _extreme(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """(smallest answer max, largest answer min) of two."""
    return min(a[0], b[0]), max(a[1], b[1])


def _outside(extremes: tuple[int, int], ans: tuple[int, int]) -> bool:
    """Some answer range ends before ``ans`` starts or starts after it ends."""
    return extremes[0] < ans[0] or extremes[1] > ans[1]


def _span(lengths: Sequence[int]) -> tuple[int, int]:
    return min(lengths), max(lengths)


def _signature(answers: Sequence[bytes]) -> tuple[int, dict[int, int]] | None:
    """(length, {offset: byte} constant in every answer); None when lengths vary."""
    length = len(answers[0])
    if any(len(a) != length for a in answers):
        return None
    first = answers[0]
    return length, {i: first[i] for i in range(length) if all(a[i] == first[i] for a in answers)}


def _add(
    machine: Machine,
    state: State,
    generic: Transition,
    values: dict[int, bytes],
    rows: Sequence[_Row],
    others: Sequence[bytes],
    exact: bool = False,
) -> int | None:
    """One sub-transition with each region ``k`` of ``values`` fixed to its value
    (``exact``: an exception, see the module doc); returns the new state's id
    (its transitions are filled in by ``split_by_answer``), None when it would
    duplicate a transition or take a request another transition takes now."""
    regions = list(generic.pattern.regions)
    for k, value in values.items():
        regions[k] = Region(value)
    if exact and all(r.is_fixed for r in regions):  # one request, as a literal
        pattern = Pattern.literal(b"".join(r.fixed or b"" for r in regions))
    else:
        pattern = Pattern(tuple(regions))
    if any(t.pattern == pattern for t in state.transitions):
        return None
    if any(pattern.fullmatch(r) is not None for r in others):
        return None
    target = machine.new_state()
    answers = Counter(r.answer for r in rows)
    target.answers = dict(answers.most_common(MAX_ANSWERS))
    target.samples = len(rows)
    target.ends = dict(Counter(r.end for r in rows if r.end is not None))
    examples = sorted({r.request for r in rows})[:8]
    # An exception is one request kept with its own answer: content inference walks
    # past it, so the generic state keeps its samples and the exception's state
    # inherits its dependencies (inherit_dependencies).
    transition = Transition(pattern, target.id, len(rows), examples, exception=exact)
    state.transitions.append(transition)
    return target.id
