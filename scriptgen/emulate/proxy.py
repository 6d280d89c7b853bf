"""Proxying (ScriptGen §4.3): hand a source to a real host when the model runs out.

Per source the proxy keeps what each open connection's client saw (requests
and the emulator's answers; bounded per source and in total). On the first
unmatched request of a source it allocates a host from the pool, opens one
connection to it per open connection of that source, *replays* each
connection's requests one after another (each after the host's previous
answer is complete), and when every replayed answer looks like the answer
the emulator gave, *relays* both directions. Later connections of that
source go straight to its host. After ``expiry`` seconds without activity
the source is released, the host returns to the pool and the recording (a
pcap, see ``scriptgen.emulate.recorder``) is learned online.

Decisions (see docs/proxy.md):

* Host port: the emulator's *learned* port (``tcp/21=2121`` connects to
  port 21 of the pool host). The proxy never connects anywhere but a pool
  host; nothing a client sends names a destination.
* Answer complete (replay): at least as many bytes as the emulated answer
  arrived and the host was quiet for ``SETTLE`` seconds, or the host was
  quiet for ``replay_quiet`` seconds whatever arrived.
* Replay succeeded: the host accepted the connection and stayed connected,
  and for every replayed turn the host's answer is empty exactly when the
  emulated one was, and otherwise their normalised Indel similarity (first
  ``_COMPARE`` bytes) is at least ``replay_similarity``: loose, because
  answers legitimately carry ids, times and addresses.
* Failures close the client connection (never a hang): ``pool_exhausted``
  and ``over_limit`` fall back to the ``on_unmatched`` policy instead,
  since nothing was sent to a host yet.
* Dead hosts: a host that refused or never accepted on a port is skipped by
  allocation for that port for ``host_backoff`` seconds, doubled at each
  further failure up to ``host_backoff_max``; every host down is
  ``pool_exhausted``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz.distance import Indel
from twisted.internet import error
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Protocol
from twisted.python.failure import Failure

from scriptgen.emulate.config import ProxyConfig
from scriptgen.emulate.recorder import Flow, Recording, Spool
from scriptgen.model.shape import shape

SETTLE = 0.02  # quiet seconds after an answer at least as long as the emulated one
_COMPARE = 512  # bytes of each answer compared during the replay check
_MAX_ANSWER = 1 << 20  # replayed answer bytes buffered per turn at most

EMULATING, CONNECTING, REPLAYING, RELAYING, CLOSED = (
    "emulating",
    "connecting",
    "replaying",
    "relaying",
    "closed",
)


# Samples content inference needs to prove a link in one state on its own
# (scriptgen.learn.content.ContentOptions.min_samples).
PROOF = 3
_ECHO_VALUE = 256  # longest request value looked for in answers (``_echoed``)
_ECHO_SCAN = 1024  # bytes of each answer looked in


def doubtful(
    transition: Any, state: Any, min_samples: int, datagram: bool = False
) -> dict[str, Any] | None:
    """Why a matched transition is not to be trusted yet, or None.

    A transition learned from fewer than ``min_samples`` requests whose target
    state saw answers of more than one shape probably lumps different requests
    together (region analysis with few samples); the real host knows better,
    and its answer is a sample that can tell them apart.

    For a ``datagram`` (see ``UdpProxy.doubt`` for why) the rule is another: a
    *general* transition (a region not fixed) learned from fewer than
    ``PROOF`` requests whose state copies nothing from the request (no content
    dependency) is doubted whatever its answers: too few samples to prove a
    link (the rest of a cluster once a recurring value was split off, one or
    two requests) -- an id the client checks is then wrong for every other
    request it matches, and a matching request is never proxied otherwise.
    On TCP this rule cost more than it gave (docs/proxy.md, redis: 122
    proxied runs of 200 instead of 98, three more activities never emulated).

    On TCP a narrower one holds: a transition learned from fewer than
    ``PROOF`` requests whose state copies nothing although a recorded answer
    holds a value the client chose in a mutating region of an example
    request (``_echoed``: redis ``ECHO hello`` -> ``$5\r\nhello``) would send
    that old value to every client; the real host's answers are the samples
    that prove the copy.
    """
    if min_samples <= 0 or transition.samples >= min_samples:
        return None
    if datagram:
        if 0 < transition.samples < PROOF and _general(transition.pattern):
            return None if state.dependencies else {"samples": transition.samples, "general": True}
        return None
    if transition.samples < PROOF and not state.dependencies and _echoed(transition, state):
        return {"samples": transition.samples, "echo": True}
    if len(state.answers) < 2:
        return None
    forms = {shape(a) for a in state.answers}
    if len(forms) < 2:
        return None
    return {"samples": transition.samples, "shapes": len(forms)}


def _echoed(transition: Any, state: Any) -> bool:
    """Some answer of the state holds the value of a mutating region (3+ bytes) of
    one of the transition's example requests: an echo nothing proves yet."""
    values = set()
    for example in transition.examples[:8]:
        m = transition.pattern.fullmatch(example)
        if m is None:
            continue
        for k, region in enumerate(transition.pattern.regions):
            value = example[m.start(k + 1) : m.end(k + 1)]
            if region.fixed is None and 3 <= len(value) <= _ECHO_VALUE:
                values.add(value)
    answers = [a[:_ECHO_SCAN] for a in list(state.answers)[:16]]
    return any(v in a for v in values for a in answers)


