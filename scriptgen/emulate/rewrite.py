"""Applying content dependencies: the answer template patched from the live connection.

The learner (``scriptgen.learn.content``, format documented there) says
which template bytes copy which bytes of the current or an earlier request
(or of an earlier answer), which integers are length fields, and which bytes
are server-chosen (random, clock). Here those entries are applied to one
answer, from a bounded history of the connection's requests, their regex
matches and the answers sent. No Twisted, no alignment: plain bytes work.

Everything the history holds came from the attacker: an entry that does not
fit (request index beyond the history, a region the match lacks, a source
too short, a length value out of range) is skipped, never an exception.
"""

from __future__ import annotations

import os
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

WIDTHS = (1, 2, 4, 8)  # integer field sizes the learner writes
MAX_HISTORY = 16  # requests/answers remembered per connection (the learner looks ≤ 8 back)
_NT_EPOCH = 11644473600
# Character classes a random field keeps, narrowest first (see Rewriter.random_like).
_ALPHABETS = (
    b"0123456789",
    b"0123456789abcdef",
    b"0123456789ABCDEF",
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    bytes(range(0x21, 0x7F)),  # printable ASCII without space
)


class History:
    """The requests (with their matches) and the answers sent on one connection."""

    def __init__(self, size: int = MAX_HISTORY) -> None:
        self.requests: deque[tuple[bytes, Any]] = deque(maxlen=size)
        self.answers: deque[bytes] = deque(maxlen=size)

    def request(self, data: bytes, match: Any) -> None:
        """``match``: the regex match of the request, or a function that computes it
        (called only if a dependency reads this request: most requests need none)."""
        self.requests.append((data, match))

    def answer(self, data: bytes) -> None:
        self.answers.append(data)

    def region(self, back: int, region: int, groups: int | None = None) -> bytes | None:
        """The live bytes of a region of the request ``back`` turns ago (0: current).

        ``groups``: the number of regions of the pattern the link was learned on;
        a request that reached the state by another path (another pattern) has
        no such region and yields None.
        """
        if back < 0 or back >= len(self.requests):
            return None
        data, match = self.requests[-1 - back]
        if callable(match):
            match = match()
            self.requests[-1 - back] = (data, match)
        if not hasattr(match, "re"):  # None, or not a regex match: nothing to read
            return None
        if groups is not None and match.re.groups != groups:
            return None
        try:
            start, end = match.start(region + 1), match.end(region + 1)
        except (IndexError, ValueError):  # regex raises IndexError for a missing group
            return None
        if start < 0 or end < start:
            return None
        return data[start:end]


