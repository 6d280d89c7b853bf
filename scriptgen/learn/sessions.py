"""Session dependencies: a state reached on one port opens another port, per source.

ScriptGen's signals (RAID 2006, §4.2): an exploit checks that its shell port
is closed, attacks port A, and then connects to the shell, which must now be
open; an FTP server opens its passive data port after answering PASV. The
learner finds such links in the traffic of each source address across all
ports, including the connection attempts that were refused or never answered,
and writes them into the state that causes them as a *signal*::

    {"opens": "tcp/4444", "for": 12.0, "mode": "refused", "samples": 20, ...}

Rule (why each part, see docs/session-dependencies.md):

* Per source, time order. A *reach* is (time, port A, state S): the root of A's
  machine at connect, then every state the conversation's requests walk to
  (``Machine.walk``), at the time the request started.
* The *trigger* of an accepted connection to port B is the latest reach of
  another port by the same source at most ``window`` seconds before it.
* B gets signals only if *every* accepted connection to B has a trigger (a
  port that is sometimes open without a cause is treated as always open).
* The triggers together must explain at least ``min_samples`` accepted B
  connections from ``min_sources`` sources (counted per port: a learned
  machine may split one step into sibling states seen a few times each).
* Every triggering state S must pass on its own, or B gets no signal at all:
  no refused/unanswered B attempt by the same source falls within the learned
  duration after a reach of S (that would prove S does not open B), and one of
  two kinds of evidence holds:

  - ``refused``: B connections it triggered were preceded, within ``window``
    before the trigger, by a refused or unanswered attempt to B from the same
    source (closed before, open after) -- at least one for S, at least
    ``min_samples`` for the port;
  - ``announced``: no attempt to B was ever refused, S's answer names B's
    port number as text (``40000``, or its two bytes as decimals,
    ``156,64``), and every B connection it triggered started while the
    conversation that reached S was still open. Passive data ports are not
    probed before, so refusals cannot exist; the server telling the client
    where to connect, in a conversation that is still going on, is the
    evidence instead.

* The signal lasts ``for`` = ``margin`` × the longest observed delay between
  the trigger and the B connection, at least ``min_for``, at most ``window``.
* *Drawn per answer* (passive ports from a range): per emitting machine, if
  every connection some states triggered was named by the answer that state
  gave in that very conversation, at one place of it, while it was open,
  and those connections went to ``min_ports`` different ports (``min_samples``
  in all, counted per machine: such ports spread over many sibling states),
  each such state gets a signal with ``"announce": {"at", "len", "form"}``:
  where its answer spells the port. Its ``opens`` is the learned port whose
  machine reproduces most of that state's own connections. The emulator
  draws a free port there per answer; content inference leaves those bytes
  alone (they would otherwise be "random": a port nobody serves).

Nothing here knows any protocol; everything is counted from the captures.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from scriptgen.learn.dialog import to_dialog
from scriptgen.model import Machine, State
from scriptgen.trace.types import Conversation, Direction, Outcome

Key = tuple[str, int]
SIGNAL_KIND = "session"  # marks signals written by this module (others may exist)
MAX_CANDIDATES = 64  # machines tried per connection when picking a drawn port's machine


@dataclass(frozen=True)
class SessionOptions:
    """Thresholds of the inference (written into each model's options by the trainer)."""

    window: float = 60.0  # longest gap between a cause and its effect (seconds)
    min_samples: int = 3  # accepted connections a state must explain
    min_sources: int = 1  # distinct source addresses among them
    margin: float = 2.0  # signal duration = margin × longest observed delay
    min_for: float = 5.0  # shortest signal duration written
    min_ports: int = 2  # distinct ports an answer must have announced to be "drawn per answer"
    max_contacts: int = 200_000  # connections remembered per training run (bound)
    max_request_bytes: int = 64 * 1024 * 1024  # request + answer bytes remembered (bound)
    max_answer_bytes: int = 1024  # first bytes of each answer kept (announcements are short)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Contact:
    """One connection attempt as session inference needs it (no answers kept)."""

    protocol: str
    port: int
    source: str
    start: float
    accepted: bool  # False: refused or unanswered
    end: float = 0.0
    requests: tuple[bytes, ...] = ()
    times: tuple[float, ...] = ()  # when each request started (same length as requests)
    # The banner, then the answer to each request (first max_answer_bytes of each).
    answers: tuple[bytes, ...] = ()

    @property
    def key(self) -> Key:
        return (self.protocol, self.port)


@dataclass(frozen=True, slots=True)
class Reach:
    """Source reached ``state`` of the machine ``key`` at ``time``."""

    time: float
    key: Key
    state: int
    until: float  # when the conversation that reached it ended
    answer: bytes = b""  # what the server said on reaching it, in that conversation


@dataclass
class Finding:
    """One learned signal and the evidence for it."""

    key: Key  # machine of the emitting state
    state: int
    target: Key
    duration: float
    mode: str  # "refused" or "announced"
    samples: int  # accepted target connections it explains
    sources: int
    refused: int  # of those, preceded by a refused/unanswered attempt
    max_delay: float
    # Where the state's answer names the port it opens, when the server drew that
    # port per answer: {"at", "len", "form"} (the emulator draws its own there).
    announce: dict[str, Any] | None = None

    def signal(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": SIGNAL_KIND,
            "opens": f"{self.target[0]}/{self.target[1]}",
            "for": round(self.duration, 3),
            "mode": self.mode,
            "samples": self.samples,
            "sources": self.sources,
            "refused": self.refused,
            "max_delay": round(self.max_delay, 6),
        }
        if self.announce is not None:
            out["announce"] = dict(self.announce)
        return out


@dataclass
class Rejection:
    """Why a target port got no signal (reported, and asserted on by tests)."""

    target: Key
    reason: str


@dataclass
class SessionReport:
    findings: list[Finding] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    contacts: int = 0
    dropped: int = 0


# --- recording --------------------------------------------------------------


def request_times(conv: Conversation, count: int) -> tuple[float, ...]:
    """Start time of each dialog request, grouped as ``to_dialog`` groups them."""
    times: list[float] = []
    prev: Direction | None = None
    for msg in conv.messages:
        if msg.direction is Direction.CLIENT and (
            conv.protocol == "udp" or prev is not Direction.CLIENT
        ):
            times.append(msg.timestamp)
        prev = msg.direction
    if len(times) < count:
        times += [conv.end] * (count - len(times))
    return tuple(times[:count])


class SessionRecorder:
    """Remembers, bounded, what inference needs of every conversation that streams by."""

    def __init__(self, options: SessionOptions | None = None) -> None:
        self.options = options or SessionOptions()
        self.contacts: list[Contact] = []
        self.dropped = 0
        self._bytes = 0

    def tee(self, conversations: Iterable[Conversation]) -> Iterator[Conversation]:
        """Pass conversations through unchanged, observing each."""
        for conv in conversations:
            self.observe(conv)
            yield conv

    def observe(self, conv: Conversation) -> None:
        if len(self.contacts) >= self.options.max_contacts:
            self.dropped += 1
            return
        if conv.midstream:
            return  # its first requests are unknown: it cannot be walked from the root
        accepted = conv.outcome not in (Outcome.REFUSED, Outcome.UNANSWERED)
        requests: tuple[bytes, ...] = ()
        times: tuple[float, ...] = ()
        answers: tuple[bytes, ...] = ()
        if accepted:
            got = to_dialog(conv)
            if got == "no-messages":
                answers = (b"",)  # the server said nothing (nor did the client)
            elif not isinstance(got, str):
                requests = tuple(t.request for t in got.suffix.turns)
                cut = self.options.max_answer_bytes
                answers = tuple(
                    a[:cut] for a in (got.banner, *(t.answer for t in got.suffix.turns))
                )
                size = sum(len(r) for r in requests) + sum(len(a) for a in answers)
                if self._bytes + size > self.options.max_request_bytes:
                    self.dropped += 1
                    return
                self._bytes += size
                times = request_times(conv, len(requests))
        self.contacts.append(
            Contact(
                conv.protocol,
                conv.server.port,
                conv.client.ip,
                conv.start,
                accepted,
                max(conv.end, conv.start),
                requests,
                times,
                answers,
            )
        )


# --- inference --------------------------------------------------------------


def reaches_of(contact: Contact, machine: Machine | None) -> list[Reach]:
    """The states an accepted contact reached, with times (root at connect)."""
    if machine is None or not contact.accepted:
        return []
    said = contact.answers
    found = [Reach(contact.start, contact.key, machine.root, contact.end, said[0] if said else b"")]
    for i, (state, transition) in enumerate(machine.walk(contact.requests)):
        if transition is None:
            break
        answer = said[i + 1] if i + 1 < len(said) else b""
        found.append(Reach(contact.times[i], contact.key, state.id, contact.end, answer))
    return found


FORMS = ("decimal", "pair")  # how an answer spells a port: 40000, or 156,64


def port_text(port: int, form: str) -> bytes:
    """``port`` spelt in ``form`` (the emulator writes a drawn port the same way)."""
    return str(port).encode() if form == "decimal" else f"{port >> 8},{port & 0xFF}".encode()


def announced_at(answer: bytes, port: int) -> set[tuple[str, int]]:
    """(form, offset) of every place ``answer`` names ``port`` (not inside a longer number)."""
    found = set()
    for form in FORMS:
        text = port_text(port, form)
        if text not in answer:
            continue  # the common case: no regex compiled per port
        for m in re.finditer(rb"(?<![0-9])" + re.escape(text) + rb"(?![0-9])", answer):
            found.add((form, m.start()))
    return found


def read_port(answer: bytes, at: int, form: str) -> tuple[int, int] | None:
    """(port, length) when ``answer`` spells a port in ``form`` right at ``at``, else None."""
    if not 0 <= at < len(answer) or (at and answer[at - 1 : at].isdigit()):
        return None
    shape = rb"[0-9]{1,5}" if form == "decimal" else rb"[0-9]{1,3},[0-9]{1,3}"
    m = re.compile(shape + rb"(?![0-9])").match(answer, at)
    if m is None:
        return None
    if form == "decimal":
        port = int(m.group())
    else:
        high, low = (int(x) for x in m.group().split(b","))
        port = high * 256 + low if high < 256 and low < 256 else 0
    if not 0 < port <= 65535 or port_text(port, form) != m.group():
        return None  # out of range, or not how the port is spelt (leading zeros)
    return port, len(m.group())


def announces(answer: bytes, port: int) -> bool:
    """True when ``answer`` names ``port`` as decimal text or as two decimal bytes."""
    return bool(announced_at(answer, port))


def _state_answers(machine: Machine, sid: int) -> list[bytes]:
    state = machine.states[sid]
    return [state.answer, *state.answers]


@dataclass
class _Evidence:
    """Accepted target connections one candidate state triggered."""

    delays: list[float] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)
    refused_before: int = 0
    during: int = 0  # started while the triggering conversation was still open