def _general(pattern: Any) -> bool:
    """Whether a pattern matches more than one request (a region not fixed)."""
    return any(r.fixed is None for r in pattern.regions)


def similar(expected: bytes, got: bytes, threshold: float) -> float | None:
    """Similarity of a replayed answer to the emulated one; None when they differ."""
    if not expected or not got:
        return 1.0 if expected == got else None
    score = Indel.normalized_similarity(expected[:_COMPARE], got[:_COMPARE])
    return round(score, 3) if score >= threshold else None


Service = tuple[str, int]  # (protocol, learned port): what a source asks a host for


class Pool:
    """The configured hosts; one source per host at a time.

    A host that refused or did not accept in time on a port is *down* there for
    a back-off period: not allocated for that port meanwhile. Why: each try
    costs a doubted request ``connect_timeout`` seconds before the emulator
    answers it (a blackholed host: 5 s every time), and an unmatched one a
    closed connection. Why per port: a refusal (or a firewall's drop) on one
    port says that port is closed on the host, not that the host is gone; a
    client reaching a served port the host does not serve (a scanner, or an
    attacker on purpose) must not stop proxying for every other port.
    """

    def __init__(
        self, hosts: tuple[str, ...], backoff: float = 0.0, backoff_max: float = 0.0
    ) -> None:
        self.hosts = hosts
        self.free = list(hosts)
        self.backoff = backoff  # seconds down after a first failure (0: never down)
        self.backoff_max = max(backoff, backoff_max)
        # (host, service) -> (down until, failures in a row); bounded: hosts x served ports
        self.down: dict[tuple[str, Service], tuple[float, int]] = {}

    def allocate(self, now: float, service: Service) -> str | None:
        """The first free host that is not down for ``service`` (None: none)."""
        for host in self.free:
            if self.down.get((host, service), (0.0, 0))[0] <= now:
                self.free.remove(host)
                return host
        return None

    def down_now(self, now: float, service: Service) -> list[str]:
        """The hosts down for ``service`` now."""
        return [h for (h, s), (until, _) in self.down.items() if s == service and until > now]

    def failed(self, host: str, service: Service, now: float) -> tuple[float, int] | None:
        """The host is unusable for ``service``: (seconds it is now down for, failures in
        a row), or None when back-off is off or it is down already (another try)."""
        if self.backoff <= 0 or host not in self.hosts:
            return None
        until, failures = self.down.get((host, service), (0.0, 0))
        if until > now:
            return None
        failures += 1
        seconds = min(self.backoff * 2.0 ** min(failures - 1, 40), self.backoff_max)
        self.down[(host, service)] = (now + seconds, failures)
        return seconds, failures

    def working(self, host: str, service: Service) -> int:
        """The host accepted a connection for ``service``: failures in a row before it."""
        return self.down.pop((host, service), (0.0, 0))[1]

    def release(self, host: str) -> None:
        if host in self.hosts and host not in self.free:
            self.free.append(host)


@dataclass(eq=False)
class Source:
    ip: str
    taps: set[Tap] = field(default_factory=set)
    host: str | None = None
    recording: Recording | None = None
    where: Any = None  # the Endpoint of its latest connection (for events)
    last: float = 0.0
    buffered: int = 0
    relayed: int = 0  # connections handed to the host
    timer: Any = None


