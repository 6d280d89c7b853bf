"""Content dependencies: which answer bytes copy request bytes (ScriptGen §4, "content dependencies").

Runs after consolidation. The training dialogs are replayed through the
machine; every state then has *samples*: the answer the server gave there,
the requests of the conversation so far (each with the regex match of the
transition it took, so the live spans of its mutating regions are known)
and the earlier answers. The state's consolidated answer is the *template*;
the emulator patches it from the live conversation (``scriptgen.emulate.rewrite``).

Method, per state (nothing here knows a protocol):

1. *Variable-length copies*: a mutating request region whose value length
   varies and which appears, whole, at one answer offset in every sample of
   the template's shape (answer length minus value length equal to the
   template's). Samples are then normalised to template coordinates.
2. *Fixed-width links*: answer byte columns (one byte position across the
   aligned samples) that vary are compared with the columns of the mutating
   regions of the current and up to ``max_back`` earlier requests (offsets
   from the region start, and from its end when its length varies), by
   hashing whole columns. A link grows into a run while the neighbouring
   columns also agree and stay inside the source region; a reversed run of
   2, 4 or 8 bytes is a byte-swapped copy. Requests first; after the clocks
   (4.), the same with the earlier answers (a server-chosen value repeated
   later in the connection).
3. *Length fields* (only where a variable-length copy changes the answer's
   length): 1/2/4-byte big/little-endian integers whose value equals the
   answer length minus a constant in every sample of the shape.
4. *Server-chosen values* with no link: a run of varying bytes that looks
   like a clock (4/8-byte integer that reads as a date in 2000-2100 in unix
   seconds/milliseconds or NT 100 ns units, all samples within a year) is
   set to the current time; a run whose value differed in every sample is
   filled with random bytes per answer -- unless the client sent the value
   back inside a *fixed* region of a later request (the matching function
   would then refuse the echo), or every sample's value is in its own
   requests (an echo not pinned to one region).
5. *Borrowed links*: a copy, whole-region copy or length field found with
   full evidence at ≥ 2 states (same answer offset, same absolute request
   offset) is also applied at states that could not prove it alone (too few
   samples, or values that never varied there), when it holds in all of
   their samples.

Bytes a session signal says name the port it opens (``announce``, see
``scriptgen.learn.sessions``) are left alone: a port drawn per answer looks
random here, but drawing digits afresh announces a port nobody serves; the
emulator draws a served one and writes it there itself.

States reached by several paths (merged states): only requests whose
pattern every sample shares are searched, and request links carry
``groups``, the number of regions of that pattern, so the emulator skips
them for a request that came by another path.

Rule against coincidences: a link needs ≥ ``min_samples`` aligned samples
(default 3), ≥ ``min_distinct`` distinct values (2) and ≥ ``min_width`` bytes
(2); a 1-byte equality proves nothing unless it copies a whole fixed-width
region and the answer repeats the pattern's fixed bytes on both sides
(``min_width`` + 1 bytes of context). Random filling needs
``min_samples`` samples with pairwise different values.

Dependency entries (``State.dependencies``; JSON dicts, offsets in template
coordinates, ``request`` 0 = the current request, -1 the previous one…):

- ``{"kind": "copy", "at", "len", "request", "region", "anchor": "start"|"end",
  "offset", "order": "same"|"swap", "groups"}`` -- answer[at:at+len] ← the request's
  region bytes from ``offset`` (from the region end when anchor is "end",
  offset then negative); "swap" reverses the bytes.
- ``{"kind": "copy-region", "at", "len", "request", "region", "groups"}`` -- the
  template's ``len`` bytes at ``at`` are replaced by the whole live region
  (the answer may change length).
- ``{"kind": "answer", "at", "len", "answer", "offset"}`` -- copy of bytes
  ``offset..`` of the answer sent ``-answer`` turns ago (as sent).
- ``{"kind": "length", "at", "width", "endian", "base"}`` -- an integer set
  to len(final answer) - base; ``at`` is mapped through the copies.
- ``{"kind": "random", "at", "len"}`` and ``{"kind": "clock", "at", "width",
  "endian", "unit": "s"|"ms"|"nt"}``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from scriptgen.learn.dialog import Dialog
from scriptgen.learn.sessions import announce_span
from scriptgen.model import Machine, Pattern, State


@dataclass(frozen=True)
class ContentOptions:
    """Evidence thresholds and work bounds of the inference."""

    min_samples: int = 3  # aligned samples a state needs to prove a link on its own
    min_distinct: int = 2  # distinct values the linked bytes must take
    min_width: int = 2  # bytes of a link (1-byte equalities are too often chance)
    max_back: int = 8  # earlier requests/answers searched
    max_samples: int = 64  # samples per state analysed (the first ones, capture order)
    max_len: int = 8192  # answer/region bytes analysed
    borrow_states: int = 2  # states that must prove a link before it is borrowed
    server_values: bool = True  # infer random/clock fields

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Trace:
    """One training dialog replayed: per matched turn, the request, its match and pattern."""

    requests: tuple[bytes, ...]
    matches: tuple[Any, ...]
    patterns: tuple[Pattern, ...]
    answers: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Sample:
    """A state reached by turn ``turn`` of ``trace``."""

    trace: _Trace
    turn: int

    @property
    def answer(self) -> bytes:
        return self.trace.answers[self.turn]


def collect_samples(
    machine: Machine, dialogs: Iterable[Dialog], max_samples: int = 64
) -> dict[int, list[Sample]]:
    """Replay ``dialogs`` (of this machine's port) and list, per state, the turns that reached it.

    Verbatim transitions are not walked: one is a single recorded request, byte
    for byte, so a server value one dialog echoed there would look like a value
    the client must send back unchanged (a fixed region), which stops inference
    from drawing it fresh per connection (a constant session id: a
    fingerprint). The states behind them have one or two samples, too few to
    prove a dependency, and answer exactly the request they recorded.
    """
    samples: dict[int, list[Sample]] = defaultdict(list)
    for dialog in dialogs:
        state = machine.states[machine.root]
        reqs: list[bytes] = []
        matches: list[Any] = []
        pats: list[Pattern] = []
        answers: list[bytes] = []
        targets: list[int] = []
        for turn in dialog.suffix.turns:
            hit = state.best_transition(turn.request, general_only=True)
            if hit is None:
                break
            transition, match = hit
            reqs.append(turn.request)
            matches.append(match)
            pats.append(transition.pattern)
            answers.append(turn.answer)
            state = machine.states[transition.target]
            targets.append(state.id)
        if not reqs:
            continue
        trace = _Trace(tuple(reqs), tuple(matches), tuple(pats), tuple(answers))
        for i, sid in enumerate(targets):
            if len(samples[sid]) < max_samples:
                samples[sid].append(Sample(trace, i))
    return dict(samples)


# --- per-state inference --------------------------------------------------


def _region_value(sample: Sample, back: int, region: int) -> bytes | None:
    i = sample.turn - back
    if i < 0:
        return None
    m = sample.trace.matches[i]
    return sample.trace.requests[i][m.start(region + 1) : m.end(region + 1)]


def _shared(samples: Sequence[Sample], back: int) -> Pattern | None:
    """The pattern every sample's request ``back`` turns ago matched, if they all took the
    same one (a state reached by several paths: only the shared part can be linked)."""
    patterns = set()
    for s in samples:
        if s.turn - back < 0:
            return None
        patterns.add(s.trace.patterns[s.turn - back])
        if len(patterns) > 1:
            return None
    return patterns.pop() if patterns else None


def _mutating_regions(samples: Sequence[Sample], back: int) -> list[int]:
    pattern = _shared(samples, back)
    if pattern is None:
        return []
    return [k for k, r in enumerate(pattern.regions) if not r.is_fixed]


def _depth(samples: Sequence[Sample], opts: ContentOptions) -> int:
    """How many earlier turns all samples have (bounded by ``max_back``)."""
    return min(opts.max_back, min(s.turn for s in samples))


@dataclass
class _Shape:
    """Samples of the template's shape, their answers in template coordinates, and the
    variable-length copies that define the shape."""

    varcopies: list[dict[str, Any]]
    samples: list[Sample]
    normal: list[bytes]  # each sample's answer with its copies cut to the template's values
    shifts: list[list[tuple[int, int]]]  # per sample: (template offset, length change) per copy


def _find_varcopies(template: bytes, samples: list[Sample], opts: ContentOptions) -> _Shape:
    """Whole mutating regions of varying length echoed at one template offset."""
    ref = next((s for s in samples if s.answer == template), None)
    if ref is None:
        kept = [s for s in samples if len(s.answer) == len(template)]
        return _Shape([], kept, [s.answer for s in kept], [[] for _ in kept])
    found: list[dict[str, Any]] = []
    taken: list[tuple[int, int]] = []
    keep = samples
    normal = {id(s): s.answer for s in samples}
    shifts: dict[int, list[tuple[int, int]]] = {id(s): [] for s in samples}
    for back in range(_depth(samples, opts) + 1):
        for region in _mutating_regions(samples, back):
            values = [_region_value(s, back, region) for s in keep]
            if any(v is None for v in values):
                continue
            if len({len(v) for v in values}) < 2 or len(set(values)) < opts.min_distinct:
                continue
            v_ref = _region_value(ref, back, region)
            if v_ref is None or len(v_ref) > opts.max_len:
                continue
            hit = _place_varcopy(template, v_ref, keep, values, normal, taken, opts)
            if hit is None:
                continue
            at, shape = hit
            found.append(
                {
                    "kind": "copy-region",
                    "at": at,
                    "len": len(v_ref),
                    "request": -back,
                    "region": region,
                }
            )
            taken.append((at, at + len(v_ref)))
            new_keep = []
            for s, v in zip(keep, values, strict=True):
                if id(s) in shape:
                    a = normal[id(s)]
                    normal[id(s)] = a[:at] + v_ref + a[at + len(v) :]
                    shifts[id(s)].append((at, len(v) - len(v_ref)))
                    new_keep.append(s)
            keep = new_keep
            if len(found) >= 4:
                break
    kept = [s for s in keep if len(normal[id(s)]) == len(template)]
    return _Shape(found, kept, [normal[id(s)] for s in kept], [shifts[id(s)] for s in kept])


def _place_varcopy(
    template: bytes,
    v_ref: bytes,
    samples: list[Sample],
    values: list[bytes],
    normal: dict[int, bytes],
    taken: list[tuple[int, int]],
    opts: ContentOptions,
) -> tuple[int, set[int]] | None:
    """The template offset where every sample of the template's shape carries its value.

    Candidate offsets are where the longest value of a sample of the shape sits
    in that sample's answer (the template's own value may be empty); the bytes
    before a copy are aligned between the shape's samples.
    """
    locator = max(
        (
            (len(v), i)
            for i, (s, v) in enumerate(zip(samples, values, strict=True))
            if len(normal[id(s)]) - len(v) == len(template) - len(v_ref)
        ),
        default=(0, -1),
    )
    if locator[0] == 0:
        return None
    where, needle = normal[id(samples[locator[1]])], values[locator[1]]
    start = 0
    while True:
        at = where.find(needle, start)
        if at < 0 or at + len(v_ref) > len(template):
            return None
        start = at + 1
        if any(a < at + len(v_ref) and at < b for a, b in taken):
            continue
        shape: set[int] = set()
        ok = True
        for s, v in zip(samples, values, strict=True):
            a = normal[id(s)]
            if len(a) - len(v) != len(template) - len(v_ref):
                continue  # another answer shape: no evidence either way
            if a[at : at + len(v)] != v:
                ok = False
                break
            shape.add(id(s))
        distinct = {values[i] for i, s in enumerate(samples) if id(s) in shape}
        if ok and len(shape) >= opts.min_samples and len(distinct) >= opts.min_distinct:
            return at, shape


class _Sources:
    """Byte columns of the mutating request regions (and earlier answers) across samples."""

    def __init__(self, samples: list[Sample], opts: ContentOptions) -> None:
        self.samples = samples
        self.opts = opts
        # key -> (n, width) uint8 array; key = ("req", back, region, anchor) | ("ans", back)
        self.arrays: dict[tuple, np.ndarray] = {}
        depth = _depth(samples, opts)
        for back in range(depth + 1):
            for region in _mutating_regions(samples, back):
                values = [_region_value(s, back, region) or b"" for s in samples]
                width = min(min(len(v) for v in values), opts.max_len)
                if width == 0:
                    continue
                self.arrays[("req", back, region, "start")] = _matrix([v[:width] for v in values])
                if len({len(v) for v in values}) > 1:
                    self.arrays[("req", back, region, "end")] = _matrix(
                        [v[len(v) - width :] for v in values]
                    )
        for back in range(1, depth + 1):
            values = [s.trace.answers[s.turn - back] for s in samples]
            width = min(min(len(v) for v in values), opts.max_len)
            if width:
                self.arrays[("ans", back)] = _matrix([v[:width] for v in values])
        self.index: dict[bytes, list[tuple[tuple, int]]] = defaultdict(list)
        for key, arr in self.arrays.items():
            for col in np.nonzero((arr != arr[0]).any(axis=0))[0]:
                self.index[arr[:, col].tobytes()].append((key, int(col)))


def _matrix(rows: Sequence[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), -1)


def _run(
    answers: np.ndarray, src: np.ndarray, p: int, q: int, d: int, free: np.ndarray
) -> tuple[int, int, int]:
    """Grow the link answer[p] == src[q] both ways with step d; returns (start, end, q at start)."""
    n_ans, n_src = answers.shape[1], src.shape[1]
    if d == -1:  # a swapped field is at most 8 bytes: look no further
        n_ans = min(n_ans, p + 8)
    lo, qlo = p, q
    while lo - 1 >= 0 and free[lo - 1] and 0 <= qlo - d < n_src and (d == 1 or p - lo < 7):
        if not np.array_equal(answers[:, lo - 1], src[:, qlo - d]):
            break
        lo, qlo = lo - 1, qlo - d
    hi, qhi = p + 1, q + d
    while hi < n_ans and free[hi] and 0 <= qhi < n_src:
        if not np.array_equal(answers[:, hi], src[:, qhi]):
            break
        hi, qhi = hi + 1, qhi + d
    return lo, hi, qlo


def _distinct(answers: np.ndarray, lo: int, hi: int) -> int:
    return len({row.tobytes() for row in answers[:, lo:hi]})


def _links(
    answers: np.ndarray, sources: _Sources, free: np.ndarray, opts: ContentOptions, kind: str
) -> list[dict[str, Any]]:
    """Fixed-width links of the varying answer columns to request regions (``kind`` "req":
    copy or byte-swapped copy) or to earlier answers ("ans": copy of varying bytes only,
    so a run does not swallow the constant bytes both answers share)."""
    n = answers.shape[0]
    if n < opts.min_samples:
        return []
    varying = (answers != answers[0]).any(axis=0)
    deps: list[dict[str, Any]] = []
    for p in np.nonzero(varying)[0]:
        p = int(p)
        if not free[p]:
            continue
        best: tuple[tuple, dict[str, Any], int, int] | None = None
        for key, q in sources.index.get(answers[:, p].tobytes(), ()):
            if key[0] != kind:
                continue
            src = sources.arrays[key]
            grow = free if kind == "req" else free & varying
            for d in (1, -1) if kind == "req" else (1,):
                lo, hi, qlo = _run(answers, src, p, q, d, grow)
                if d == -1:
                    width = max((w for w in (8, 4, 2) if w <= hi - lo), default=0)
                    if width == 0:
                        continue
                    lo = max(lo, p - width + 1)  # keep p inside, prefer the field's start at lo
                    qlo = q + (p - lo)
                    hi = lo + width
                if _distinct(answers, lo, hi) < opts.min_distinct:
                    continue
                if hi - lo < opts.min_width and not _context(
                    sources, key, answers, lo, hi, d, opts
                ):
                    continue
                rank = (hi - lo, d, -key[1], -(key[2] if kind == "req" else 0))
                if best is None or rank > best[0]:
                    best = (rank, _link_entry(key, lo, hi, qlo, d, src.shape[1]), lo, hi)
        if best is not None:
            deps.append(best[1])
            free[best[2] : best[3]] = False
    return deps


def _context(
    sources: _Sources,
    key: tuple,
    answers: np.ndarray,
    lo: int,
    hi: int,
    d: int,
    opts: ContentOptions,
) -> bool:
    """A link narrower than ``min_width`` counts when it copies a whole fixed-width
    region and the answer repeats the pattern's fixed bytes around it too
    (``min_width`` + 1 bytes of context), as an echoed request field does."""
    if key[0] != "req" or d != 1:
        return False
    sample = sources.samples[0]
    regions = sample.trace.patterns[sample.turn - key[1]].regions
    region = regions[key[2]]
    if region.min_len != region.max_len or hi - lo != region.min_len:
        return False
    before = regions[key[2] - 1].fixed if key[2] > 0 else None
    after = regions[key[2] + 1].fixed if key[2] + 1 < len(regions) else None
    row = answers[0].tobytes()
    left = _common_suffix(before or b"", row[:lo])
    right = _common_prefix(after or b"", row[hi:])
    return left >= 1 and right >= 1 and left + right >= opts.min_width + 1


def _common_suffix(a: bytes, b: bytes) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _common_prefix(a: bytes, b: bytes) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def _link_entry(key: tuple, lo: int, hi: int, qlo: int, d: int, width: int) -> dict[str, Any]:
    if key[0] == "ans":
        return {"kind": "answer", "at": lo, "len": hi - lo, "answer": -key[1], "offset": qlo}
    _, back, region, anchor = key
    first = qlo if d == 1 else qlo - (hi - lo - 1)  # lowest source byte
    offset = first if anchor == "start" else first - width
    return {
        "kind": "copy",
        "at": lo,
        "len": hi - lo,
        "request": -back,
        "region": region,
        "anchor": anchor,
        "offset": offset,
        "order": "same" if d == 1 else "swap",
    }


# --- length fields ----------------------------------------------------------


def _length_fields(
    template: bytes,
    samples: list[Sample],
    shifts: list[list[tuple[int, int]]],
    free: np.ndarray,
    opts: ContentOptions,
) -> list[dict[str, Any]]:
    """Integers equal to the answer length minus a constant in every sample of the shape."""
    lengths = [len(s.answer) for s in samples]
    if len(set(lengths)) < opts.min_distinct or len(samples) < opts.min_samples:
        return []
    found: list[dict[str, Any]] = []
    for at in range(len(template)):
        for width in (4, 2, 1):
            if at + width > len(template) or not free[at : at + width].all():
                continue
            for endian in ("big", "little") if width > 1 else ("big",):
                base = _length_base(template, samples, shifts, at, width, endian)
                if base is not None:
                    found.append(
                        {"kind": "length", "at": at, "width": width, "endian": endian, "base": base}
                    )
                    free[at : at + width] = False
                    break
            if not free[at]:
                break
    return found


def _length_base(
    template: bytes,
    samples: list[Sample],
    shifts: list[list[tuple[int, int]]],
    at: int,
    width: int,
    endian: str,
) -> int | None:
    base = len(template) - int.from_bytes(template[at : at + width], endian)  # type: ignore[arg-type]
    if not 0 <= base < len(template):
        return None
    for s, sh in zip(samples, shifts, strict=True):
        pos = at + sum(delta for where, delta in sh if where < at)
        value = int.from_bytes(s.answer[pos : pos + width], endian)  # type: ignore[arg-type]
        if len(s.answer) - value != base:
            return None
    return base


# --- server-chosen values ---------------------------------------------------

_YEAR_2000 = 946684800
_YEAR_2100 = 4102444800
_NT_EPOCH = 11644473600  # seconds from 1601-01-01 to 1970-01-01
_UNITS = {"s": 1, "ms": 1000, "nt": 10_000_000}
_YEAR = 366 * 86400


def _as_unix(value: int, unit: str) -> float:
    if unit == "nt":
        return value / 10_000_000 - _NT_EPOCH
    return value / _UNITS[unit]


CLOCK_SAMPLES = 5  # samples a clock needs (``_clock_field``)


def _clock_field(answers: np.ndarray, lo: int, hi: int) -> dict[str, Any] | None:
    """A 4/8-byte integer covering [lo, hi) that reads as a recent date in every sample.

    A clock read seconds apart changes in its least significant byte and
    differs in every sample; a date-like reading of a field that changes
    elsewhere (a type code next to zeros) is chance. The samples come in
    capture order, so a clock never goes back from one to the next: without
    that test an address (192.0.2.10, .25, .79 read as seconds fall in 2072)
    was rewritten with the current time. Three addresses are in capture order
    by chance one time in six (online learning: the DNS address of every name
    became the current time), five one time in 120: fewer than
    ``CLOCK_SAMPLES`` samples prove no clock (a stale time is a smaller error
    than a rewritten address).
    """
    n_len = answers.shape[1]
    if answers.shape[0] < CLOCK_SAMPLES or _distinct(answers, lo, hi) < answers.shape[0]:
        return None
    for width in (8, 4):
        for endian in ("little", "big"):
            at = lo if endian == "little" else hi - width  # the varying bytes are its low end
            if at < 0 or at > lo or at + width < hi or at + width > n_len:
                continue
            values = [int.from_bytes(row[at : at + width].tobytes(), endian) for row in answers]
            for unit in ("nt", "ms", "s") if width == 8 else ("s",):
                times = [_as_unix(v, unit) for v in values]
                if (
                    all(_YEAR_2000 <= t <= _YEAR_2100 for t in times)
                    and max(times) - min(times) <= _YEAR
                    and all(a <= b for a, b in zip(times, times[1:], strict=False))
                ):
                    return {
                        "kind": "clock",
                        "at": at,
                        "width": width,
                        "endian": endian,
                        "unit": unit,
                    }
    return None


def _echoed_in_fixed(samples: list[Sample], answers: np.ndarray, lo: int, hi: int) -> bool:
    """The client sent this answer value back inside a fixed region of a later request."""
    for s, row in zip(samples, answers, strict=True):
        value = row[lo:hi].tobytes()
        tr = s.trace
        for i in range(s.turn + 1, len(tr.requests)):
            pos = tr.requests[i].find(value)
            while pos >= 0:
                m = tr.matches[i]
                for k, region in enumerate(tr.patterns[i].regions):
                    if region.is_fixed and m.start(k + 1) < pos + len(value) and pos < m.end(k + 1):
                        return True
                pos = tr.requests[i].find(value, pos + 1)
    return False


def _from_client(samples: list[Sample], answers: np.ndarray, lo: int, hi: int) -> bool:
    """Every sample's value was in one of its requests so far: an echo we could not
    pin to one region (paths differ), not a server choice: never randomise it."""
    for s, row in zip(samples, answers, strict=True):
        value = row[lo:hi].tobytes()
        if not any(value in r for r in s.trace.requests[: s.turn + 1]):
            return False
    return True


def _server_values(
    answers: np.ndarray,
    samples: list[Sample],
    free: np.ndarray,
    opts: ContentOptions,
    clocks_only: bool = False,
) -> list[dict[str, Any]]:
    """Clock fields, then (unless ``clocks_only``) random runs, among the unexplained bytes."""
    n = answers.shape[0]
    if n < opts.min_samples:
        return []
    varying = (answers != answers[0]).any(axis=0) & free
    deps: list[dict[str, Any]] = []
    p = 0
    width = answers.shape[1]
    while p < width:
        if not varying[p]:
            p += 1
            continue
        lo = p
        while p < width and varying[p]:
            p += 1
        hi = p
        clock = _clock_field(answers, lo, hi)
        if clock is not None and _echoed_in_fixed(
            samples, answers, clock["at"], clock["at"] + clock["width"]
        ):
            # The client sends this time back where a transition requires it exactly
            # (a timestamp inside an authentication blob): keep the learned value.
            free[clock["at"] : clock["at"] + clock["width"]] = False
            p = max(p, clock["at"] + clock["width"])
            continue
        if clock is not None and free[clock["at"] : clock["at"] + clock["width"]].all():
            deps.append(clock)
            free[clock["at"] : clock["at"] + clock["width"]] = False
            p = max(p, clock["at"] + clock["width"])
            continue
        if (
            not clocks_only
            and hi - lo >= opts.min_width
            and _distinct(answers, lo, hi) == n
            and not _echoed_in_fixed(samples, answers, lo, hi)
            and not _from_client(samples, answers, lo, hi)
        ):
            deps.append({"kind": "random", "at": lo, "len": hi - lo})
            free[lo:hi] = False
    return deps


# --- the whole machine ------------------------------------------------------


def _not_announced(state: State) -> np.ndarray:
    """Template bytes content inference may explain: all but those a session signal
    says name the port it opens (scriptgen.learn.sessions). A port the server drew
    per answer looks random here, but a random one is a port nobody serves; the
    emulator draws and serves its own in that place."""
    free = np.ones(len(state.answer), dtype=bool)
    for signal in state.signals:
        span = announce_span(signal)
        if span is not None:
            free[span[0] : span[1]] = False
    return free


def infer_state(state: State, samples: list[Sample], opts: ContentOptions) -> list[dict[str, Any]]:
    """The dependencies of one state's template from the samples that reached it."""
    template = state.answer
    if not template or not samples or len(template) > opts.max_len:
        return []
    shape = _find_varcopies(template, samples, opts)
    free = _not_announced(state)
    for dep in shape.varcopies:
        free[dep["at"] : dep["at"] + dep["len"]] = False
    deps = list(shape.varcopies)
    for dep in deps:  # whole-region copies: found on regions all samples share
        dep["groups"] = len(_shared(samples, -dep["request"]).regions)  # type: ignore[union-attr]
    if shape.samples:
        answers = _matrix(shape.normal)
        sources = _Sources(shape.samples, opts)
        deps += _links(answers, sources, free, opts, "req")
        if shape.varcopies:
            deps += _length_fields(template, shape.samples, shape.shifts, free, opts)
        if opts.server_values:
            deps += _server_values(answers, shape.samples, free, opts, clocks_only=True)
        deps += _links(answers, sources, free, opts, "ans")
        if opts.server_values:
            deps += _server_values(answers, shape.samples, free, opts)
        for dep in deps:  # lets the emulator refuse a request that took another path here
            if dep["kind"] == "copy":
                dep["groups"] = len(_shared(shape.samples, -dep["request"]).regions)  # type: ignore[union-attr]
    return sorted(deps, key=lambda d: (d["at"], d["kind"]))