def _per_source(contacts: Iterable[Contact]) -> dict[str, list[Contact]]:
    by_source: dict[str, list[Contact]] = defaultdict(list)
    for c in contacts:
        by_source[c.source].append(c)
    for items in by_source.values():
        items.sort(key=lambda c: (c.start, c.protocol, c.port, not c.accepted))
    return by_source


def infer(
    contacts: Iterable[Contact],
    machines: Mapping[Key, Machine],
    options: SessionOptions | None = None,
) -> SessionReport:
    """Findings (signals to write) and rejections for every TCP port contacted."""
    options = options or SessionOptions()
    contacts = list(contacts)
    report = SessionReport(contacts=len(contacts))
    by_source = _per_source(contacts)
    reaches: dict[str, list[Reach]] = {}
    for source, items in by_source.items():
        found = [r for c in items for r in reaches_of(c, machines.get(c.key))]
        found.sort(key=lambda r: (r.time, r.key, r.state))
        reaches[source] = found
    # Each target only ever looks at its own contacts: index them once, so the
    # work grows with contacts and not with ports x contacts.
    by_target: dict[Key, dict[str, list[Contact]]] = defaultdict(lambda: defaultdict(list))
    for source, items in by_source.items():
        for c in items:
            if c.protocol == "tcp":
                by_target[c.key][source].append(c)
    times = {source: [r.time for r in rs] for source, rs in reaches.items()}
    for target in sorted(by_target):
        if any(c.accepted for items in by_target[target].values() for c in items):
            _infer_target(target, by_target[target], reaches, times, machines, options, report)
    drawn = _infer_drawn(_Walks(by_source, reaches, times), machines, options, report)
    _merge_drawn(report.findings, drawn)
    return report


