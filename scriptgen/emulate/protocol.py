"""TCP: one factory per served port, one protocol instance per connection.

The protocol owns the transport side only -- timers, writes, closing,
limits and events; the dialog logic is in ``scriptgen.emulate.dialog``.

Why a push producer: a client that sends requests but never reads our
answers would otherwise grow Twisted's write buffer without bound; when the
transport asks us to pause, we stop reading from that client until its
side drains.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from scriptgen.emulate.config import PortSpec
from scriptgen.emulate.dialog import Dialog, Matched, Overflow, Step, Unmatched, Waiting
from scriptgen.emulate.eventlog import Endpoint
from scriptgen.emulate.matching import CompiledMachine, StateIndex
from scriptgen.emulate.rewrite import LiveAnswers
from scriptgen.emulate.runtime import Runtime, new_session_id
from scriptgen.model import End


@implementer(IPushProducer, IHalfCloseableProtocol)
class EmulatorProtocol(Protocol):
    """Walks one connection through the machine it was given at connect time."""

    def __init__(self, runtime: Runtime, machine: CompiledMachine) -> None:
        self.runtime = runtime
        self.machine = machine  # kept for the whole connection, even across reloads
        lim = runtime.config.limits
        cfg = runtime.config
        self.dialog = Dialog(machine, lim.max_buffer_bytes, cfg.backoff, cfg.backoff_alike)
        self.answers = LiveAnswers(machine.machine.states, runtime.config.content_dependencies)
        self.where: Endpoint | None = None
        self.refused = False
        self.closing = False
        self.close_reason: str | None = None
        self.lost = False  # after an unmatched request under on_unmatched = silent
        self.ignored = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = 0.0
        self.last_data = 0.0
        self._timers: dict[str, Any] = {}
        self.gate: Any = None  # scriptgen.emulate.gate.Gate, set by the factory
        self._held: Any = None  # Deferred: an answer waits until the gate opened a port
        self._after_hold: list[Step] = []
        self._unrun: list[Step] = []  # steps read after the one being run (pipelined)
        self.proxy: Any = None  # scriptgen.emulate.proxy.Proxy, set by the factory
        self.tap: Any = None  # this connection as the proxy sees it (proxy on)

    # --- connection life ---

    def connectionMade(self) -> None:  # noqa: N802
        rt = self.runtime
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.where = Endpoint("tcp", peer.host, peer.port, host.host, host.port, new_session_id())
        if self.gate is not None and not self.gate.admit(self.machine.key, self.where):
            self.refused = self.closing = True  # closed for this source: reset at once
            self.transport.abortConnection()
            return
        broken = self._admit(peer.host)
        if broken is not None:
            self.refused = self.closing = True
            rt.limit_hit(broken, self.where)
            self.transport.abortConnection()
            return
        self.started = self.last_data = rt.clock.seconds()
        rt.activity.touch(self, self.started)
        self.transport.registerProducer(self, True)
        rt.events.emit("scriptgen.session.connect", self.where, state=self.dialog.state.id)
        lim = rt.config.limits
        self._start("idle", lim.idle_timeout, self._idle_check)
        self._start("session", lim.session_timeout, self._close, "session_timeout")
        if self.proxy is not None:
            self.tap = self.proxy.attach(self)  # may go straight to the source's pool host
            if self.tap.proxied or self.closing:
                return
        self._greet()

    def _admit(self, source: str) -> str | None:
        """Take a connection slot; at max_connections the quietest connection
        (of another source too) is evicted for this one, so idle connections
        from many sources cannot lock everyone out. Returns the limit broken."""
        rt = self.runtime
        broken = rt.limiter.acquire(source)
        if broken != "max_connections" or rt.limiter.count(source) >= rt.limiter.per_source:
            return broken
        victim = rt.evict_quietest()
        if victim is None:
            return broken
        rt.limit_hit(broken, self.where, action="evicted_quietest")
        return rt.limiter.acquire(source, over_total=True)

    def evictable(self) -> bool:
        """Relayed connections are the proxy's to end; closing ones are going anyway."""
        return not self.closing and not (self.tap is not None and self.tap.proxied)

    def evict(self) -> None:
        self._close("evicted", abort=True)

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # noqa: N802
        if self.refused or self.where is None:
            return
        self.closing = True  # gone: nothing may write or arm timers now
        for name in list(self._timers):
            self._cancel(name)
        rt = self.runtime
        rt.activity.forget(self)
        rt.limiter.release(self.where.src_ip)
        if self.tap is not None:
            self.tap.lost()
        if self.close_reason is None:
            done = isinstance(reason, Failure) and reason.check(ConnectionDone)
            self.close_reason = "client_closed" if done else "connection_lost"
        rt.events.emit(
            "scriptgen.session.closed",
            self.where,
            reason=self.close_reason,
            duration=round(rt.clock.seconds() - self.started, 6),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            requests=self.dialog.requests,
            ignored_bytes=self.ignored,
            state=self.dialog.state.id,
        )

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.closing:
            return
        self.bytes_in += len(data)
        self.last_data = self.runtime.clock.seconds()
        self.runtime.activity.touch(self, self.last_data)
        if self.tap is not None and self.tap.proxied:
            self.tap.from_client(data)
            return
        if self.lost:
            self._ignore(data)
            return
        if self._held is not None:
            self._after_hold.extend(self.dialog.feed(data))
            return
        self._run(self.dialog.feed(data))

    # --- half-close: ``printf 'PING\r\n' | nc`` sends, then shuts its side ---

    def readConnectionLost(self) -> None:  # noqa: N802
        """The client will send nothing more: answer what it sent, then close.

        Without this Twisted would close at once and a request that came
        with the client's FIN would never be answered.
        """
        if self.closing:
            return
        if self.tap is not None and self.tap.proxied:
            self.tap.client_eof()
            return
        if self._held is not None:  # first the held answer, then this
            self._held.addBoth(lambda r: (self.readConnectionLost(), r)[1])
            return
        if not self.lost:
            self._run(self.dialog.expire("incomplete"))
        if self.tap is not None and self.tap.proxied:
            self.tap.client_eof()  # the request it sent last went to a pool host
        elif not self.closing:
            self._close("client_closed")

    def writeConnectionLost(self) -> None:  # noqa: N802
        self._close("connection_lost")

    # --- push producer: the transport's write buffer is full / drained ---

    def pauseProducing(self) -> None:  # noqa: N802
        if self.tap is not None and self.tap.proxied:
            self.tap.pause_host()  # relaying: the host's bytes wait, not the client's
            return
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        if self.tap is not None and self.tap.proxied:
            self.tap.resume_host()
        elif not self.closing:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        pass

    # --- steps ---

    def _run(self, steps: list[Step]) -> None:
        for i, step in enumerate(steps):
            if self.closing or (self.tap is not None and self.tap.proxied):
                return
            if self._held is not None:  # the rest waits for the held answer
                self._after_hold.extend(steps[i:])
                return
            if isinstance(step, Matched):
                self._unrun = steps[i + 1 :]  # a doubted step hands these over too
                self._matched(step)
                self._unrun = []
            elif isinstance(step, Unmatched):
                self._unmatched(step)
            elif isinstance(step, Overflow):
                self.runtime.limit_hit("max_buffer_bytes", self.where, buffered=step.size)
                self._close("max_buffer_bytes")
        if not self.closing:
            self._arm_request_timers()

    def _matched(self, step: Matched, doubt: bool = True) -> None:
        if doubt and self.tap is not None and self.tap.doubt(step):
            return  # a transition too uncertain to trust: the source's pool host answers
        target = step.target
        answer = self.answers.answer(target.id, target.answer, step.request, step.match)
        answer, signals = self._announce(target, answer)  # logged as sent
        self.runtime.request_matched(self.where, step, answer)
        if self.tap is not None:
            self.tap.emulated(step.request, answer)
        self._enter(target, answer, signals)

    def _greet(self) -> None:
        """At connect: the root state's answer (a banner), logged on its own."""
        root = self.dialog.state
        answer, signals = self._announce(root, self.answers.answer(root.id, root.answer))
        if answer or root.end is not End.OPEN:
            self.runtime.events.emit(
                "scriptgen.answer.sent",
                self.where,
                state=root.id,
                answer=answer,
                end=root.end.value,
            )
        if self.tap is not None:
            self.tap.emulated(b"", answer)
        self._enter(root, answer, signals)

    def _announce(self, state: StateIndex, answer: bytes) -> tuple[bytes, list[Any]]:
        """The answer naming the ports drawn for it, and the state's other signals.

        Before the answer is logged or handed to the proxy: both must hold what
        the client reads (the drawn port), not the learned one."""
        signals = self.machine.machine.states[state.id].signals
        if self.gate is None or not signals:
            return answer, signals
        return self.gate.announce(self.where, state.id, signals, answer)

    def _enter(self, state: StateIndex, answer: bytes, signals: list[Any]) -> None:
        """Send the state's answer, then do what the server did there.

        The answer is logged with the request that caused it (one event per
        request keeps logging affordable at high request rates). A state with
        signals (those left by :meth:`_announce`) first opens the ports they
        name for this source; its answer waits until the gate confirms, so a
        client that connects as soon as it reads the answer is not refused by
        a race.
        """
        if self.gate is not None and signals:
            opened = self.gate.signal(self.where, state.id, signals)
            if not opened.called:
                self._held = opened
                self.transport.pauseProducing()
                opened.addBoth(self._release, state, answer)
                return
        self._answer(state, answer)

    def _release(self, _: Any, state: StateIndex, answer: bytes) -> None:
        self._held = None
        if self.closing:
            return
        self.transport.resumeProducing()
        self._answer(state, answer)
        queued, self._after_hold = self._after_hold, []
        if not self.closing:
            self._run(queued)

    def _answer(self, state: StateIndex, answer: bytes) -> None:
        if answer:
            self.transport.write(answer)
            self.bytes_out += len(answer)
        if state.end is End.CLOSE:
            self._close("server_close")
        elif state.end is End.RESET:
            self._close("server_reset", abort=True)

    def _unmatched(self, step: Unmatched) -> None:
        rt = self.runtime
        rt.request_unmatched(self.where, step)
        if self.tap is not None and self.tap.proxy.take_over(self.tap, step.request):
            return  # the source's pool host answers from here on
        if rt.config.on_unmatched == "close":
            self._close("unmatched")
        else:
            self.lost = True  # stay silent; the idle timeout ends the connection

    def resume(self, step: Matched | None, rest: bytes) -> None:
        """The pool host could not take a doubted request (``step``; None: another
        connection's, which took this one along): the model answers it after all,
        then the bytes that followed it."""
        if self.closing:
            return
        if step is not None:
            self.dialog.state = step.target  # requests read after it were handed over, undone
            self._matched(step, doubt=False)
        if rest and not self.closing:
            self._run(self.dialog.feed(rest))

    def hand_over(self) -> bytes:
        """The proxy takes this connection: stop the request timers, give up the buffer
        (with the requests read after a doubted one but not run: pipelined ones)."""
        self._cancel("settle")
        self._cancel("request")
        self._cancel("quiet")
        unrun, self._unrun = self._unrun, []
        read = b"".join(s.request for s in unrun if not isinstance(s, Overflow))
        self.dialog.requests -= sum(isinstance(s, Matched) for s in unrun)  # bytes again
        left, self.dialog.buffer = read + self.dialog.buffer, b""
        self.lost = False
        return left

    def _ignore(self, data: bytes) -> None:
        self.ignored += len(data)
        if self.ignored > self.runtime.config.limits.max_buffer_bytes:
            self.runtime.limit_hit("max_buffer_bytes", self.where, buffered=self.ignored)
            self._close("max_buffer_bytes")

    # --- timers ---

    def _arm_request_timers(self) -> None:
        waiting = self.dialog.waiting
        if (
            waiting is Waiting.NOTHING
            and "settle" not in self._timers
            and "request" not in self._timers
            and "quiet" not in self._timers
        ):
            return  # the common case: a whole request was answered, nothing pending
        if waiting is Waiting.SETTLE:
            self._cancel("settle")
            self._start("settle", self.runtime.config.request_settle, self._settled)
        else:
            self._cancel("settle")
        # Quiet: restarted by every byte while incomplete (a client still writing
        # is waited for; one that stopped is waiting for us).
        self._cancel("quiet")
        quiet = self.runtime.config.limits.request_quiet
        if waiting is Waiting.MORE and quiet > 0:
            self._start("quiet", quiet, self._request_expired, "request_quiet")
        if waiting is Waiting.NOTHING:
            self._cancel("request")
        elif "request" not in self._timers:
            limit = self.runtime.config.limits.request_timeout
            self._start("request", limit, self._request_expired)

    def _settled(self) -> None:
        self._timers.pop("settle", None)
        if not self.closing:
            self._run(self.dialog.settle())

    def _request_expired(self, reason: str = "request_timeout") -> None:
        self._cancel("request")
        self._cancel("quiet")
        if not self.closing:
            self._run(self.dialog.expire(reason))

    def _idle_check(self) -> None:
        self._timers.pop("idle", None)
        if self.closing:
            return
        idle = self.runtime.config.limits.idle_timeout
        quiet = self.runtime.clock.seconds() - self.last_data
        if quiet >= idle:
            self._close("idle_timeout")
        else:
            self._start("idle", idle - quiet, self._idle_check)

    def _start(self, name: str, delay: float, f: Any, *args: Any) -> None:
        self._timers[name] = self.runtime.clock.callLater(delay, f, *args)

    def _cancel(self, name: str) -> None:
        call = self._timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def _close(self, reason: str, abort: bool = False) -> None:
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        for name in list(self._timers):
            self._cancel(name)
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()
            # loseConnection first sends what is buffered; a client that stopped
            # reading would hold the connection (and its slot) open for ever.
            limit = self.runtime.config.limits.request_timeout
            self._start("flush", limit, self._flush_expired)

    def _flush_expired(self) -> None:
        self._timers.pop("flush", None)
        self.transport.abortConnection()


class EmulatorFactory(Factory):
    """Builds protocols for one served (protocol, port) with the current model."""

    noisy = False
    gate: Any = None  # the service's scriptgen.emulate.gate.Gate (None: nothing gated)
    proxy: Any = None  # the service's scriptgen.emulate.proxy.Proxy (None: proxy off)

    def __init__(self, runtime: Runtime, spec: PortSpec) -> None:
        self.runtime = runtime
        self.spec = spec

    def buildProtocol(self, addr: Any) -> EmulatorProtocol | None:  # noqa: N802
        machine = self.runtime.models.get(self.spec.key)
        if machine is None:
            return None  # Twisted closes the connection
        proto = EmulatorProtocol(self.runtime, machine)
        proto.factory = self
        proto.gate = self.gate
        proto.proxy = self.proxy
        return proto