def _absolute(sample: Sample, dep: dict[str, Any]) -> int | None:
    """The request byte offset a copy reads from (its region's start plus the offset)."""
    if dep["kind"] == "copy" and dep["anchor"] == "start":
        offset = dep["offset"]
    elif dep["kind"] == "copy-region":
        offset = 0
    else:
        return None
    i = sample.turn + dep["request"]
    return sample.trace.matches[i].start(dep["region"] + 1) + offset


def _support_key(dep: dict[str, Any], samples: list[Sample]) -> tuple | None:
    """What makes two states' links "the same link": kind, answer place, request place."""
    if dep["kind"] == "length":
        return ("length", dep["at"], dep["width"], dep["endian"], dep["base"])
    starts = {_absolute(s, dep) for s in samples}
    if len(starts) != 1 or None in starts:
        return None
    if dep["kind"] == "copy":
        return ("copy", dep["at"], dep["len"], dep["request"], starts.pop(), dep["order"])
    return ("copy-region", dep["at"], 0, dep["request"], starts.pop(), "same")


def _borrow(
    machine: Machine,
    samples: dict[int, list[Sample]],
    inferred: dict[int, list[dict[str, Any]]],
    opts: ContentOptions,
) -> None:
    """Apply links proven at several states to states that could not prove them alone
    (too few samples, or values that never varied there), when they hold in all of
    that state's samples."""
    support: dict[tuple, set[int]] = defaultdict(set)
    for sid, deps in inferred.items():
        for dep in deps:
            if not dep.get("borrowed"):
                key = _support_key(dep, samples[sid])
                if key is not None:
                    support[key].add(sid)
    proven = [k for k, sids in sorted(support.items()) if len(sids) >= opts.borrow_states]
    order = {"copy-region": 0, "copy": 1, "length": 2}  # lengths last: they need the copies
    proven.sort(key=lambda k: (order[k[0]], k[1:]))
    for sid, state_samples in sorted(samples.items()):
        state = machine.states[sid]
        if not state.answer:
            continue
        deps = inferred.setdefault(sid, [])
        taken = ~_not_announced(state)
        for dep in deps:
            taken[dep["at"] : dep["at"] + dep.get("len", dep.get("width", 0))] = True
        for key in proven:
            dep = _borrowed(state, state_samples, deps, key, taken)
            if dep is not None:
                dep["borrowed"] = True
                deps.append(dep)
                taken[dep["at"] : dep["at"] + dep.get("len", dep.get("width", 0))] = True
        deps.sort(key=lambda d: (d["at"], d["kind"]))