def _trigger(
    reaches: list[Reach], times: list[float], target: Key, at: float, window: float
) -> Reach | None:
    """The latest reach on another port within ``window`` before ``at``."""
    i = bisect.bisect_right(times, at)
    while i > 0:
        i -= 1
        r = reaches[i]
        if at - r.time > window:
            return None
        if r.key != target:
            return r
    return None


def _infer_target(
    target: Key,
    by_source: dict[str, list[Contact]],
    reaches: dict[str, list[Reach]],
    times: dict[str, list[float]],
    machines: Mapping[Key, Machine],
    options: SessionOptions,
    report: SessionReport,
) -> None:
    """Evidence for one target port; ``by_source`` holds only that port's contacts."""
    refused_any = any(not c.accepted for items in by_source.values() for c in items)
    evidence: dict[tuple[Key, int], _Evidence] = defaultdict(_Evidence)
    for source, items in by_source.items():
        refusals = [c.start for c in items if not c.accepted]
        for c in items:
            if not c.accepted:
                continue
            trig = _trigger(reaches[source], times[source], target, c.start, options.window)
            if trig is None:
                report.rejections.append(
                    Rejection(target, f"accepted from {source} at {c.start:.6f} without a cause")
                )
                return
            ev = evidence[(trig.key, trig.state)]
            ev.delays.append(c.start - trig.time)
            ev.sources.add(source)
            if any(trig.time - options.window <= t <= trig.time for t in refusals):
                ev.refused_before += 1
            if c.start <= trig.until:
                ev.during += 1
    if not evidence:
        return
    judged = _judge_all(target, evidence, by_source, reaches, machines, options, refused_any)
    if isinstance(judged, Rejection):
        report.rejections.append(judged)
    else:
        report.findings.extend(judged)


