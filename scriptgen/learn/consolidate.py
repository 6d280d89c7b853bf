"""Consolidation: one answer and one ending per state, from the evidence.

The emulator needs a single answer per state (the paper's "unique server
answer bound to each state"); the learner keeps a bounded set of distinct
answers with counts so that consolidation can be redone after every
incremental training and a later stage (content dependencies) can compare
the variants.
"""

from __future__ import annotations

from rapidfuzz.distance import Indel

from scriptgen.model import End, Machine, State

# Two answers belong to one family when their normalised Indel similarity (on
# their first FAMILY_HEAD bytes) is at least FAMILY_SIMILARITY: measured on the
# lab captures (benchmarks/emulation_quality.py), answers that differ only by
# ids, keys or echoed names score 0.8-1.0, an error answer against a success
# answer of the same command scores 0.2-0.45.
FAMILY_SIMILARITY = 0.6
FAMILY_HEAD = 1024


def consolidated_answer(state: State) -> bytes:
    """The most frequent answer of the most frequent *family* of answers.

    Why families: answers that carry per-connection values (session ids,
    challenges, echoed names) are all distinct, so counting exact answers
    gives each one vote, and a constant error answer seen twice beats a
    success seen ten times with ten ids (the emulator then refuses every
    login). Similar answers are grouped first and their counts summed; the
    heaviest family wins (ties: the family of the most frequent, shorter,
    smaller answer), and its most frequent, shorter, smaller member is the
    template. With all answers alike this is the plain majority as before.
    """
    if not state.answers:
        return state.answer
    ranked = sorted(state.answers.items(), key=lambda kv: (-kv[1], len(kv[0]), kv[0]))
    families: list[list[tuple[bytes, int]]] = []
    for answer, count in ranked:
        home = next((f for f in families if _similar(f[0][0], answer)), None)
        if home is None:
            families.append([(answer, count)])
        else:
            home.append((answer, count))
    # max() keeps the first of equal weights: families are in rank order of their heads.
    best = max(families, key=lambda f: sum(c for _, c in f))
    return best[0][0]


def _similar(a: bytes, b: bytes) -> bool:
    """Same family: normalised Indel similarity of the heads (a length test first:
    1 - |a-b|/(a+b) bounds the similarity from above)."""
    if not a and not b:
        return True
    la, lb = len(a), len(b)
    if 2 * min(la, lb) / (la + lb) < FAMILY_SIMILARITY:
        return False
    return Indel.normalized_similarity(a[:FAMILY_HEAD], b[:FAMILY_HEAD]) >= FAMILY_SIMILARITY


def consolidated_end(state: State) -> End:
    """Close or reset only when the server did so in most arrivals here; else stay open.

    Arrivals after which the dialog went on, or the client hung up, are
    evidence that the server kept the connection open.
    """
    close = state.ends.get(End.CLOSE.value, 0)
    reset = state.ends.get(End.RESET.value, 0)
    still_open = max(0, state.samples - close - reset)
    best = max((still_open, 2, End.OPEN), (close, 1, End.CLOSE), (reset, 0, End.RESET))
    return best[2]


def consolidate(machine: Machine) -> None:
    """Set every state's answer and end from its evidence (idempotent)."""
    for state in machine.states.values():
        state.answer = consolidated_answer(state)
        state.end = consolidated_end(state)