def _borrowed(
    state: State, samples: list[Sample], deps: list[dict[str, Any]], key: tuple, taken: np.ndarray
) -> dict[str, Any] | None:
    """The proven link ``key`` expressed in this state's own patterns, if it holds here."""
    template = state.answer
    if key[0] == "length":
        _, at, width, endian, base = key
        if at + width > len(template) or taken[at : at + width].any():
            return None
        varcopies = [d for d in deps if d["kind"] == "copy-region"]
        if not varcopies or any(
            d["at"] < at + width and at < d["at"] + d["len"] for d in varcopies
        ):
            return None
        shape = _shape_of(template, samples, varcopies)
        if shape is None or _length_base(template, *shape, at, width, endian) != base:
            return None
        return {"kind": "length", "at": at, "width": width, "endian": endian, "base": base}
    kind, at, length, back, qabs, order = key
    pattern = _shared(samples, -back)
    if pattern is None:
        return None
    for k, region in enumerate(pattern.regions):
        if region.is_fixed:
            continue
        starts = {s.trace.matches[s.turn + back].start(k + 1) for s in samples}
        if len(starts) != 1:
            continue
        start = starts.pop()
        if kind == "copy-region":
            if start != qabs:
                continue
            dep = _borrowed_region(template, samples, at, back, k, taken)
        else:
            if not start <= qabs or qabs + length > start + region.min_len:
                continue
            if at + length > len(template) or taken[at : at + length].any():
                return None
            dep = _borrowed_copy(template, samples, at, length, back, k, qabs - start, order)
        if dep is not None:
            dep["groups"] = len(pattern.regions)
        return dep
    return None