def _judge_all(
    target: Key,
    evidence: dict[tuple[Key, int], _Evidence],
    by_source: dict[str, list[Contact]],
    reaches: dict[str, list[Reach]],
    machines: Mapping[Key, Machine],
    options: SessionOptions,
    refused_any: bool,
) -> list[Finding] | Rejection:
    """Findings for every triggering state of ``target``, or why the port gets none.

    Thresholds hold for the port as a whole (a learned machine may split one
    step into sibling states, each seen a few times); every triggering state
    must carry evidence of its own and no contradiction.
    """
    samples = sum(len(ev.delays) for ev in evidence.values())
    sources = set().union(*(ev.sources for ev in evidence.values()))
    refused = sum(ev.refused_before for ev in evidence.values())
    if samples < options.min_samples:
        return Rejection(target, f"only {samples} samples (< {options.min_samples})")
    if len(sources) < options.min_sources:
        return Rejection(target, f"only {len(sources)} sources (< {options.min_sources})")
    max_delay = max(d for ev in evidence.values() for d in ev.delays)
    duration = min(max(options.margin * max_delay, options.min_for), options.window)
    findings = []
    for (key, sid), ev in sorted(evidence.items()):
        where = f"{key[0]}/{key[1]} state {sid}"
        contradicted = _contradictions(target, key, sid, duration, by_source, reaches)
        if contradicted:
            return Rejection(
                target, f"{where}: {contradicted} refused attempts within {duration:.3f}s after it"
            )
        if refused >= options.min_samples and ev.refused_before > 0:
            mode = "refused"
        elif (
            not refused_any
            and ev.during == len(ev.delays)
            and any(announces(a, target[1]) for a in _state_answers(machines[key], sid))
        ):
            mode = "announced"
        else:
            return Rejection(
                target,
                f"{where}: {ev.refused_before} refused-before samples ({refused} in all, "
                f"need {options.min_samples}), and no announcement (answer naming the port, "
                "connection made while it is open)",
            )
        findings.append(
            Finding(
                key,
                sid,
                target,
                duration,
                mode,
                len(ev.delays),
                len(ev.sources),
                ev.refused_before,
                max(ev.delays),
            )
        )
    return findings


