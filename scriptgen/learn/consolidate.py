"""Consolidation: one answer and one ending per state, from the evidence.

The emulator needs a single answer per state (the paper's "unique server
answer bound to each state"); the learner keeps a bounded set of distinct
answers with counts so that consolidation can be redone after every
incremental training and a later stage (content dependencies) can compare
the variants.
"""

from __future__ import annotations

from scriptgen.model import End, Machine, State


def consolidated_answer(state: State) -> bytes:
    """The most frequent answer; ties go to the shorter, then the smaller bytes (deterministic).

    One exception to "shorter": silence loses a tie when the server spoke in
    most arrivals here. Where every answer carries its own server-chosen id,
    all counts are 1, and "shortest" picked the one turn the server left
    unanswered (a capture cut short, a client that hung up): the emulator
    then stayed silent where the server always spoke, and the client hung.
    """
    if not state.answers:
        return state.answer
    spoke = sum(n for answer, n in state.answers.items() if answer)
    silent = state.answers.get(b"", 0)
    quiet_is_odd = spoke > silent
    return min(
        state.answers.items(),
        key=lambda kv: (-kv[1], quiet_is_odd and not kv[0], len(kv[0]), kv[0]),
    )[0]


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