def _borrowed_copy(
    template: bytes,
    samples: list[Sample],
    at: int,
    length: int,
    back: int,
    region: int,
    offset: int,
    order: str,
) -> dict[str, Any] | None:
    aligned = [s for s in samples if len(s.answer) == len(template)]
    if not aligned:
        return None
    for s in aligned:
        value = _region_value(s, -back, region)
        src = (value or b"")[offset : offset + length]
        if len(src) != length or s.answer[at : at + length] != (
            src[::-1] if order == "swap" else src
        ):
            return None
    return {
        "kind": "copy",
        "at": at,
        "len": length,
        "request": back,
        "region": region,
        "anchor": "start",
        "offset": offset,
        "order": order,
    }


def _borrowed_region(
    template: bytes, samples: list[Sample], at: int, back: int, region: int, taken: np.ndarray
) -> dict[str, Any] | None:
    ref = next((s for s in samples if s.answer == template), None)
    if ref is None:
        return None
    v_ref = _region_value(ref, -back, region) or b""
    if at + len(v_ref) > len(template) or taken[at : at + len(v_ref)].any():
        return None
    for s in samples:
        v = _region_value(s, -back, region) or b""
        if len(s.answer) - len(v) != len(template) - len(v_ref):
            continue  # another answer shape
        if s.answer[at : at + len(v)] != v:
            return None
    return {"kind": "copy-region", "at": at, "len": len(v_ref), "request": back, "region": region}