def _contradictions(
    target: Key,
    key: Key,
    sid: int,
    duration: float,
    by_source: dict[str, list[Contact]],
    reaches: dict[str, list[Reach]],
) -> int:
    """Refused attempts to ``target`` (``by_source``: its contacts) soon after reaching the state."""
    count = 0
    for source, items in by_source.items():
        hits = [r.time for r in reaches[source] if r.key == key and r.state == sid]
        if not hits:
            continue
        for c in items:
            if not c.accepted:
                i = bisect.bisect_right(hits, c.start)
                if i and c.start - hits[i - 1] <= duration:
                    count += 1
    return count


# --- ports drawn per answer -------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Told:
    """An accepted connection and where the answer that triggered it named its port."""

    port: int
    source: str
    delay: float
    during: bool  # started while the triggering conversation was still open
    spots: frozenset[tuple[str, int]]  # (form, offset) in that answer
    contact: Contact  # the connection itself: what it carried


def _told(walks: _Walks, window: float) -> tuple[dict[tuple[Key, int], list[_Told]], set[int]]:
    """Every accepted TCP connection under the state that triggered it, and the ports
    that are no evidence (refused once, or accepted once without a cause)."""
    told: dict[tuple[Key, int], list[_Told]] = defaultdict(list)
    spoilt: set[int] = set()
    for source, items in walks.by_source.items():
        for c in items:
            if c.protocol != "tcp":
                continue
            trig = None
            if c.accepted:
                trig = _trigger(walks.reaches[source], walks.times[source], c.key, c.start, window)
            if trig is None:
                spoilt.add(c.port)
                continue
            spots = frozenset(announced_at(trig.answer, c.port))
            told[(trig.key, trig.state)].append(
                _Told(c.port, source, c.start - trig.time, c.start <= trig.until, spots, c)
            )
    return told, spoilt


def _place(
    machine: Machine | None, sid: int, items: list[_Told], spoilt: set[int]
) -> tuple[str, int, int, int] | None:
    """(form, offset, length, port) where the state's template names a port at the place
    every answer it gave named the port then connected to; None unless every connection
    the state triggered was announced so, while its conversation was open."""
    if machine is None or sid not in machine.states:
        return None
    if not all(t.during and t.spots and t.port not in spoilt for t in items):
        return None
    common = frozenset.intersection(*(t.spots for t in items))
    template = machine.states[sid].answer
    for form, at in sorted(common, key=lambda x: (x[1], x[0])):
        got = read_port(template, at, form)
        if got is not None:
            return form, at, got[1], got[0]
    return None


@dataclass(frozen=True)
class _Walks:
    """Per source: its contacts, the states they reached, and the reach times."""

    by_source: dict[str, list[Contact]]
    reaches: dict[str, list[Reach]]
    times: dict[str, list[float]]


