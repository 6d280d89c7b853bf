"""One client's walk through a machine, independent of any transport.

The TCP protocol feeds it stream bytes and the UDP protocol whole datagrams;
it answers with *steps* (a request matched, a request unmatched, the buffer
overflowed) and says whether it is waiting, and for what, so the transport
only has to run timers and write bytes. Keeping it free of Twisted makes the
hard part -- where does one request end in a stream -- testable on its own.

Where a request ends (TCP), given the buffer B at the current state:

1. Split: a proper prefix of B fullmatches a transition and the rest reads
   as the next request(s) in the state it leads to (matches, starts with a
   match, or could still become one there). Take the prefix when that
   reading explains more fixed bytes than one match of the whole of B:
   pipelined ``USER a\r\nPING\r\n`` is two requests even though
   ``USER <1..20>\r\n`` alone fits too.
2. B fullmatches and cannot grow: take B. It can grow when another pattern
   could still extend it (``PING`` vs ``PINGALL\r\n``) or when its own final
   mutating region has room left (a payload cut by a segment boundary);
   then wait the *settle* delay and take B if nothing more came.
3. Nothing matches but some pattern could extend B: wait for more bytes (the
   transport bounds the wait with the request timeout).
4. A proper prefix matches and the rest is garbage: take the prefix; the
   rest is judged in the next state.
5. Otherwise B is unmatched.

A pattern ending in a fixed region (a terminator) is not considered able to
grow by swallowing its own terminator: learned mutating regions carry only
a length range, so the emulator cannot tell, and treating every line as
possibly unfinished would delay every answer by the settle delay.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from scriptgen.emulate.matching import CompiledMachine, MatchTimeout, Rule, StateIndex
from scriptgen.model import End

LAZY_FROM = 4096  # incomplete requests larger than this are judged lazily
MAX_PATH = 64  # states remembered per session for back-off (the root always stays)
MAX_BACKOFF = 64  # states back-off reads one unmatched request at


class Waiting(enum.Enum):
    NOTHING = "nothing"  # buffer empty (or consumed)
    SETTLE = "settle"  # buffer matches but could grow: take it after the settle delay
    MORE = "more"  # buffer is an incomplete request: wait for more bytes


@dataclass(slots=True)  # not frozen: built per request, and frozen init is slow
class Matched:
    state: StateIndex  # where the request was read
    rule: Rule
    request: bytes
    target: StateIndex  # the state entered (its answer is to be sent)

    def match(self) -> Any:
        """The regex match of the request (live values of mutating regions)."""
        return self.rule.match(self.request)


@dataclass(slots=True)
class Unmatched:
    state: StateIndex
    request: bytes
    # "no_match" | "request_timeout" | "request_quiet" (client silent mid-request)
    # | "incomplete" (client closed mid-request)
    # | "match_timeout" (the regex engine ran out of time on it)
    reason: str


@dataclass(slots=True)
class Overflow:
    size: int  # bytes buffered when the bound was crossed


Step = Matched | Unmatched | Overflow


class Dialog:
    """Current state and unconsumed bytes of one session."""

    def __init__(
        self, machine: CompiledMachine, max_buffer: int, backoff: bool = False, alike: bool = False
    ) -> None:
        self.machine = machine
        self.state: StateIndex = machine.states[machine.root]
        self.backoff = backoff  # read an unmatched request at the states passed before
        self.alike = alike  # ... and at the states the same requests led to elsewhere
        self.path: list[StateIndex] = [self.state]
        self.buffer = b""
        self.max_buffer = max_buffer
        self.waiting = Waiting.NOTHING
        self.requests = 0  # requests matched so far
        self.judgements = 0  # buffers judged without the cache (tests, benchmarks)
        self._judged = 0  # buffer length when it was last judged

    @property
    def root(self) -> StateIndex:
        return self.machine.states[self.machine.root]

    # --- TCP: a byte stream ---

    def feed(self, data: bytes) -> list[Step]:
        """Append stream bytes; return the steps they complete."""
        self.buffer = self.buffer + data if self.buffer else data
        size = len(self.buffer)
        if self.waiting is not Waiting.NOTHING and LAZY_FROM < size <= self.max_buffer:
            if size < self._judged + self._judged // 8:
                # A big request trickling in: judging the whole buffer again on
                # every small segment would cost O(n^2) regex work (a cheap
                # attack). Judge again when it grew by 1/8, or when the stream
                # pauses for the settle delay.
                self.waiting = Waiting.SETTLE
                return []
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

    def expire(self, reason: str = "request_timeout") -> list[Step]:
        """No more bytes will come for this request (timeout, or the client
        closed its side): take what matches, give up on the rest."""
        steps = self._drain(final=True)
        if self.buffer:
            steps.append(self._unmatched(reason))
        return steps

    def _drain(self, final: bool) -> list[Step]:
        steps: list[Step] = []
        self._judged = len(self.buffer)
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
        key = (self.state.id, self.buffer, final)
        decision = self.machine.cached(key)
        if decision is None:
            self.judgements += 1
            try:
                decision = self._judge(self.buffer, self.state, final)
            except MatchTimeout:  # remembered too: a repeated hostile request costs once
                decision = ("unmatched", "match_timeout")
            self.machine.remember(key, decision)
        kind = decision[0]
        if kind == "take":
            return self._take(decision[1], decision[2])
        if kind == "unmatched":
            if self.backoff and decision[1] == "no_match":
                step = self._back_off(final)
                if step is not None:
                    return step
            return self._unmatched(decision[1])
        self.waiting = decision[1]
        return None

    def _judge(self, buf: bytes, state: StateIndex, final: bool) -> tuple[Any, ...]:
        """Where the first request in ``buf`` ends; pure, so it can be cached."""
        cands = state.candidates(buf)
        whole = state.best(buf, cands)
        split = self._plausible_split(buf, state, cands)
        if split is not None and (whole is None or split[2] > whole.specificity):
            return ("take", split[1], split[0])
        extend = state.could_extend(buf, cands)
        if whole is not None:
            if final or not (extend or whole.tail_slack(buf)):
                return ("take", len(buf), whole)
            return ("wait", Waiting.SETTLE)
        if extend and not final:
            return ("wait", Waiting.MORE)
        for _rule, n in state.prefix_matches(buf, cands):
            hit = state.best(buf[:n])
            if hit is not None:
                return ("take", n, hit)
        if extend:  # final, still incomplete: the caller decides (timeout)
            return ("wait", Waiting.MORE)
        return ("unmatched", "no_match")

    def _plausible_split(
        self, buf: bytes, state: StateIndex, cands: list[Rule]
    ) -> tuple[Rule, int, int] | None:
        """The best way to read ``buf`` as one whole request plus the start of another.

        Scored by the fixed bytes both parts match (the rest scores its best
        full or prefix match in the next state, 0 if it is only incomplete),
        so a split wins over one match of the whole buffer only when it
        explains more of it: ``USER a\\r\\nPING\\r\\n`` is two requests even
        though ``USER <1..20>\\r\\n`` alone also fits.
        """
        best: tuple[Rule, int, int] | None = None
        for _rule, n in state.prefix_matches(buf, cands):
            hit = state.best(buf[:n])
            if hit is None:
                continue
            rest_score = _plausibility(self.machine.states[hit.target], buf[n:])
            if rest_score is None:
                continue
            total = hit.specificity + rest_score
            if best is None or total > best[2]:
                best = (hit, n, total)
        return best

    def _take(self, n: int, rule: Rule, source: StateIndex | None = None) -> Matched:
        request, self.buffer = self.buffer[:n], self.buffer[n:]
        source = source or self.state
        self.state = self.machine.states[rule.target]
        self._push(self.state)
        self.requests += 1
        return Matched(source, rule, request, self.state)

    def _push(self, state: StateIndex) -> None:
        if len(self.path) >= MAX_PATH:
            del self.path[1]
        self.path.append(state)

    def _ancestors(self) -> list[StateIndex]:
        """Where back-off reads a request: the states passed before the current one,
        most recent first, each once; with ``alike``, then the states that the
        requests which led to the current one and to those led to elsewhere in
        the machine (``CompiledMachine.alike``), at most ``MAX_BACKOFF`` in all."""
        seen = {self.state.id}
        out = []
        for state in reversed(self.path):
            if state.id not in seen:
                seen.add(state.id)
                out.append(state)
        if self.alike:
            for state in [self.state, *out]:
                for sid in self.machine.alike.get(state.id, ()):
                    if sid not in seen and sid in self.machine.states:
                        seen.add(sid)
                        out.append(self.machine.states[sid])
        return out[:MAX_BACKOFF]

    def _back_off(self, final: bool) -> Matched | None:
        """Read a request the current state has no transition for at the states the
        session passed before, most recent first (with ``alike``, then at the states
        the same requests led to elsewhere: ``_ancestors``).

        Why: the machine is a tree of positions, so a command learned after
        login is unknown two commands later (``GET`` again on one
        connection, ``SYST`` after ``PWD``) although the answer was learned;
        the earlier position's transition gives it, and the session goes on
        from there. Only whole matches count (no waiting for more bytes).
        """
        for state in self._ancestors():
            key = (state.id, self.buffer, final)
            decision = self.machine.cached(key)
            if decision is None:
                try:
                    decision = self._judge(self.buffer, state, final)
                except MatchTimeout:
                    decision = ("unmatched", "match_timeout")
                self.machine.remember(key, decision)
            if decision[0] == "take":
                return self._take(decision[1], decision[2], source=state)
        return None

    def _unmatched(self, reason: str) -> Unmatched:
        request, self.buffer = self.buffer, b""
        self.waiting = Waiting.NOTHING
        return Unmatched(self.state, request, reason)

    # --- UDP: one datagram is one request ---

    def datagram(self, data: bytes) -> Step:
        source = self.state
        try:
            rule = self.state.best(data)
            if rule is None and self.backoff:
                for state in self._ancestors():
                    rule = state.best(data)
                    if rule is not None:
                        source = state
                        break
        except MatchTimeout:
            return Unmatched(self.state, data, "match_timeout")
        if rule is None:
            return Unmatched(self.state, data, "no_match")
        self.state = self.machine.states[rule.target]
        self._push(self.state)
        self.requests += 1
        return Matched(source, rule, data, self.state)


def _plausibility(state: StateIndex, data: bytes) -> int | None:
    """How well ``data`` reads as the next request(s) at ``state``: the fixed
    bytes of its best full or prefix match, 0 if it is only a possible start,
    None if it cannot be a request there."""
    cands = state.candidates(data)
    whole = state.best(data, cands)
    if whole is not None:
        return whole.specificity
    prefix = next(state.prefix_matches(data, cands), None)
    if prefix is not None:
        return prefix[0].specificity
    return 0 if state.could_extend(data, cands) else None
