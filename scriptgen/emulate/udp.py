"""UDP: one datagram is one request; dialog state is kept per source address.

A "session" is the run of datagrams from one (address, port) until it is
quiet for ``idle_timeout``, the machine reaches a closing state, or the table
of sources (bounded by ``max_sources``, least recently used out first) needs
the room. The root state's answer is not sent: there is no connection to
greet, the first datagram is the first request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.error import MessageLengthError
from twisted.internet.protocol import DatagramProtocol

from scriptgen.emulate.config import PortSpec
from scriptgen.emulate.dialog import Dialog, Matched
from scriptgen.emulate.eventlog import Endpoint
from scriptgen.emulate.limits import LruTable
from scriptgen.emulate.rewrite import LiveAnswers
from scriptgen.emulate.runtime import Runtime, new_session_id
from scriptgen.model import End


@dataclass(slots=True)
class UdpSession:
    dialog: Dialog
    where: Endpoint
    started: float
    last: float
    bytes_in: int = 0
    bytes_out: int = 0
    answers: LiveAnswers | None = None  # content dependencies of this session


class EmulatorDatagramProtocol(DatagramProtocol):
    noisy = False

    def __init__(self, runtime: Runtime, spec: PortSpec) -> None:
        self.runtime = runtime
        self.spec = spec
        bound = runtime.config.limits.max_sources
        self.sessions: LruTable[tuple[str, int], UdpSession] = LruTable(bound, self._evicted)
        self._sweeper: Any = None
        self.proxy: Any = None  # scriptgen.emulate.proxy.Proxy, set by the service
        self.relays: dict[tuple[str, int], Any] = {}  # client address -> its relayed flow

    def startProtocol(self) -> None:  # noqa: N802
        self._schedule_sweep()

    def stopProtocol(self) -> None:  # noqa: N802
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None
        for key, session in self.sessions.oldest():
            self.sessions.pop(key)
            self._end(session, "service_stopped")

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:  # noqa: N802
        rt = self.runtime
        if self.proxy is not None and addr in self.relays:
            self.relays[addr].from_client(data)  # relayed to the source's pool host
            return
        now = rt.clock.seconds()
        session = self.sessions.get(addr)
        if session is not None and now - session.last >= rt.config.limits.idle_timeout:
            self.sessions.pop(addr)
            self._end(session, "idle_timeout")
            session = None
        if session is None:
            session = self._open(addr, now)
            if session is None:
                return
        session.last = now
        session.bytes_in += len(data)
        if len(data) > rt.config.limits.max_buffer_bytes:
            rt.limit_hit("max_buffer_bytes", session.where, buffered=len(data))
            return
        machine = session.dialog.machine
        if self.proxy is not None and self.proxy.udp.direct(
            self, addr, session.where, machine, data
        ):
            return
        step = session.dialog.datagram(data)
        if isinstance(step, Matched):
            if self.proxy is not None and self.proxy.udp.doubt(
                self, addr, session.where, machine, step
            ):
                return  # its transition is in doubt: the source's pool host answers
            target = step.target
            answer = target.answer
            if session.answers is not None:
                answer = session.answers.answer(target.id, answer, step.request, step.match)
            rt.request_matched(session.where, step, answer)
            if self.proxy is not None:
                self.proxy.udp.emulated(self, addr, session.where, machine, step.request, answer)
            self._answer(session, addr, answer)
            return
        rt.request_unmatched(session.where, step)
        if self.proxy is not None and self.proxy.udp.unmatched(
            self, addr, session.where, machine, step.request
        ):
            return  # the source's pool host answers from here on
        if rt.config.on_unmatched == "close":
            self.sessions.pop(addr)
            self._end(session, "unmatched")

    def _open(self, addr: tuple[str, int], now: float) -> UdpSession | None:
        machine = self.runtime.models.get(self.spec.key)
        if machine is None:
            return None
        host = self.transport.getHost() if self.transport is not None else None
        where = Endpoint(
            "udp",
            addr[0],
            addr[1],
            getattr(host, "host", ""),
            getattr(host, "port", self.spec.served),
            new_session_id(),
        )
        cfg = self.runtime.config
        dialog = Dialog(machine, cfg.limits.max_buffer_bytes, cfg.backoff, cfg.backoff_alike)
        session = UdpSession(dialog, where, now, now)
        session.answers = LiveAnswers(
            machine.machine.states, self.runtime.config.content_dependencies
        )
        self.sessions.put(addr, session)
        self.runtime.events.emit("scriptgen.session.connect", where, state=dialog.state.id)
        return session

    def _answer(self, session: UdpSession, addr: tuple[str, int], answer: bytes) -> None:
        state = session.dialog.state
        if answer and self.may_send(answer, addr, session.where):
            try:
                self.transport.write(answer, addr)
            except (OSError, MessageLengthError):
                # The kernel refused it (an answer grown past the datagram size
                # by rewriting, a source we may not send to): end this session,
                # not the service, and no traceback.
                self.sessions.pop(addr)
                self._end(session, "send_error")
                return
            session.bytes_out += len(answer)
        if state.end is not End.OPEN:  # the dialog is over: the next datagram starts afresh
            self.sessions.pop(addr)
            self._end(session, "server_close" if state.end is End.CLOSE else "server_reset")

    def may_send(self, data: bytes, addr: tuple[str, int], where: Endpoint | None = None) -> bool:
        """Whether ``data`` may go to ``addr`` now: the source address's send budget
        (``udp_answer_rate``) bounds what a spoofed source can make us reflect."""
        rt = self.runtime
        if rt.udp_budget.take(addr[0], len(data), rt.clock.seconds()):
            return True
        rt.limit_hit("udp_answer_rate", where, dst=addr[0], dropped_bytes=len(data))
        return False

    def _evicted(self, _addr: tuple[str, int], session: UdpSession) -> None:
        self.runtime.limit_hit("max_sources", session.where)
        self._end(session, "evicted")

    def _end(self, session: UdpSession, reason: str) -> None:
        if self.proxy is not None:  # its transcript is no use any more
            self.proxy.udp.forget(self, (session.where.src_ip, session.where.src_port))
        self.runtime.events.emit(
            "scriptgen.session.closed",
            session.where,
            reason=reason,
            duration=round(session.last - session.started, 6),
            bytes_in=session.bytes_in,
            bytes_out=session.bytes_out,
            requests=session.dialog.requests,
            ignored_bytes=0,
            state=session.dialog.state.id,
        )

    def sweep(self) -> None:
        """End sessions quiet for longer than idle_timeout (oldest first; stop at the first live one)."""
        now = self.runtime.clock.seconds()
        idle = self.runtime.config.limits.idle_timeout
        for key, session in self.sessions.oldest():
            if now - session.last < idle:
                break
            self.sessions.pop(key)
            self._end(session, "idle_timeout")

    def _schedule_sweep(self) -> None:
        interval = max(0.05, self.runtime.config.limits.idle_timeout / 2)
        self._sweeper = self.runtime.clock.callLater(interval, self._sweep_again)

    def _sweep_again(self) -> None:
        self.sweep()
        self._schedule_sweep()