def _infer_drawn(
    walks: _Walks, machines: Mapping[Key, Machine], options: SessionOptions, report: SessionReport
) -> list[Finding]:
    """States whose answer names a port the server drew per answer (several ports,
    each connected to right after its announcement): the place it is named, and the
    learned port whose machine serves what is drawn in its stead.

    Thresholds are per emitting machine (the ports spread over many sibling states,
    each seen once or twice): ``min_samples`` connections, ``min_sources`` sources,
    ``min_ports`` distinct ports.
    """
    told, spoilt = _told(walks, options.window)
    places: dict[Key, list[tuple[int, tuple[str, int, int, int], list[_Told]]]] = defaultdict(list)
    for (key, sid), items in sorted(told.items()):
        place = _place(machines.get(key), sid, items, spoilt)
        if place is not None:
            places[key].append((sid, place, items))
    found: list[Finding] = []
    for key, states in sorted(places.items()):
        items = [t for _, _, ts in states for t in ts]
        ports = {t.port for t in items}
        sources = {t.source for t in items}
        if (
            len(items) < options.min_samples
            or len(sources) < options.min_sources
            or len(ports) < options.min_ports
        ):
            report.rejections.append(
                Rejection(
                    key,
                    f"answers of {key[0]}/{key[1]} announced {len(items)} connections to "
                    f"{len(ports)} ports from {len(sources)} sources: too few to draw ports",
                )
            )
            continue
        max_delay = max(t.delay for t in items)
        duration = min(max(options.margin * max_delay, options.min_for), options.window)
        family = _by_first_answer(
            {t.port for t in items if ("tcp", t.port) in machines} - spoilt,
            machines,
            options.max_answer_bytes,
        )
        for sid, (form, at, length, named), ts in states:
            served = _served(named, ts, family, machines, spoilt, options.max_answer_bytes)
            if served is None:
                continue
            found.append(
                Finding(
                    key,
                    sid,
                    ("tcp", served),
                    duration,
                    "announced",
                    len(ts),
                    len({t.source for t in ts}),
                    0,
                    max(t.delay for t in ts),
                    {"at": at, "len": length, "form": form},
                )
            )
    return found


def _served(
    named: int,
    items: list[_Told],
    family: dict[bytes, list[int]],
    machines: Mapping[Key, Machine],
    spoilt: set[int],
    cut: int,
) -> int | None:
    """The learned port whose machine serves the port drawn for this state.

    Each drawn port's machine is learned from the few connections that happened
    to get that number, so it may answer what another state's connection
    carried. Preferred: the machine (among all ports of the family, indexed by
    their first answer; at most MAX_CANDIDATES tried per connection) that
    reproduces most of this state's own connections; then the port the template
    names; then the state's most used port (a port whose connections carried no
    byte has no machine).
    """
    score: dict[int, int] = defaultdict(int)
    for t in items:
        first = t.contact.answers[0] if t.contact.answers else None
        for p in family.get(first, [])[:MAX_CANDIDATES] if first is not None else []:
            score[p] += _reproduces(machines[("tcp", p)], t.contact, cut)
    best = max(score.values(), default=0)
    if best > 0:
        ties = sorted(p for p in score if score[p] == best)
        return named if named in ties else ties[0]
    if ("tcp", named) in machines and named not in spoilt:
        return named
    counts: dict[int, int] = defaultdict(int)
    for t in items:
        if ("tcp", t.port) in machines:
            counts[t.port] += 1
    if not counts:
        return None
    return min(counts, key=lambda p: (-counts[p], p))


def _by_first_answer(
    ports: Iterable[int], machines: Mapping[Key, Machine], cut: int
) -> dict[bytes, list[int]]:
    """Ports by the first bytes their machine says on connect (a connection can only be
    reproduced by a machine that starts the way it did)."""
    index: dict[bytes, list[int]] = defaultdict(list)
    for p in sorted(ports):
        machine = machines[("tcp", p)]
        index[machine.states[machine.root].answer[:cut]].append(p)
    return index