class Upstream(Protocol):
    """The proxy's connection to the pool host for one client connection."""

    def __init__(self, tap: Tap) -> None:
        self.tap = tap

    def connectionMade(self) -> None:  # noqa: N802
        self.tap.connected(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.tap.from_host(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # noqa: N802
        self.tap.host_lost(reason)


class UpstreamFactory(ClientFactory):
    noisy = False

    def __init__(self, tap: Tap) -> None:
        self.tap = tap

    def buildProtocol(self, addr: Any) -> Upstream:  # noqa: N802
        return Upstream(self.tap)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:  # noqa: N802
        self.tap.connect_failed(reason)


class Tap:
    """One client connection as the proxy sees it: transcript, then replay, then relay.

    ``proto`` is the emulator's protocol; the proxy uses its ``where``,
    ``transport``, ``machine``, ``hand_over()`` and ``_close()``.
    """

    def __init__(self, proxy: Proxy, source: Source, proto: Any) -> None:
        self.proxy = proxy
        self.source = source
        self.proto = proto
        self.mode = EMULATING
        self.turns: list[tuple[bytes, bytes]] = []  # (request, emulated answer); b"": the banner
        self.size = 0
        self.overflow = False
        self.pending: list[bytes] = []  # client bytes for the host once replay is done
        self.eof = False  # the client half-closed before relaying began
        self.counted = False  # counts towards the relayed-connection bounds
        self.gone = False  # lost() ran
        self.upstream: Upstream | None = None
        self.flow: Flow | None = None
        self.step = 0
        self.got = b""
        self.scores: list[float] = []
        self.differs: list[int] = []  # replayed turns whose answers differed (relayed anyway)
        self.doubted: Any = None  # the matched step handed over in doubt (until relaying)
        self.pulled = False  # taken to the host with another connection's doubted request
        self._quiet: Any = None
        self._deadline: Any = None

    @property
    def proxied(self) -> bool:
        return self.mode != EMULATING

    # --- called by the emulator protocol ---

    def emulated(self, request: bytes, answer: bytes) -> None:
        """A turn the emulator answered (request b"" with the banner)."""
        if self.mode != EMULATING or self.overflow:
            return
        n = len(request) + len(answer)
        if not self.proxy.reserve(self.source, n):
            self.overflow = True
            self._forget()
            return
        self.size += n
        self.turns.append((request, answer))

    def doubt(self, step: Any) -> bool:
        """A matched request whose transition is too uncertain to answer from:
        True when the pool host takes it (as if it were unmatched)."""
        why = self.why_doubt(step)
        if why is None:
            return False
        self.doubted = step
        if self.proxy.take_over(self, step.request, doubt=why):
            return True
        self.doubted = None
        return False

    def why_doubt(self, step: Any, datagram: bool = False) -> dict[str, Any] | None:
        """``doubtful`` for a matched step of this connection (None: trusted)."""
        if self.mode != EMULATING or self.overflow:
            return None
        state = self.proto.machine.machine.states.get(step.target.id)
        why = None if state is None else doubtful(
            step.rule.transition, state, self.proxy.config.doubt_samples, datagram
        )  # fmt: skip
        if why is not None:
            why.update(state=step.state.id, target=step.target.id)
        return why

    def _fall_back(self, reason: str, **details: Any) -> None:
        """The host did not take a doubted request (refused, no answer to the connect):
        the emulator answers it after all, as it would without a proxy; connections
        this doubt took along are emulated again too, not closed."""
        step, self.doubted = self.doubted, None
        others = [
            t for t in self.source.taps if t is not self and t.pulled and t.mode == CONNECTING
        ]
        self.pending = self.pending[1:]  # the doubted request is the first
        rests = [(tap, tap._back_to_emulator()) for tap in [self, *others]]
        self.proxy.failed(self, reason, fallback="emulated", **details)
        for tap, rest in rests:
            tap.proto.resume(step if tap is self else None, rest)
            if tap.eof and tap.mode == EMULATING and not tap.proto.closing:
                tap.proto.readConnectionLost()  # the client half-closed meanwhile

    def _back_to_emulator(self) -> bytes:
        """Connecting no more (a connect still under way is dropped when it ends);
        returns what the client sent for the host, for the emulator to read."""
        self._cancel_timers()
        self.mode = EMULATING
        self.pulled = False
        self.proxy.uncount(self)
        rest, self.pending = b"".join(self.pending), []
        return rest

    def from_client(self, data: bytes) -> None:
        self.source.last = self.proxy.clock.seconds()
        if self.mode == RELAYING and self.upstream is not None:
            self.upstream.transport.write(data)
            self._record(False, data)
        elif self.mode in (CONNECTING, REPLAYING):
            self.pending.append(data)  # forwarded once the replay is done
            if sum(map(len, self.pending)) > self.proxy.config.source_buffer_bytes:
                self._fail("buffer_overflow")

    def client_eof(self) -> None:
        """The client half-closed: pass it on (the host then closes in turn)."""
        self.eof = True
        if self.mode == RELAYING and self.upstream is not None:
            self.upstream.transport.loseWriteConnection()

    def lost(self) -> None:
        """The client connection is gone (any mode); only the first call counts."""
        if self.gone:
            return
        self.gone = True
        previous, self.mode = self.mode, CLOSED
        self._cancel_timers()
        self._forget()
        if previous in (CONNECTING, REPLAYING):
            self.proxy.failed(self, "client_left")
        if self.flow is not None:
            self.flow.close(self.proxy.now())
        if self.upstream is not None:
            self.upstream.transport.loseConnection()
        self.proxy.detach(self, previous)

    def pause_host(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.pauseProducing()

    def resume_host(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.resumeProducing()

    # --- replay ---

    def start(self, host: str) -> None:
        """Switch this connection to the host: pause the client, connect."""
        left = self.proto.hand_over()  # bytes the emulator had not judged yet
        if left:  # after the request that was handed over (a doubted one leaves the rest)
            self.pending.append(left)
        self.mode = CONNECTING  # the client is still read: a client that leaves is noticed
        cfg = self.proxy.config
        port = self.proto.machine.key[1]
        self.proxy.connect(host, port, UpstreamFactory(self), cfg.connect_timeout)
        self._deadline = self.proxy.clock.callLater(cfg.replay_timeout, self._timed_out)

    def connected(self, upstream: Upstream) -> None:
        self.proxy.host_working(self)
        if self.mode != CONNECTING:
            upstream.transport.abortConnection()  # the client left meanwhile
            return
        self.upstream = upstream
        self.mode = REPLAYING
        self.step = 0
        if not self.turns:
            self._replayed()
            return
        self._send_step()

    def _send_step(self) -> None:
        request = self.turns[self.step][0]
        self.got = b""
        if request and self.upstream is not None:
            self.upstream.transport.write(request)
        self._arm_quiet()

    def _arm_quiet(self) -> None:
        if self._quiet is not None and self._quiet.active():
            self._quiet.cancel()
        expected = self.turns[self.step][1]
        delay = SETTLE if self.got and len(self.got) >= len(expected) else None
        if not expected and not self.got:
            delay = SETTLE
        self._quiet = self.proxy.clock.callLater(
            delay if delay is not None else self.proxy.config.replay_quiet, self._answer_complete
        )

    def from_host(self, data: bytes) -> None:
        self.source.last = self.proto.last_data = self.proxy.clock.seconds()
        if self.mode == RELAYING:
            self.proto.transport.write(data)
            self._record(True, data)
        elif self.mode == REPLAYING:
            self.got += data
            if len(self.got) > _MAX_ANSWER:
                self._fail("answers_differ", turn=self.step)
                return
            self._arm_quiet()

    def _answer_complete(self) -> None:
        self._quiet = None
        if self.mode != REPLAYING:
            return
        expected = self.turns[self.step][1]
        score = similar(expected, self.got, self.proxy.config.replay_similarity)
        if score is None and self.proxy.config.replay_mismatch == "relay":
            self.differs.append(self.step)  # noted in the replayed event; the relay goes on
            score = 0.0
        if score is None:
            self._fail(
                "answers_differ",
                turn=self.step,
                emulated_answer=expected,
                host_answer=self.got,
            )
            return
        self.scores.append(score)
        self.step += 1
        if self.step < len(self.turns):
            self._send_step()
        else:
            self._replayed()

    def _replayed(self) -> None:
        """Every turn replayed: record the dialog as the client saw it, then relay."""
        self._cancel_timers()
        self.doubted = None
        self.mode = RELAYING
        self.flow = self.proxy.new_flow(self)
        for request, answer in self.turns:
            self._record(False, request)
            self._record(True, answer)
        self.proxy.relaying(self)
        upstream = self.upstream
        assert upstream is not None
        upstream.transport.registerProducer(self.proto.transport, True)
        pending, self.pending = self.pending, []
        for data in pending:
            if data:
                upstream.transport.write(data)
                self._record(False, data)
        self.turns, self.size = [], 0
        self._forget()
        if self.eof:
            upstream.transport.loseWriteConnection()

    def _timed_out(self) -> None:
        self._deadline = None
        if self.mode == CONNECTING and self.doubted is not None:
            self._fall_back("host_timeout")
        elif self.mode == CONNECTING:
            self._fail("host_timeout")
        elif self.mode == REPLAYING:
            self._fail("replay_timeout", turn=self.step)

    def connect_failed(self, reason: Failure) -> None:
        if self.mode != CONNECTING:
            return
        timed_out = reason.check(TimeoutError, error.TimeoutError) is not None
        if self.doubted is not None:
            why = "host_timeout" if timed_out else "host_refused"
            self._fall_back(why, error=reason.getErrorMessage())
            return
        self._fail("host_timeout" if timed_out else "host_refused", error=reason.getErrorMessage())

    def host_lost(self, reason: Failure | None) -> None:
        if self.mode == REPLAYING:
            self._fail("host_closed", turn=self.step)
        elif self.mode == RELAYING:
            if self.flow is not None:  # who closed first matters to the learner (End.CLOSE)
                self.flow.close(self.proxy.now(), by_server=not self.eof)
            if not self.eof:
                self.proxy.emit("scriptgen.proxy.host_closed", self.proto.where)
            self.proto._close("host_closed" if not self.eof else "client_closed")

    def _fail(self, reason: str, **details: Any) -> None:
        """A defined failure: report it, drop the host connection, close the client."""
        if self.mode == CLOSED:
            return
        self.mode = CLOSED
        self._cancel_timers()
        self.proxy.failed(self, reason, **details)
        if self.upstream is not None:
            self.upstream.transport.abortConnection()
        self.proto._close("proxy_" + reason)

    # --- helpers ---

    def _record(self, from_server: bool, data: bytes) -> None:
        if self.flow is not None and data and self.proxy.room(self.source, len(data)):
            self.flow.data(from_server, data, self.proxy.now())

    def _forget(self) -> None:
        self.proxy.unreserve(self.source, self.size)
        self.size = 0
        if self.mode == CLOSED or self.overflow:
            self.turns = []

    def _cancel_timers(self) -> None:
        for name in ("_quiet", "_deadline"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)


class Proxy:
    """Sources, pool, bounds, expiry; hands recordings to the online learner."""

    def __init__(
        self,
        config: ProxyConfig,
        emit: Callable[..., None],
        clock: Any,
        connect: Callable[[str, int, ClientFactory, float], Any],
        spool: Spool,
        submit: Callable[[list[Any]], None],
        limit_hit: Callable[..., None] = lambda *a, **k: None,
        listen_udp: Callable[[DatagramProtocol], Any] | None = None,
    ) -> None:
        self.config = config
        self.emit = emit
        self.clock = clock
        self.connect = connect
        self.spool = spool
        self.submit = submit
        self.limit_hit = limit_hit
        self.listen_udp = listen_udp  # an ephemeral UDP socket for a relayed flow
        self.udp = UdpProxy(self)
        self.pool = Pool(config.pool, config.host_backoff, config.host_backoff_max)
        # learned/ bounds: the proxy is what the [proxy] section configures the spool through
        spool.retain(config.keep_learned_bytes, config.keep_learned_files)
        self.sources: dict[str, Source] = {}
        self.buffered = 0
        self.relayed = 0

    def now(self) -> float:
        import time

        return time.time()  # wall time for pcap stamps (the clock may be a fake)

    # --- connections ---

    def attach(self, proto: Any) -> Tap:
        """A new client connection; goes straight to the host when its source has one."""
        source = self._seen(proto.where)
        tap = Tap(self, source, proto)
        source.taps.add(tap)
        if source.host is not None:
            if not self._admit(tap):
                tap.mode = CLOSED
                proto._close("proxy_over_limit", abort=True)
                return tap
            tap.start(source.host)
        elif _never_trained(proto.machine):
            self.take_over(tap, None)
        return tap

    def attach_udp(self, client: Any) -> UdpTap:
        """A UDP flow the emulator started answering (no direct path here: see UdpProxy)."""
        source = self._seen(client.where)
        tap = UdpTap(self, source, client)
        source.taps.add(tap)
        return tap

    def _seen(self, where: Any) -> Source:
        """The source of ``where`` (created at its first flow, TCP or UDP), marked active now."""
        source = self.sources.get(where.src_ip)
        if source is None:
            source = self.sources[where.src_ip] = Source(where.src_ip)
        source.where = where
        source.last = self.clock.seconds()
        return source

    def detach(self, tap: Tap, mode: str) -> None:
        source = tap.source
        source.taps.discard(tap)
        self.uncount(tap)
        if source.host is None and not source.taps:
            self.sources.pop(source.ip, None)

    def take_over(self, tap: Tap, request: bytes | None, doubt: dict | None = None) -> bool:
        """An unmatched request (None: the model knows nothing yet), or a matched one
        whose transition is in ``doubt``: proxy the source.

        False: nothing was started and the emulator's own policy applies.
        """
        source = tap.source
        if tap.overflow:
            self.emit("scriptgen.proxy.failed", tap.proto.where, reason="buffer_overflow")
            return False
        if source.host is None:
            service = tap.proto.machine.key
            host = self.pool.allocate(self.clock.seconds(), service)
            if host is None:
                down = len(self.pool.down_now(self.clock.seconds(), service))
                self.emit(
                    "scriptgen.proxy.failed",
                    tap.proto.where,
                    reason="pool_exhausted",
                    **({"hosts_down": down} if down else {}),
                )
                return False
            source.host = host
            source.recording = self.spool.new(source.ip, host)
            self.emit(
                "scriptgen.proxy.allocated",
                tap.proto.where,
                host=host,
                request=request or b"",
                connections=len(source.taps),
                recording=source.recording.path.name,
                **({"doubt": doubt} if doubt else {}),
            )
            self._arm_expiry(source)
        if not self._admit(tap):
            return False
        if request:
            tap.pending.append(request)
        tap.start(source.host)
        others = [t for t in source.taps if t is not tap and t.mode == EMULATING]
        for other in others:
            if other.overflow or not self._admit(other):
                other.mode = CLOSED
                other.proto._close("proxy_unreplayable")
                continue
            other.pulled = doubt is not None and not isinstance(other, UdpTap)  # TCP resumes
            other.start(source.host)
        return True

    def _admit(self, tap: Tap) -> bool:
        cfg = self.config
        if self.relayed >= cfg.max_relayed or tap.source.relayed >= cfg.max_relayed_per_source:
            which = "max_relayed" if self.relayed >= cfg.max_relayed else "max_relayed_per_source"
            self.limit_hit(which, tap.proto.where)
            self.emit("scriptgen.proxy.failed", tap.proto.where, reason="over_limit", limit=which)
            return False
        self.relayed += 1
        tap.source.relayed += 1
        tap.counted = True
        return True

    def uncount(self, tap: Tap) -> None:
        """The connection no longer counts towards the relayed-connection bounds."""
        if tap.counted:
            tap.counted = False
            self.relayed -= 1
            tap.source.relayed -= 1

    def relaying(self, tap: Tap) -> None:
        if tap.turns:  # a connection that went straight to the host replayed nothing
            self.emit(
                "scriptgen.proxy.replayed",
                tap.proto.where,
                host=tap.source.host,
                turns=len(tap.turns),
                similarity=tap.scores,
                differs=tap.differs,
            )
        self.emit("scriptgen.proxy.relaying", tap.proto.where, host=tap.source.host)

    def failed(self, tap: Tap, reason: str, **details: Any) -> None:
        self.emit(
            "scriptgen.proxy.failed",
            tap.proto.where,
            reason=reason,
            host=tap.source.host,
            **details,
        )
        source = tap.source
        if reason in ("host_refused", "host_timeout") and source.host is not None:
            busy = [t for t in source.taps if t is not tap and t.mode in (REPLAYING, RELAYING)]
            if not busy:  # the host is unusable: the emulator serves this source again
                self._host_down(tap, source.host, reason)
                self.release(source, reason)

    def _host_down(self, tap: Tap, host: str, reason: str) -> None:
        """Skip a host that refused or never accepted on this port for its back-off."""
        proto, port = tap.proto.machine.key
        down = self.pool.failed(host, (proto, port), self.clock.seconds())
        if down is not None:
            seconds, failures = down
            self.emit("scriptgen.proxy.host_down", tap.proto.where, host=host, port=port,
                      reason=reason, failures=failures, seconds=seconds)  # fmt: skip

    def host_working(self, tap: Tap) -> None:
        """The source's host accepted a connection: it is not down on that port any more."""
        host = tap.source.host
        proto, port = tap.proto.machine.key
        if host is not None and self.pool.working(host, (proto, port)):
            self.emit("scriptgen.proxy.host_up", tap.proto.where, host=host, port=port)

    def new_flow(self, tap: Tap) -> Flow | None:
        rec = tap.source.recording
        if rec is None:
            return None
        where = tap.proto.where
        ends = (where.src_ip, where.src_port), (where.dst_ip, tap.proto.machine.key[1])
        return rec.udp_flow(*ends) if isinstance(tap, UdpTap) else rec.flow(*ends)

    # --- bounds ---

    def reserve(self, source: Source, n: int) -> bool:
        cfg = self.config
        if source.buffered + n > cfg.source_buffer_bytes or self.buffered + n > cfg.buffer_bytes:
            return False
        source.buffered += n
        self.buffered += n
        return True

    def unreserve(self, source: Source, n: int) -> None:
        source.buffered -= n
        self.buffered -= n

    def room(self, source: Source, n: int) -> bool:
        rec = source.recording
        return rec is not None and rec.room(n + 200)

    # --- expiry ---

    def _arm_expiry(self, source: Source, delay: float | None = None) -> None:
        source.timer = self.clock.callLater(
            self.config.expiry if delay is None else delay, self._check_expiry, source
        )

    def _check_expiry(self, source: Source) -> None:
        source.timer = None
        quiet = self.clock.seconds() - source.last
        if quiet < self.config.expiry:
            self._arm_expiry(source, self.config.expiry - quiet)
            return
        self.release(source, "expired")

    def release(self, source: Source, reason: str, learn: bool = True) -> None:
        """Close the source's relayed connections, free its host, learn its recording."""
        if source.timer is not None and source.timer.active():
            source.timer.cancel()
        source.timer = None
        for tap in list(source.taps):
            if tap.flow is not None:  # ends in the recording now, before it is closed
                tap.flow.close(self.now())
                tap.flow = None
            if tap.proxied and tap.mode != CLOSED:
                tap.proto._close("proxy_released")
        host, source.host = source.host, None
        if host is not None:
            self.pool.release(host)
        rec, source.recording = source.recording, None
        if not source.taps:
            self.sources.pop(source.ip, None)
        where = source.where
        if rec is None:
            self.emit("scriptgen.proxy.released", where, host=host, reason=reason, flows=0,
                      truncated=False, incomplete=False, dropped_bytes=0,
                      recording=None)  # fmt: skip
            return
        # The writer thread fsyncs and renames; only then is the file pending and learnable.
        d = rec.finish()
        d.addBoth(self._pending, rec, where, host, reason, learn)

    def _pending(
        self, result: Any, rec: Recording, where: Any, host: str | None, reason: str, learn: bool
    ) -> None:
        """The recording's data is on disk and renamed (or the disk failed): report, learn."""
        path = None
        if isinstance(result, Failure):
            self.emit("scriptgen.proxy.learn_failed", where, error=result.getErrorMessage())
        elif rec.flows:
            path = result
        else:  # the host never connected: nothing to learn, no file per attempt
            self.spool.discard(result)
        self.emit(
            "scriptgen.proxy.released",
            where,
            host=host,
            reason=reason,
            flows=rec.flows,
            truncated=rec.truncated,
            incomplete=rec.incomplete or rec.error is not None,
            dropped_bytes=rec.dropped,
            recording=path.name if path else None,
        )
        if path is not None and rec.flows and learn:
            self.submit([path])

    def stop(self) -> None:
        """Service stop: close recordings so they are pending (learned at next start)."""
        for source in list(self.sources.values()):
            if source.host is not None:
                self.release(source, "stopped", learn=False)


def _never_trained(machine: Any) -> bool:
    """A machine that saw no conversation at all (served empty with the proxy on)."""
    root = machine.machine.states[machine.machine.root]
    return root.samples == 0 and not root.transitions and not root.answer


# --- UDP: the same replay and relay, datagram by datagram ---


class _UdpClientTransport:
    """The client side of a relayed UDP flow, shaped like what Tap uses of TCP."""

    def __init__(self, udp: Any, addr: tuple[str, int], side: _UdpClient) -> None:
        self.udp, self.addr, self.side = udp, addr, side

    def write(self, data: bytes) -> None:
        if self.udp.transport is not None and self.udp.may_send(data, self.addr):
            self.udp.transport.write(data, self.addr)

    def pauseProducing(self) -> None: ...  # noqa: N802 -- datagrams: no flow control

    def resumeProducing(self) -> None: ...  # noqa: N802

    def loseConnection(self) -> None:  # noqa: N802
        self.side._close("relay_ended")

    abortConnection = loseConnection  # noqa: N815


class _NoBuffer:
    buffer = b""


class _UdpClient:
    """Stands in for the emulator protocol of one UDP source (address, port)."""

    def __init__(self, udp: Any, addr: tuple[str, int], where: Any, machine: Any) -> None:
        self.udp, self.addr, self.where, self.machine = udp, addr, where, machine
        self.transport = _UdpClientTransport(udp, addr, self)
        self.dialog = _NoBuffer()
        self.last_data = 0.0
        self.tap: UdpTap | None = None

    def hand_over(self) -> bytes:
        return b""

    def _close(self, reason: str, abort: bool = False) -> None:
        self.udp.relays.pop(self.addr, None)
        if self.tap is not None:
            self.tap.lost()


class _UdpUpstreamTransport:
    def __init__(self, port: Any, proto: UdpUpstream) -> None:
        self.port, self.proto = port, proto

    def write(self, data: bytes) -> None:
        try:
            self.proto.transport.write(data)
        except OSError:
            pass  # ICMP refusals surface as errors on a connected socket; the replay times out

    def loseConnection(self) -> None:  # noqa: N802
        if self.port is not None:
            port, self.port = self.port, None
            port.stopListening()

    abortConnection = loseConnection  # noqa: N815

    def loseWriteConnection(self) -> None: ...  # noqa: N802

    def registerProducer(self, *args: Any) -> None: ...  # noqa: N802

    def pauseProducing(self) -> None: ...  # noqa: N802

    def resumeProducing(self) -> None: ...  # noqa: N802


class UdpUpstream(DatagramProtocol):
    """A connected UDP socket to the pool host for one relayed flow."""

    noisy = False

    def __init__(self, tap: UdpTap) -> None:
        self.tap = tap

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
        self.tap.from_host(data)

    def connectionRefused(self) -> None:  # noqa: N802
        pass  # the host's port is closed: the replay's quiet timer decides


class UdpTap(Tap):
    """A UDP flow: connect = a connected socket to the host (no handshake)."""

    def start(self, host: str) -> None:
        self.mode = CONNECTING
        cfg = self.proxy.config
        self._deadline = self.proxy.clock.callLater(cfg.replay_timeout, self._timed_out)
        upstream = UdpUpstream(self)
        try:
            port = self.proxy.listen_udp(upstream)
            upstream.transport.connect(host, self.proto.machine.key[1])
        except Exception as e:  # noqa: BLE001 -- a socket error is a refused host
            self._fail("host_refused", error=str(e))
            return
        self.upstream = Upstream(self)  # the shape Tap drives
        self.upstream.transport = _UdpUpstreamTransport(port, upstream)
        self.mode = CONNECTING
        self.connected(self.upstream)


class UdpProxy:
    """The UDP side of one served port: which client addresses are relayed."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def emulated(self, udp: Any, addr: tuple[str, int], where: Any, machine: Any,
                 request: bytes, answer: bytes) -> None:  # fmt: skip
        self._client(udp, addr, where, machine).tap.emulated(request, answer)  # type: ignore[union-attr]

    def _client(self, udp: Any, addr: tuple[str, int], where: Any, machine: Any) -> _UdpClient:
        clients = udp.__dict__.setdefault("proxy_clients", {})
        client = clients.get(addr)
        if client is None or client.tap is None or client.tap.mode == CLOSED:
            client = clients[addr] = _UdpClient(udp, addr, where, machine)
            client.tap = self.proxy.attach_udp(client)
        return client

    def forget(self, udp: Any, addr: tuple[str, int]) -> None:
        """The emulator ended this UDP session (idle, closed): drop its transcript."""
        client = udp.__dict__.get("proxy_clients", {}).pop(addr, None)
        if client is not None and client.tap is not None and client.tap.mode == EMULATING:
            client.tap.lost()

    def unmatched(self, udp: Any, addr: tuple[str, int], where: Any, machine: Any,
                  request: bytes) -> bool:  # fmt: skip
        client = self._client(udp, addr, where, machine)
        assert client.tap is not None
        if client.tap.proxied:
            return True
        if self.proxy.take_over(client.tap, request):
            udp.relays[addr] = client.tap
            return True
        return False

    def doubt(self, udp: Any, addr: tuple[str, int], where: Any, machine: Any,
              step: Any) -> bool:  # fmt: skip
        """A matched datagram whose general transition was learned from too few
        requests to copy anything (``doubtful``): True when the pool host takes
        it, as an unmatched one. Answer shapes are not checked: a connected UDP
        socket has no refused connect to fall back on (a host that never answers
        leaves the client unanswered), and random bytes of binary answers (ids,
        cookies) that happen to be printable make shapes differ by chance."""
        client = self._client(udp, addr, where, machine)
        assert client.tap is not None
        why = client.tap.why_doubt(step, datagram=True)
        if why is None or not self.proxy.take_over(client.tap, step.request, doubt=why):
            return False
        udp.relays[addr] = client.tap
        return True

    def direct(self, udp: Any, addr: tuple[str, int], where: Any, machine: Any,
               data: bytes) -> bool:  # fmt: skip
        """A datagram of a source that has a host: straight to it."""
        source = self.proxy.sources.get(addr[0])
        if source is None or source.host is None:
            return False
        client = self._client(udp, addr, where, machine)
        assert client.tap is not None
        if not client.tap.proxied:
            if not self.proxy.take_over(client.tap, data):
                return False
            udp.relays[addr] = client.tap
            return True
        client.tap.from_client(data)
        return True
