"""The learned state machine of one (protocol, port): the learner writes it,
the emulator walks it.

A state is entered by a transition (or at connect, for the root); on entering
it the emulator sends the state's consolidated ``answer`` (empty: stay
silent) and then does what the server did there (``end``: keep the
connection open, close it, or reset it). A state's ``bucket`` holds the raw
conversation suffixes that no outgoing transition matched yet: the data the
next refinement step analyses.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from scriptgen.model.pattern import Pattern


class End(enum.Enum):
    """What the server does after answering in a state."""

    OPEN = "open"  # keeps the connection open, waits for the next request
    CLOSE = "close"  # closes (FIN)
    RESET = "reset"  # aborts (RST)


@dataclass(frozen=True, slots=True)
class Turn:
    """One client request and the server's answer to it (may be empty)."""

    request: bytes
    answer: bytes


@dataclass(frozen=True, slots=True)
class Suffix:
    """The rest of a training conversation from some state on.

    ``end`` is what the server did after the last answer (``None``: the
    client ended the conversation, or the capture did).
    """

    turns: tuple[Turn, ...]
    end: End | None = None
    origin: str = ""  # "file.pcap#client:port" for provenance; not matched on

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"turns": [[t.request.hex(), t.answer.hex()] for t in self.turns]}
        if self.end is not None:
            d["end"] = self.end.value
        if self.origin:
            d["origin"] = self.origin
        return d

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Suffix:
        turns = tuple(Turn(bytes.fromhex(r), bytes.fromhex(a)) for r, a in obj["turns"])
        end = End(obj["end"]) if obj.get("end") else None
        return cls(turns, end, obj.get("origin", ""))


@dataclass(slots=True)
class Transition:
    """Requests matching ``pattern`` lead to state ``target``."""

    pattern: Pattern
    target: int
    samples: int = 0  # training requests that created/matched it
    # A few distinct requests it took (bounded by the learner): incremental
    # training re-analyses them with new data instead of starting from the
    # pattern alone.
    examples: list[bytes] = field(default_factory=list)
    # Made from a request that formed no cluster (fewer samples than region
    # analysis needs): the pattern is that request byte for byte, nothing is
    # generalised, and a general transition that later covers it absorbs it.
    verbatim: bool = False
    # A request kept with the answer the server gave to it, beside a general
    # transition that answers every other value (scriptgen.learn.answersplit,
    # exceptions): not a kind of request of its own, so content inference
    # walks past it (its state inherits the general state's dependencies).
    exception: bool = False

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "pattern": self.pattern.to_json(),
            "target": self.target,
            "samples": self.samples,
        }
        if self.examples:
            d["examples"] = [e.hex() for e in self.examples]
        if self.verbatim:
            d["verbatim"] = True
        if self.exception:
            d["exception"] = True
        return d

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Transition:
        pattern = Pattern.from_json(obj["pattern"])
        examples = [bytes.fromhex(e) for e in obj.get("examples", [])]
        # an edited or stale example that the pattern refuses is not evidence
        examples = [e for e in examples if pattern.fullmatch(e) is not None]
        verbatim = obj.get("verbatim", False)
        if not isinstance(verbatim, bool):
            raise ValueError(f"transition verbatim flag {verbatim!r} is not a boolean")
        if verbatim and not all(r.is_fixed for r in pattern.regions):
            raise ValueError("a verbatim transition has a mutating region")
        exception = obj.get("exception", False)
        if not isinstance(exception, bool):
            raise ValueError(f"transition exception flag {exception!r} is not a boolean")
        samples = int(obj.get("samples", 0))
        return cls(pattern, int(obj["target"]), samples, examples, verbatim, exception)