def _reproduces(machine: Machine, contact: Contact, cut: int) -> bool:
    """True when ``machine`` walks ``contact``'s requests giving the answers it got
    (compared on the ``cut`` first bytes of each, all the recorder kept)."""
    said = contact.answers
    if not said or machine.states[machine.root].answer[:cut] != said[0]:
        return False
    for i, (state, transition) in enumerate(machine.walk(contact.requests)):
        if transition is None or i + 1 >= len(said) or state.answer[:cut] != said[i + 1]:
            return False
    return True


def _merge_drawn(findings: list[Finding], drawn: list[Finding]) -> None:
    """A drawn-port place joins the per-port finding of the same state and port, if any."""
    same = {(f.key, f.state, f.target): f for f in findings}
    for d in drawn:
        f = same.get((d.key, d.state, d.target))
        if f is not None:
            f.announce = d.announce
        else:
            findings.append(d)


# --- writing into the model -------------------------------------------------


def apply(findings: Iterable[Finding], machines: Mapping[Key, Machine]) -> int:
    """Write findings as signals, merging with signals already learned; returns how many changed."""
    changed = 0
    for f in findings:
        machine = machines.get(f.key)
        if machine is None or f.state not in machine.states:
            continue
        state = machine.states[f.state]
        new = f.signal()
        old = next(
            (
                s
                for s in state.signals
                if s.get("kind") == SIGNAL_KIND and s.get("opens") == new["opens"]
            ),
            None,
        )
        if old is not None:
            new["for"] = max(float(old.get("for", 0)), new["for"])
            new["samples"] += int(old.get("samples", 0))
            new["refused"] += int(old.get("refused", 0))
            new["max_delay"] = max(float(old.get("max_delay", 0)), new["max_delay"])
            if old.get("mode") == "refused":
                new["mode"] = "refused"
            if "announce" not in new and announce_span(old) is not None:
                new["announce"] = old["announce"]
            state.signals.remove(old)
        state.signals.append(new)
        _keep_announcement(state, announce_span(new))
        state.signals.sort(key=lambda s: (str(s.get("opens")), str(s.get("kind"))))
        changed += 1
    return changed


def announce_span(signal: Any) -> tuple[int, int] | None:
    """[start, end) of the answer bytes a signal says name its port, or None."""
    place = signal.get("announce") if isinstance(signal, dict) else None
    if not isinstance(place, dict):
        return None
    at, length = place.get("at"), place.get("len")
    if not isinstance(at, int) or not isinstance(length, int) or at < 0 or length <= 0:
        return None
    return at, at + length


def _keep_announcement(state: State, span: tuple[int, int] | None) -> None:
    """Content dependencies that rewrite the bytes naming the port are dropped: they would
    announce a port nobody serves (content inference took the drawn port for a random
    value); the emulator writes the port it draws there itself."""
    if span is None:
        return
    lo, hi = span
    state.dependencies = [
        d for d in state.dependencies if not (isinstance(d, dict) and _overlaps(d, lo, hi))
    ]


def _overlaps(dep: dict[str, Any], lo: int, hi: int) -> bool:
    try:
        at = int(dep.get("at", -1))
        size = int(dep.get("len", dep.get("width", 0)))
    except (TypeError, ValueError):
        return False
    return at < hi and lo < at + size


def parse_target(text: Any) -> Key | None:
    """``"tcp/4444"`` → ("tcp", 4444); None for anything malformed (models are hostile input)."""
    if not isinstance(text, str):
        return None
    proto, sep, port = text.partition("/")
    if not sep or proto not in ("tcp", "udp") or not port.isdigit():
        return None
    number = int(port)
    return (proto, number) if 0 < number <= 65535 else None
