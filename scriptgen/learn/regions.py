"""Region analysis: the requests leaving one state → clusters with patterns.

The core of the learner (ScriptGen, RAID 2006, and DESIGN.md "Region
analysis"). Given the first requests of the suffixes in a state's bucket,
``analyse`` returns one ``Cluster`` per group of requests believed to share
a meaning, each with a ``Pattern`` of fixed and mutating regions that
fullmatches every member:

1. *distances*: all pairs, normalised Indel distance (1 - 2·LCS/(|a|+|b|))
   from ``rapidfuzz.process.cdist`` on each message's head and tail
   (``max_distance_len``); identical messages are analysed once, weighted.
2. *macroclustering*: ``scipy.cluster.hierarchy.linkage`` (``linkage``,
   average by default) cut at ``distance_threshold``; clusters holding fewer
   than ``min_cluster_size`` requests are dropped (they stay in the bucket).
   When the caller passes the answers, a pair just past the cut (up to
   ``answer_link_distance``) that differs in one span behind a shared head
   and got answers of one shape is brought to the cut first
   (``_link_by_answers``: ``CWD docs`` / ``CWD pub`` are 0.37 apart).
3. *alignment*: per cluster, a progressive multiple alignment along the
   clustering tree (``scriptgen.learn.align``); columns where every request
   has the same byte are fixed, others mutating; fixed islands shorter than
   ``min_fixed_island`` between mutating runs are folded into them; a
   mutating region's length range is the range of byte counts the members
   put in it, so the pattern matches every member by construction.
4. *microclustering*: candidate spans are the mutating regions and the
   gap-free column runs inside them (a command word aligned by
   substitution next to a free argument); a value recurring in
   ≥ ``micro_min_count`` requests and ≥ ``micro_min_fraction`` of the
   cluster is recurring; the span whose recurring values split the cluster
   most evenly (entropy of the partition, so a nearly constant byte does
   not win over a command field) splits it, each recurring value becoming
   a fixed region of its sub-cluster, which is refined again
   (``micro_max_depth`` levels, ``max_clusters`` in all). A region where
   every request holds the same bytes (placed in different columns by the
   alignment) is made fixed first, without costing a level.
   The generic parent is kept as its own cluster whose members are the
   requests with non-recurring values (``keep_generic``): the matching
   function prefers the sub-clusters (more fixed bytes), and the parent
   still takes the next value nobody has seen yet. When every member had a
   recurring value there is no parent cluster (the values are taken to be
   distinct commands, not samples of a free field). Clusters whose
   patterns have the same fixed regions in the same order are merged
   (macroclustering can cut a family of random arguments in two).
5. *generalisation*: a variable-width mutating region [a, b] becomes
   [⌊a/(1+s)⌋, ⌈b·(1+s)⌉] with s = ``length_slack``; fixed-width ones
   (a = b: ids, counters, lengths) stay exact, except in a cluster of fewer
   than 2 × ``min_cluster_size`` requests, where a fixed width above
   ``NARROW`` (4) bytes that no narrow fixed-width region follows is
   widened too: three requests whose variable field happened to be 16 bytes
   long say little about the next one, while a short id after it must keep
   its offset (widening an SMB1 signature unlinked the process id for
   content inference: tests/test_content_captures.py)
   (``benchmarks/learn_holdout.py``: held-out requests matched lsarpc139
   193 -> 198 of 286, others unchanged; answer similarity 0.916 -> 0.915).
   Minimums are capped at ``max_align_len`` (``regex`` compiles ``.{n,m}``
   in time linear in n).
6. requests that ended in no cluster (small clusters, or beyond
   ``max_samples``) join the most specific returned pattern that fullmatches
   them.

Why these libraries (``benchmarks/region_speed.py`` on the shared 2-core
box at load 5-7, so absolute times are ~2-3× an idle machine's; ranges over
two runs): all pairs of 200 printable ~1 KB messages take 0.5-4 s with
rapidfuzz ``cdist`` + Indel (Levenshtein 1.4-6.8 s), against 10-23 s for
edlib, 17-56 s for parasail and 129-385 s for Biopython, which have no
all-pairs call and need a Python loop over pairs. On the 256-byte
head+tail actually compared, interleaved runs give Indel 0.02-0.04 s and
Levenshtein 0.15-0.22 s for the 200 × 200 matrix: Indel (bit-parallel
LCS) clusters. One alignment of two 4 KB messages: rapidfuzz
``Levenshtein.opcodes`` 3.9-6.6 ms, edlib 27-32 ms, parasail 74-110 ms,
Biopython 595-784 ms; Levenshtein aligns (a substitution keeps a
fixed-width field in one column, Indel would split it in a delete and an
insert). rapidfuzz takes ``bytes`` directly (same speed and results as
``str``). ``analyse`` itself: 100 requests of 1 KB 0.4 s, 1000 requests
of 4 KB 5 s and 14 MB peak (500 distinct analysed, the rest joined by
fullmatch).

How the defaults were chosen. Data: the lab captures (tests/data/captures:
vsftpd, redis, dnsmasq, samba on 139/445 and lsarpc; 50 runs each) plus
zeek ftp__bruteforce and mysql__auth; the client requests at the same
position of every connection stand for one state's bucket (35 buckets,
1707 requests), labelled by command (FTP verb, SMB1/SMB2 command, redis
command) in a throwaway script. "Mixed" counts requests in a cluster whose
majority command is another; "holdout" analyses the even requests of each
bucket and matches the odd ones (851) against the patterns, most specific
first, counting matches and wrong-command matches.

* ``distance_threshold`` (average linkage), covered / mixed / holdout
  matched / holdout wrong: 0.20: 89.5 % / 0; 0.30: 94.1 % / 3, 90.2 % / 2;
  0.35: 95.7 % / 7, 91.8 % / 3; 0.40: 97.6 % / 14, 94.2 % / 10;
  0.45: 98.8 % / 21, 96.1 % / 19; 0.50: 99.7 % / 26. 0.35 is the knee:
  beyond it wrong matches grow faster than coverage.
* ``linkage`` at 0.35: average 95.7 % / 7 mixed, weighted the same,
  complete 94.9 % / 7, single 98.2 % / 48 (chaining merges commands).
* ``max_distance_len``: 64 or 128 bytes give 17 mixed, 256 and 512 give 7.
* ``micro_min_count`` / ``micro_min_fraction``: 2 / 0.1 gives 14 mixed,
  3 / 0.1 gives 7, 5 / 0.1 gives 21; fraction 0.05 / 0.2 at count 3: 7 / 9.
* ``micro_max_depth``: 2, 3 and 5 give the same clusters here; 3 leaves room.
* ``keep_generic``: holdout matched 91.8 % with, 89.5 % without.
* ``min_fixed_island`` 1 / 2 / 3: holdout 91.3 % (1 wrong) / 91.8 % (3) /
  91.9 % (4); 2 keeps 2-byte fixed fields between ids (an SMB-like uid
  between pid and mid) while folding single bytes that line up by chance.
* ``length_slack`` 0 / 0.5 / 1 / 2: holdout 91.5 / 91.8 / 91.8 / 91.9 %,
  no wrong match added; 1 (double the longest value seen) is the default.

Known limit: short text requests whose random argument is most of the
message (``PASS`` + 8-16 random alphanumerics) are ~0.45 apart and do not
cluster at 0.35; they stay in the bucket (26-letter 6-12 character words
do cluster).

Nothing here knows any protocol: the tests hold the protocol facts.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Indel
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform

from scriptgen.learn.align import GAP, Alignment, Layout, head_tail, layout, merge, runs
from scriptgen.model import Pattern, Region
from scriptgen.model.shape import shape

LINKAGES = ("average", "complete", "single", "weighted")
# Fixed-width mutating regions up to this wide stay exact even in small clusters
# (ids, types, flags, lengths); wider ones there are generalised (``_widen``).
# 2 also widened 3-4 byte ids (a DNS query id with a chance-mutating byte next to
# it); 8 kept the lsarpc139 held-out gain from coming (module doc, step 5).
NARROW = 4
# Two requests just past the cut (``answer_link_distance``) join only when they
# share at least this many first bytes and one last byte and differ in one span
# between: a difference at the start is where messages of different kinds differ
# (``_link_by_answers``).
LINK_HEAD = 4
# ... and the span they differ in is at most this many times the bytes they share.
LINK_SPAN = 2


@dataclass(frozen=True)
class RegionOptions:
    """Thresholds and bounds of region analysis (all saved in the model's provenance)."""

    # Macroclustering cut on the normalised Indel distance (0 = same, 1 = nothing shared).
    distance_threshold: float = 0.35
    # How scipy merges clusters; average (UPGMA) separated commands best.
    linkage: str = "average"
    # Macroclusters with fewer requests (duplicates counted) make no transition.
    min_cluster_size: int = 3
    # A mutating region's value recurring at least this often ...
    micro_min_count: int = 3
    # ... and in at least this fraction of the cluster becomes a sub-cluster.
    micro_min_fraction: float = 0.1
    # Nesting of microcluster splits.
    micro_max_depth: int = 3
    # Keep the generic parent of a split for the non-recurring requests.
    keep_generic: bool = True
    # Fixed runs shorter than this between mutating runs are folded into them.
    min_fixed_island: int = 2
    # At most this many distinct requests are analysed per call: the most
    # frequent first, ties in a hash order (deterministic); others can
    # still join a cluster whose pattern matches them.
    max_samples: int = 500
    # Distances are computed on at most this many bytes per request
    # (3/4 head, 1/4 tail).
    max_distance_len: int = 256
    # Alignment uses at most this many bytes per request (3/4 head, 1/4
    # tail); the elided middle lands in a mutating region.
    max_align_len: int = 4096
    # Widening of variable-width mutating regions (generalisation), see module doc.
    length_slack: float = 1.0
    # At most this many clusters per call.
    max_clusters: int = 256
    # Threads for the distance matrix (rapidfuzz); results do not depend on it.
    workers: int = 1
    # Two requests farther apart than ``distance_threshold`` but at most this far
    # (same head and tail) are linked at the cut when the server answered both in
    # one shape (only when ``analyse`` gets the answers); <= the cut: never.
    answer_link_distance: float = 0.5

    def __post_init__(self) -> None:
        for name in ("distance_threshold", "answer_link_distance"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        if self.linkage not in LINKAGES:
            raise ValueError(f"linkage must be one of {', '.join(LINKAGES)}")
        if not 0.0 <= self.micro_min_fraction <= 1.0:
            raise ValueError("micro_min_fraction must be within 0..1")
        if self.length_slack < 0:
            raise ValueError("length_slack must be >= 0")
        for name in ("min_cluster_size", "micro_min_count", "min_fixed_island", "max_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("max_distance_len", "max_align_len"):
            if getattr(self, name) < 8:
                raise ValueError(f"{name} must be >= 8")
        if self.micro_max_depth < 0 or self.max_clusters < 1 or self.workers == 0:
            raise ValueError("micro_max_depth >= 0, max_clusters >= 1, workers != 0")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RegionOptions:
        """Options from ``to_json`` output; unknown keys (newer versions) are ignored."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in obj:
                kind = type(f.default)
                value = obj[f.name]
                if kind is bool and not isinstance(value, bool):
                    raise ValueError(f"{f.name}: expected a boolean")
                kwargs[f.name] = kind(value)
        return cls(**kwargs)


@dataclass(frozen=True)
class Cluster:
    """Requests believed to share a meaning, and the pattern all of them fullmatch."""

    pattern: Pattern
    members: tuple[int, ...]  # indices into the samples given to ``analyse``


def analyse(
    samples: Sequence[bytes],
    options: RegionOptions = RegionOptions(),
    answers: Sequence[bytes | None] | None = None,
) -> list[Cluster]:
    """Region analysis of one state's requests (see the module docstring).

    ``answers`` (optional, one per sample, None where unknown) are what the
    server answered to each: only used to link requests just past the cut
    whose answers have one shape (``_link_by_answers``).
    Deterministic and independent of the order of ``samples``; output
    sorted by size (largest first), then specificity, then pattern.
    """
    occurrences: dict[bytes, list[int]] = {}
    for i, sample in enumerate(samples):
        occurrences.setdefault(bytes(sample), []).append(i)
    if not occurrences:
        return []
    uniq = _select(occurrences, options.max_samples)
    weights = np.array([len(occurrences[u]) for u in uniq], dtype=np.int64)
    forms = _answer_shapes(uniq, occurrences, answers)
    budget = _Budget(options.max_clusters)
    found: list[tuple[Pattern, np.ndarray]] = []
    for leaves, plan in _macroclusters(uniq, weights, options, forms):
        if budget.remaining <= 0:
            break
        budget.take()
        al, ids = _align(uniq, leaves, plan, options.max_align_len)
        found.extend(_refine(al, ids, uniq, weights, 0, options, budget))
    return _finish(found, uniq, occurrences, options)


class _Budget:
    """How many more clusters this call may still create."""

    def __init__(self, total: int) -> None:
        self.remaining = total

    def take(self) -> bool:
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


def _select(occurrences: dict[bytes, list[int]], limit: int) -> list[bytes]:
    """The distinct requests to analyse, in a canonical order.

    The most frequent first (they form the clusters), ties broken by a hash
    so that a bounded subsample of one-offs is spread over all of them
    rather than the shortest.
    """
    ranked = sorted(occurrences, key=lambda s: (-len(occurrences[s]), _digest(s)))
    return sorted(ranked[:limit], key=lambda s: (len(s), s))


Plan = list[tuple[int, int, int]]  # (child a, child b, new node) merges, in order


def _answer_shapes(
    uniq: list[bytes],
    occurrences: dict[bytes, list[int]],
    answers: Sequence[bytes | None] | None,
) -> list[bytes | None] | None:
    """Per distinct request, the one shape of every answer it got (None: no answer
    known, or answers of several shapes: nothing to link on)."""
    if answers is None:
        return None
    if len(answers) != sum(len(v) for v in occurrences.values()):
        raise ValueError("analyse: one answer (or None) per sample")
    out: list[bytes | None] = []
    for u in uniq:
        seen = {None if answers[i] is None else shape(answers[i]) for i in occurrences[u]}
        out.append(seen.pop() if len(seen) == 1 else None)
    return out


def _macroclusters(
    uniq: list[bytes],
    weights: np.ndarray,
    options: RegionOptions,
    forms: list[bytes | None] | None = None,
) -> list[tuple[list[int], Plan]]:
    """Flat clusters of at least ``min_cluster_size`` requests and their merge trees."""
    n = len(uniq)
    if n == 1:
        return [([0], [])] if weights[0] >= options.min_cluster_size else []
    reps = [head_tail(u, options.max_distance_len)[0] for u in uniq]
    dist = process.cdist(
        reps, reps, scorer=Indel.normalized_distance, dtype=np.float32, workers=options.workers
    )
    dist = np.maximum(dist, dist.T).astype(np.float64)
    np.fill_diagonal(dist, 0.0)
    if forms is not None:
        _link_by_answers(dist, uniq, forms, options)
    tree = linkage(squareform(dist, checks=False), method=options.linkage)
    leaves: dict[int, list[int]] = {i: [i] for i in range(n)}
    plans: dict[int, Plan] = {i: [] for i in range(n)}
    for k, (a, b, height, _) in enumerate(tree):
        if height > options.distance_threshold:
            continue
        a, b, new = int(a), int(b), n + k
        leaves[new] = leaves.pop(a) + leaves.pop(b)
        plans[new] = plans.pop(a) + plans.pop(b) + [(a, b, new)]
    out = []
    for node in sorted(leaves, key=lambda nd: min(leaves[nd])):
        if int(weights[leaves[node]].sum()) >= options.min_cluster_size:
            out.append((leaves[node], plans[node]))
    return out


def _link_by_answers(
    dist: np.ndarray, uniq: list[bytes], forms: list[bytes | None], options: RegionOptions
) -> None:
    """Bring to the cut (in place) the pairs just past it that differ in one field
    and that the answers say are one kind.

    Short requests whose argument is most of the message (``CMD docs`` /
    ``CMD pub``) are farther apart than the cut although they are one
    message with one free field; with few samples (online learning) each
    then stays its own exact transition, and what follows it is learned
    once per value. A pair is linked when its distance is at most
    ``answer_link_distance``, it differs in one span only (``_one_span``:
    behind a shared head of ``LINK_HEAD``+ bytes, before a shared tail, at
    most ``LINK_SPAN`` times the bytes they share) and both requests got
    answers of one same shape (``scriptgen.model.shape``). The requests
    alone cannot tell such a pair from two commands that differ in one word
    after a shared framing; the answers can (a stored value and a count
    differ in shape). The span bound keeps out most pairs that differ in a
    command word *and* its arguments (redis ``DEL k`` / ``STRLEN k2``, both
    answered with a number), though not all: ``ECHO hello`` / ``PING abc``
    (both answered with the argument) are linked. Linked at the cut, a pair
    still stays apart when the rest of the tree (average linkage) pulls it
    apart.
    """
    if options.answer_link_distance <= options.distance_threshold:
        return
    band = (dist > options.distance_threshold) & (dist <= options.answer_link_distance)
    rows, cols = np.nonzero(np.triu(band, k=1))
    for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
        if forms[i] is not None and forms[i] == forms[j] and _one_span(uniq[i], uniq[j]):
            dist[i, j] = dist[j, i] = options.distance_threshold


def _one_span(a: bytes, b: bytes, window: int = 256) -> bool:
    """``a`` and ``b`` share a head of ``LINK_HEAD``+ bytes and a non-empty tail, and
    differ only in the bytes between them (one span, which may hold several
    differences), at most ``LINK_SPAN`` times the bytes shared: a field, not a
    different message in the same framing. Head and tail are looked for in the
    first and last ``window`` bytes only, so long requests cost no more than
    short ones (a request longer than the bound allows is refused at once)."""
    if max(len(a), len(b)) > (LINK_SPAN + 1) * 2 * window:
        return False
    head = _common_head(a[:window], b[:window])
    if head < LINK_HEAD:
        return False
    rest = min(len(a), len(b), window + head) - head
    tail = _common_head(a[len(a) - rest :][::-1], b[len(b) - rest :][::-1]) if rest else 0
    shared = head + tail
    return tail >= 1 and max(len(a), len(b)) - shared <= LINK_SPAN * shared


def _common_head(a: bytes, b: bytes) -> int:
    """Length of the common prefix (binary search on slice equality: C-speed compares)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _align(
    uniq: list[bytes], leaves: list[int], plan: Plan, limit: int
) -> tuple[Alignment, np.ndarray]:
    """Progressive multiple alignment along the clustering tree; rows → sample ids."""
    profiles = {leaf: Alignment.single(uniq[leaf], limit) for leaf in leaves}
    order = {leaf: [leaf] for leaf in leaves}
    for a, b, new in plan:
        profiles[new] = merge(profiles.pop(a), profiles.pop(b))
        order[new] = order.pop(a) + order.pop(b)
    (root,) = profiles
    return profiles[root], np.array(order[root], dtype=np.int64)


def _refine(
    al: Alignment,
    ids: np.ndarray,
    uniq: list[bytes],
    weights: np.ndarray,
    depth: int,
    options: RegionOptions,
    budget: _Budget,
) -> list[tuple[Pattern, np.ndarray]]:
    """The cluster's pattern, split by recurring values of a mutating region (microclustering)."""
    al, lay = _settle(al, ids, uniq, options)
    if depth >= options.micro_max_depth or budget.remaining <= 0:
        return [(lay.pattern, ids)]
    split = _best_split(al, lay, ids, uniq, weights, options)
    if split is None:
        return [(lay.pattern, ids)]
    start, end, values, recurring = split
    justified = al.left_justify(start, end)
    justified.pinned[start:end] = True
    out: list[tuple[Pattern, np.ndarray]] = []
    rest = np.ones(len(ids), dtype=bool)
    for value in recurring:
        if not budget.take():
            break
        rows = np.array([i for i, v in enumerate(values) if v == value], dtype=np.int64)
        rest[rows] = False
        child = justified.subset(rows)
        out.extend(_refine(child, ids[rows], uniq, weights, depth + 1, options, budget))
    left = ids[rest]
    if len(left) and (options.keep_generic or int(weights[left].sum()) >= options.min_cluster_size):
        out.append((lay.pattern, left))
    return out


def _settle(
    al: Alignment, ids: np.ndarray, uniq: list[bytes], options: RegionOptions
) -> tuple[Alignment, Layout]:
    """Make fixed the mutating regions where every row holds the same bytes.

    Progressive alignment can place one shared value with gaps in
    different columns; that is one fixed value, not a variable field, and
    must not cost a microclustering level.
    """
    lay = layout(al, options.min_fixed_island)
    for _ in range(8):  # each round only turns mutating columns fixed; few rounds suffice
        same = [
            (lay.starts[k], lay.ends[k])
            for k, is_fixed in enumerate(lay.fixed)
            if not is_fixed and _one_value(al, lay, k, ids, uniq)
        ]
        if not same:
            break
        for start, end in same:
            al = al.left_justify(start, end)
            al.pinned[start:end] = True
        al = al.subset(np.arange(len(ids)))
        lay = layout(al, options.min_fixed_island)
    return al, lay


def _one_value(al: Alignment, lay: Layout, k: int, ids: np.ndarray, uniq: list[bytes]) -> bool:
    """True when every row puts the same bytes in run ``k`` (and no elided middle)."""
    start, end = lay.starts[k], lay.ends[k]
    if ((al.extra_col >= start) & (al.extra_col < end)).any():
        return False
    lo, hi = lay.bounds[:, k], lay.bounds[:, k + 1]
    first = uniq[ids[0]][lo[0] : hi[0]]
    return all(uniq[s][lo[i] : hi[i]] == first for i, s in enumerate(ids.tolist()))


def _best_split(
    al: Alignment,
    lay: Layout,
    ids: np.ndarray,
    uniq: list[bytes],
    weights: np.ndarray,
    options: RegionOptions,
) -> tuple[int, int, list[bytes], list[bytes]] | None:
    """The column span whose recurring values cover the most requests.

    Candidates are the mutating regions and, inside them, the maximal runs
    of columns where no row has a gap (fixed-width sub-fields: a command
    word aligned by substitution next to a free argument, so that "CMD1 x"
    and "CMD2 x" still split although the whole region value never
    recurs). Ties go to the earlier, then wider span. Spans holding an
    elided middle are skipped. Returns (first column, end column, each
    row's value, recurring values most frequent first) or None.
    """
    total = int(weights[ids].sum())
    need = max(options.micro_min_count, math.ceil(options.micro_min_fraction * total))
    elided = set(al.extra_col[al.extra_col >= 0].tolist())
    offsets = np.concatenate(
        [np.zeros((len(ids), 1), dtype=np.int64), np.cumsum(al.counts(), axis=1)], axis=1
    )
    best: tuple[int, int, int, int, list[bytes], list[bytes]] | None = None
    for start, end in _split_candidates(al, lay):
        if any(start <= c < end for c in elided):
            continue
        lo, hi = offsets[:, start], offsets[:, end]
        values = [uniq[s][lo[i] : hi[i]] for i, s in enumerate(ids.tolist())]
        tally: Counter[bytes] = Counter()
        for v, s in zip(values, ids.tolist(), strict=True):
            tally[v] += int(weights[s])
        recurring = sorted((v for v, c in tally.items() if c >= need), key=lambda v: (-tally[v], v))
        if not recurring or len(tally) == 1:
            continue
        key = (_split_entropy([tally[v] for v in recurring], total), -start, end - start)
        if best is None or key > best[:3]:
            best = (*key, start, end, values, recurring)
    return None if best is None else best[3:]


def _split_entropy(groups: list[int], total: int) -> float:
    """Entropy of the partition a split makes (recurring groups + the rest as one).

    A command-like field (a few values sharing the cluster) scores high; a
    field that is nearly constant, or all one-offs, scores near zero.
    Rounded so that float noise cannot decide between spans.
    """
    parts = [*groups, total - sum(groups)]
    return round(-sum(p / total * math.log(p / total) for p in parts if p > 0), 9)


def _split_candidates(al: Alignment, lay: Layout) -> list[tuple[int, int]]:
    """Mutating regions and the gap-free column runs inside them, as column spans."""
    gapless = (al.rows != GAP).all(axis=0)
    spans = []
    for start, end, is_fixed in zip(lay.starts, lay.ends, lay.fixed, strict=True):
        if is_fixed:
            continue
        spans.append((start, end))
        for s, e, full in runs(gapless[start:end]):
            if full and (s, e) != (0, end - start):
                spans.append((start + s, start + e))
    return spans


def _widen(pattern: Pattern, slack: float, min_cap: int, few: bool = False) -> Pattern:
    """Generalise variable-width mutating regions by ``slack`` (module doc, step 5);
    with ``few`` samples, fixed-width ones wider than ``NARROW`` bytes too (equal
    lengths in a handful of requests are as likely chance as a format's rule).

    Every mutating region's minimum is also capped at ``min_cap``: the
    ``regex`` module compiles ``.{n,m}`` in time and memory linear in n
    (measured: n = 10 M takes 12 s and 2.6 GB), and such a region only
    comes from requests longer than the alignment bound anyway.
    """
    regions = []
    loose = _loose_widths(pattern) if few else set()
    for k, r in enumerate(pattern.regions):
        if r.is_fixed:
            regions.append(r)
            continue
        lo, hi = r.min_len, r.max_len
        if slack > 0 and (lo != hi or k in loose):
            lo = math.floor(lo / (1.0 + slack))
            hi = math.ceil(hi * (1.0 + slack))
        regions.append(Region.mutating(min(lo, min_cap), hi))
    return Pattern(tuple(regions))


def _loose_widths(pattern: Pattern) -> set[int]:
    """Fixed-width mutating regions wider than ``NARROW`` that no narrow
    fixed-width one follows: widening them keeps every short id at a fixed
    offset from the start (content inference links ids by offset)."""
    loose: set[int] = set()
    for k in range(len(pattern.regions) - 1, -1, -1):
        r = pattern.regions[k]
        if r.is_fixed or r.min_len != r.max_len:
            continue
        if r.min_len <= NARROW:
            break
        loose.add(k)
    return loose


def _pattern_key(pattern: Pattern) -> str:
    return json.dumps(pattern.to_json(), sort_keys=True)


def _merge_shapes(found: list[tuple[Pattern, np.ndarray]]) -> list[tuple[Pattern, np.ndarray]]:
    """One pattern per shape: the same fixed regions in the same order.

    Macroclustering can cut one family in two (random arguments are far
    apart in Indel distance); when both halves learned the same fixed
    bytes they are one transition, with the union of the length ranges.
    """
    shapes: dict[tuple[bytes | None, ...], list[tuple[Pattern, np.ndarray]]] = {}
    for pattern, ids in found:
        shapes.setdefault(tuple(r.fixed for r in pattern.regions), []).append((pattern, ids))
    out = []
    for group in shapes.values():
        regions = []
        for parts in zip(*(p.regions for p, _ in group), strict=True):
            if parts[0].is_fixed:
                regions.append(parts[0])
            else:
                lo, hi = min(r.min_len for r in parts), max(r.max_len for r in parts)
                regions.append(Region.mutating(lo, hi))
        out.append((Pattern(tuple(regions)), np.concatenate([ids for _, ids in group])))
    return out


def _finish(
    found: list[tuple[Pattern, np.ndarray]],
    uniq: list[bytes],
    occurrences: dict[bytes, list[int]],
    options: RegionOptions,
) -> list[Cluster]:
    """Merge same-shape patterns, widen, let unclustered requests join, sort."""
    members: dict[Pattern, set[bytes]] = {}
    for pattern, ids in _merge_shapes(found):
        few = sum(len(occurrences[uniq[s]]) for s in ids.tolist()) < 2 * options.min_cluster_size
        wide = _widen(pattern, options.length_slack, options.max_align_len, few)
        group = members.setdefault(wide, set())
        for s in ids.tolist():
            if wide.fullmatch(uniq[s]) is None:  # cannot happen by construction; stay safe
                continue
            group.add(uniq[s])
    members = {p: g for p, g in members.items() if g}
    placed = set().union(*members.values()) if members else set()
    ranked = sorted(members, key=lambda p: (-p.specificity, _pattern_key(p)))
    for sample in sorted(occurrences, key=lambda s: (len(s), s)):
        if sample in placed:
            continue
        for pattern in ranked:
            if pattern.fullmatch(sample) is not None:
                members[pattern].add(sample)
                break
    clusters = [
        Cluster(p, tuple(sorted(i for s in group for i in occurrences[s])))
        for p, group in members.items()
    ]
    clusters.sort(key=lambda c: (-len(c.members), -c.pattern.specificity, _pattern_key(c.pattern)))
    return clusters
