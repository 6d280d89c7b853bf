"""One client's walk through a machine, independent of any transport.

The TCP protocol feeds it stream bytes and the UDP protocol whole datagrams;
it answers with *steps* (a request matched, a request unmatched, the buffer
overflowed) and says whether it is waiting, and for what, so the transport
only has to run timers and write bytes. Keeping it free of Twisted makes the
hard part -- where does one request end in a stream -- testable on its own.

Where a request ends (TCP), given the buffer B at the current state:

1. B fullmatches a transition and no pattern could extend B: take B.
2. A proper prefix of B fullmatches a transition and the rest is a plausible
   start of the next request in the state that transition leads to (it
   matches, could be extended, or starts with a match there): split, if that
   prefix match is more specific than a match of the whole of B. Pipelined
   requests ("PING\\r\\nPING\\r\\n") arrive in one segment; a generic
   ``<any>\\r\\n`` pattern must not swallow both when a specific one fits each.
3. B fullmatches but could still grow into a longer request: wait for the
   *settle* delay; if nothing more comes, take B.
4. Nothing matches but some pattern could extend B: wait for more bytes (the
   transport bounds the wait with the request timeout).
5. A proper prefix matches (the rest is garbage): take the prefix; the rest
   is judged in the next state.
6. Otherwise B is unmatched.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from scriptgen.emulate.matching import CompiledMachine, Rule, StateIndex
from scriptgen.model import End


class Waiting(enum.Enum):
    NOTHING = "nothing"  # buffer empty (or consumed)
    SETTLE = "settle"  # buffer matches but could grow: take it after the settle delay
    MORE = "more"  # buffer is an incomplete request: wait for more bytes


@dataclass(frozen=True, slots=True)
class Matched:
    state: StateIndex  # where the request was read
    rule: Rule
    request: bytes
    target: StateIndex  # the state entered (its answer is to be sent)
    match: Any = None  # the regex match (live values of mutating regions)


@dataclass(frozen=True, slots=True)
class Unmatched:
    state: StateIndex
    request: bytes
    reason: str  # "no_match" | "request_timeout" | "incomplete"


@dataclass(frozen=True, slots=True)
class Overflow:
    size: int  # bytes buffered when the bound was crossed


Step = Matched | Unmatched | Overflow


class Dialog:
    """Current state and unconsumed bytes of one session."""

    def __init__(self, machine: CompiledMachine, max_buffer: int) -> None:
        self.machine = machine
        self.state: StateIndex = machine.states[machine.root]
        self.buffer = b""
        self.max_buffer = max_buffer
        self.waiting = Waiting.NOTHING
        self.requests = 0  # requests matched so far

    @property
    def root(self) -> StateIndex:
        return self.machine.states[self.machine.root]

    # --- TCP: a byte stream ---

    def feed(self, data: bytes) -> list[Step]:
        """Append stream bytes; return the steps they complete."""
        self.buffer += data
        steps = self._drain(final=False)
        if len(self.buffer) > self.max_buffer:
            size = len(self.buffer)
            self.buffer = b""
            self.waiting = Waiting.NOTHING
            steps.append(Overflow(size))
        return steps

    def settle(self) -> list[Step]:
        """The settle delay passed with no more bytes: take what matches now."""
        return self._drain(final=True)

    def expire(self) -> list[Step]:
        """The request timeout passed on an incomplete request: give up on it."""
        steps = self._drain(final=True)
        if self.buffer:
            steps.append(self._unmatched("request_timeout"))
        return steps

    def _drain(self, final: bool) -> list[Step]:
        steps: list[Step] = []
        while self.buffer:
            step = self._decide(final)
            if step is None:
                return steps
            steps.append(step)
            if isinstance(step, Unmatched) or step.target.end is not End.OPEN:
                break  # the server stops reading here (unmatched, or it closes)
        self.waiting = Waiting.NOTHING
        return steps

    def _decide(self, final: bool) -> Step | None:
        buf, state = self.buffer, self.state
        whole = state.best(buf)
        extend = state.could_extend(buf)
        if whole is not None and not extend:
            return self._take(len(buf), whole)
        split = self._plausible_split(buf, state)
        if split is not None and (
            whole is None or split[0].rule.specificity > whole[0].specificity
        ):
            return self._take(split[1], (split[0].rule, split[0].match))
        if whole is not None:
            if final:
                return self._take(len(buf), whole)
            self.waiting = Waiting.SETTLE
            return None
        if extend and not final:
            self.waiting = Waiting.MORE
            return None
        for _rule, n in state.prefix_matches(buf):
            hit = state.best(buf[:n])
            if hit is not None:
                return self._take(n, hit)
        if extend:  # final, still incomplete: the caller decides (timeout)
            self.waiting = Waiting.MORE
            return None
        return self._unmatched("no_match")

    def _plausible_split(self, buf: bytes, state: StateIndex) -> tuple[Matched, int] | None:
        for _rule, n in state.prefix_matches(buf):
            hit = state.best(buf[:n])
            if hit is None:
                continue
            target = self.machine.states[hit[0].target]
            rest = buf[n:]
            if (
                target.best(rest) is not None
                or target.could_extend(rest)
                or next(target.prefix_matches(rest), None) is not None
            ):
                return Matched(state, hit[0], buf[:n], target, hit[1]), n
        return None

    def _take(self, n: int, hit: tuple[Rule, Any]) -> Matched:
        rule, match = hit
        request, self.buffer = self.buffer[:n], self.buffer[n:]
        source = self.state
        self.state = self.machine.states[rule.target]
        self.requests += 1
        return Matched(source, rule, request, self.state, match)

    def _unmatched(self, reason: str) -> Unmatched:
        request, self.buffer = self.buffer, b""
        self.waiting = Waiting.NOTHING
        return Unmatched(self.state, request, reason)

    # --- UDP: one datagram is one request ---

    def datagram(self, data: bytes) -> Step:
        hit = self.state.best(data)
        if hit is None:
            return Unmatched(self.state, data, "no_match")
        source = self.state
        self.state = self.machine.states[hit[0].target]
        self.requests += 1
        return Matched(source, hit[0], data, self.state, hit[1])