@dataclass(slots=True)
class State:
    id: int
    answer: bytes = b""
    end: End = End.OPEN
    transitions: list[Transition] = field(default_factory=list)
    bucket: list[Suffix] = field(default_factory=list)
    samples: int = 0  # training conversations that reached this state
    dropped: int = 0  # suffixes not bucketed: bucket full (count or bytes) or a message too large
    # Evidence kept so consolidation can be redone incrementally: distinct
    # answers seen with counts (bounded by the learner), and how often the
    # server closed/reset here.
    answers: dict[bytes, int] = field(default_factory=dict)
    ends: dict[str, int] = field(default_factory=dict)
    # Filled by later stages (content and session dependencies); kept opaque
    # here so the emulator can pass them to the components that use them.
    dependencies: list[dict[str, Any]] = field(default_factory=list)
    signals: list[dict[str, Any]] = field(default_factory=list)

    def best_transition(
        self, data: bytes, general_only: bool = False
    ) -> tuple[Transition, Any] | None:
        """The matching function: exact match on every fixed region; among
        several matches, the one with the most fixed bytes wins (ties: the
        earlier transition, so the choice is deterministic). ``general_only``:
        as if the verbatim (one recorded request) and exception transitions
        were not there."""
        best: tuple[Transition, Any] | None = None
        for t in self.transitions:
            if general_only and (t.verbatim or t.exception):
                continue
            if best is not None and t.pattern.specificity <= best[0].pattern.specificity:
                continue
            m = t.pattern.fullmatch(data)
            if m is not None:
                best = (t, m)
        return best

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "answer": self.answer.hex(),
            "end": self.end.value,
            "samples": self.samples,
            "transitions": [t.to_json() for t in self.transitions],
            "answers": [[a.hex(), n] for a, n in sorted(self.answers.items())],
            "ends": dict(sorted(self.ends.items())),
            "bucket": [s.to_json() for s in self.bucket],
        }
        if self.dropped:
            d["dropped"] = self.dropped
        if self.dependencies:
            d["dependencies"] = self.dependencies
        if self.signals:
            d["signals"] = self.signals
        return d

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> State:
        return cls(
            id=int(obj["id"]),
            answer=bytes.fromhex(obj.get("answer", "")),
            end=End(obj.get("end", "open")),
            transitions=[Transition.from_json(t) for t in obj.get("transitions", [])],
            bucket=[Suffix.from_json(s) for s in obj.get("bucket", [])],
            samples=int(obj.get("samples", 0)),
            dropped=int(obj.get("dropped", 0)),
            answers={bytes.fromhex(a): int(n) for a, n in obj.get("answers", [])},
            ends={str(k): int(v) for k, v in obj.get("ends", {}).items()},
            dependencies=list(obj.get("dependencies", [])),
            signals=list(obj.get("signals", [])),
        )


@dataclass(slots=True)
class Machine:
    """One learned state machine: the model of one (protocol, port)."""

    protocol: str  # "tcp" | "udp"
    port: int
    states: dict[int, State] = field(default_factory=dict)
    root: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.root not in self.states:
            self.states[self.root] = State(self.root)

    @property
    def key(self) -> tuple[str, int]:
        return (self.protocol, self.port)

    @property
    def name(self) -> str:
        return f"{self.protocol}-{self.port}"

    def new_state(self) -> State:
        sid = max(self.states) + 1 if self.states else 0
        state = State(sid)
        self.states[sid] = state
        return state

    def walk(self, requests: Iterable[bytes]) -> Iterator[tuple[State, Transition | None]]:
        """Follow ``requests`` from the root; yields (state, transition taken)
        and stops at the first request no transition matches."""
        state = self.states[self.root]
        for req in requests:
            hit = state.best_transition(req)
            if hit is None:
                yield state, None
                return
            state = self.states[hit[0].target]
            yield state, hit[0]

    def counts(self) -> dict[str, int]:
        return {
            "states": len(self.states),
            "transitions": sum(len(s.transitions) for s in self.states.values()),
            "verbatim": sum(t.verbatim for s in self.states.values() for t in s.transitions),
            "exceptions": sum(t.exception for s in self.states.values() for t in s.transitions),
            "bucketed": sum(len(s.bucket) for s in self.states.values()),
        }