class Rewriter:
    """Applies dependency entries; randomness and the clock are injected for tests."""

    def __init__(
        self,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rng = rng or random.Random(os.urandom(16))
        self.clock = clock

    def apply(self, template: bytes, deps: Sequence[dict[str, Any]], history: History) -> bytes:
        """The answer to send: ``template`` with ``deps`` applied (template unchanged if none fit)."""
        if not deps:
            return template
        buf = bytearray(template)
        varcopies: list[tuple[int, int, bytes]] = []
        lengths: list[dict[str, Any]] = []
        for dep in deps:
            try:
                kind = dep.get("kind")
                if kind == "copy-region":
                    value = history.region(-int(dep["request"]), int(dep["region"]), _groups(dep))
                    at, n = int(dep["at"]), int(dep["len"])
                    if value is not None and 0 <= at and 0 <= n and at + n <= len(template):
                        varcopies.append((at, n, value))
                elif kind == "length":
                    lengths.append(dep)
                else:
                    self._fixed(buf, dep, history)
            except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
                continue  # a damaged entry: skip it, keep the rest
        out = _splice(buf, varcopies)
        for dep in lengths:
            try:
                self._length(out, dep, varcopies)
            except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
                continue
        return bytes(out)

    def _fixed(self, buf: bytearray, dep: dict[str, Any], history: History) -> None:
        """Same-length patches: copy, answer, random, clock. Sizes are checked against
        the template first: a model file is data too, and must not make us allocate."""
        kind = dep.get("kind")
        at = int(dep["at"])
        if kind == "clock":
            width = int(dep["width"])
            if width not in WIDTHS or not 0 <= at <= len(buf) - width:
                return
            value = _clock_value(self.clock(), str(dep["unit"]))
            if 0 <= value < 1 << (8 * width):
                _put(buf, at, value.to_bytes(width, _endian(dep)))
            return
        n = int(dep["len"])
        if not (0 <= at and 0 < n <= len(buf) - at):
            return
        if kind == "random":
            _put(buf, at, self.random_like(bytes(buf[at : at + n])))
        elif kind == "copy":
            _put(buf, at, _copied(dep, history, n))
        elif kind == "answer":
            back = -int(dep["answer"])
            if 1 <= back <= len(history.answers):
                sent = history.answers[-back]
                off = int(dep["offset"])
                if 0 <= off and off + n <= len(sent):
                    _put(buf, at, sent[off : off + n])

    def random_like(self, learned: bytes) -> bytes:
        """Fresh bytes of the learned value's character class.

        A server-chosen value printed as text (a port number in a reply line,
        a hex token) must stay text of the same kind: raw random bytes in a
        decimal field make the client reject the whole answer. The class is
        read from the learned bytes only; a binary value stays fully random.
        """
        for alphabet in _ALPHABETS:
            if all(b in alphabet for b in learned):
                return bytes(self.rng.choice(alphabet) for _ in learned)
        return self.rng.randbytes(len(learned))

    def _length(
        self, out: bytearray, dep: dict[str, Any], varcopies: list[tuple[int, int, bytes]]
    ) -> None:
        at = int(dep["at"])
        pos = at + sum(len(v) - n for where, n, v in varcopies if where < at)
        width = int(dep["width"])
        if width not in WIDTHS:
            return
        value = len(out) - int(dep["base"])
        if 0 <= value < 1 << (8 * width) and 0 <= pos and pos + width <= len(out):
            out[pos : pos + width] = value.to_bytes(width, _endian(dep))


def _endian(dep: dict[str, Any]) -> Literal["big", "little"]:
    if dep.get("endian") == "little":
        return "little"
    if dep.get("endian") == "big":
        return "big"
    raise ValueError("bad endianness")


def _copied(dep: dict[str, Any], history: History, n: int) -> bytes | None:
    value = history.region(-int(dep["request"]), int(dep["region"]), _groups(dep))
    if value is None:
        return None
    off = int(dep["offset"])
    start = off if dep.get("anchor", "start") == "start" else len(value) + off
    if start < 0 or start + n > len(value):
        return None
    chunk = value[start : start + n]
    return chunk[::-1] if dep.get("order") == "swap" else chunk


def _groups(dep: dict[str, Any]) -> int | None:
    return int(dep["groups"]) if "groups" in dep else None


def _put(buf: bytearray, at: int, value: bytes | None) -> None:
    if value is not None and value and 0 <= at and at + len(value) <= len(buf):
        buf[at : at + len(value)] = value


def _splice(buf: bytearray, varcopies: list[tuple[int, int, bytes]]) -> bytearray:
    """Replace each (template offset, template length) span by its live value."""
    if not varcopies:
        return buf
    out = bytearray()
    pos = 0
    for at, n, value in sorted(varcopies):
        if at < pos:
            continue  # overlapping entries: keep the first
        out += buf[pos:at]
        out += value
        pos = at + n
    out += buf[pos:]
    return out


def _clock_value(now: float, unit: str) -> int:
    if unit == "nt":
        return int((now + _NT_EPOCH) * 10_000_000)
    if unit == "ms":
        return int(now * 1000)
    return int(now)


class LiveAnswers:
    """One connection's answers: keeps its history and patches each state's template.

    The transports call :meth:`answer` once per state entered (with the
    request that led there, or none for the banner). With ``enabled`` off the
    templates go out as learned (the emulation-quality benchmark compares both).
    """

    def __init__(
        self,
        states: Mapping[int, Any],
        enabled: bool = True,
        rewriter: Rewriter | None = None,
    ) -> None:
        self.states = states  # state id -> model State (its ``dependencies``)
        self.enabled = enabled
        self.rewriter = rewriter
        self.history = History()

    def answer(
        self, state_id: int, template: bytes, request: bytes | None = None, match: Any = None
    ) -> bytes:
        if not self.enabled:
            return template
        if request is not None:
            self.history.request(request, match)
        state = self.states.get(state_id)
        deps = getattr(state, "dependencies", None)
        if deps:
            if self.rewriter is None:
                self.rewriter = Rewriter()
            try:
                template = self.rewriter.apply(template, deps, self.history)
            except Exception:  # noqa: BLE001 - a model/rewriter bug must not kill the session
                pass  # the template as learned is still a plausible answer
        self.history.answer(template)
        return template