def _shape_of(
    template: bytes, samples: list[Sample], varcopies: list[dict[str, Any]]
) -> tuple[list[Sample], list[list[tuple[int, int]]]] | None:
    """The samples of the template's shape under these copies, with their shifts."""
    ref = next((s for s in samples if s.answer == template), None)
    if ref is None:
        return None
    ref_len = {id(d): len(_region_value(ref, -d["request"], d["region"]) or b"") for d in varcopies}
    kept, shifts = [], []
    for s in samples:
        sh = []
        for d in varcopies:
            v = _region_value(s, -d["request"], d["region"]) or b""
            sh.append((d["at"], len(v) - ref_len[id(d)]))
        if len(s.answer) - sum(x for _, x in sh) == len(template):
            kept.append(s)
            shifts.append(sh)
    return kept, shifts


def _aligned(state: State, samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if len(s.answer) == len(state.answer)]


def infer_dependencies(
    machine: Machine, dialogs: Sequence[Dialog], options: ContentOptions | None = None
) -> int:
    """Set ``dependencies`` of every state the dialogs reach; returns how many were set.

    States no dialog of this run reaches keep what an earlier training found
    (the learner keeps no past dialogs to redo it).
    """
    opts = options or ContentOptions()
    samples = collect_samples(machine, dialogs, opts.max_samples)
    inferred = {sid: infer_state(machine.states[sid], ss, opts) for sid, ss in samples.items()}
    _borrow(machine, samples, inferred, opts)
    total = 0
    for sid, deps in inferred.items():
        state = machine.states[sid]
        enough = len(_aligned(state, samples[sid])) >= opts.min_samples
        if deps or enough or not state.dependencies:
            state.dependencies = deps
        total += len(state.dependencies)
    return total
