"""The emulator as a Twisted service: ``make_service(config) -> IService``.

Models are loaded synchronously inside ``make_service``, before anything
listens, so a broken model or a port without a model stops start-up with
one line (``StartupError``) instead of a half-working honeypot. Ports are
bound in ``startService`` by the service itself, not by child TCPServer
services: a port that cannot be bound is reported (log line and
``scriptgen.port.error``) while the other ports keep serving, instead of
aborting the whole process with a traceback.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import threads
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from scriptgen.emulate.announce import Announcer
from scriptgen.emulate.config import Config, PortSpec
from scriptgen.emulate.eventlog import EventLog
from scriptgen.emulate.gate import Gate, gated_ports
from scriptgen.emulate.matching import CompiledMachine
from scriptgen.emulate.protocol import EmulatorFactory
from scriptgen.emulate.reload import ModelHolder
from scriptgen.emulate.runtime import Runtime
from scriptgen.emulate.udp import EmulatorDatagramProtocol
from scriptgen.model import Machine

log = Logger(namespace="scriptgen")
SPOOL_STOP_TIMEOUT = 5.0  # seconds a service stop waits for the recordings' writer


class StartupError(Exception):
    """The service cannot start; the message is one complete line."""


class EmulatorService(MultiService):
    """Listens on every served port and keeps the models fresh."""

    def __init__(
        self,
        config: Config,
        runtime: Runtime,
        holder: ModelHolder,
        specs: list[PortSpec],
        reactor: Any,
    ) -> None:
        super().__init__()
        self.config = config
        self.runtime = runtime
        self.holder = holder
        self.specs = specs
        self.reactor = reactor
        self.listening: dict[PortSpec, Any] = {}
        # twistd sets this (the plugin): with no port bound at all, a process that
        # stays up serving nothing looks healthy; it exits with one line instead.
        self.exit_if_nothing_bound = False
        self.udp: dict[PortSpec, EmulatorDatagramProtocol] = {}
        self.proxy: Any = None  # scriptgen.emulate.proxy.Proxy when [proxy] enabled
        self.learner: Any = None  # scriptgen.emulate.online.OnlineLearner
        if config.proxy.enabled:
            self._build_proxy()
        self._reloader: LoopingCall | None = None
        self._old_hup: Any = None
        self.gate = Gate(
            runtime.events,
            reactor,
            lambda f, *a: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *a),
            mechanism=config.gate_mechanism,
            table=config.gate_table,
            listen=config.listen,
            hold_timeout=config.gate_hold,
            max_entries=config.limits.max_sources,
        )
        # Ports an answer names, drawn per answer: bounded like connections.
        self.gate.announcer = Announcer(
            runtime.events,
            reactor,
            self._serve_drawn,
            self.gate,
            per_source=config.limits.max_connections_per_source,
            total=config.limits.max_connections,
        )

    def _build_proxy(self) -> None:
        """Proxy, spool and online learner (imported here: only with the proxy on)."""
        from scriptgen.emulate.online import OnlineLearner, region_overrides
        from scriptgen.emulate.proxy import Proxy
        from scriptgen.emulate.recorder import Spool

        cfg, reactor, events = self.config.proxy, self.reactor, self.runtime.events

        def warn(line: str) -> None:  # called from the spool's writer thread
            reactor.callFromThread(log.warn, "{line}", line=line)

        spool = Spool(cfg.spool, cfg.record_bytes, warn=warn)

        def in_thread(f: Any, *args: Any) -> Deferred[Any]:
            return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

        self.learner = OnlineLearner(
            self.config.model_dir, spool, events.emit, in_thread, self.holder.reload,
            region=region_overrides(
                cfg.min_cluster_size, cfg.micro_min_count, cfg.distance_threshold
            ),
            relearn_bytes=cfg.relearn_bytes,
            salt=spool.salt(),
        )  # fmt: skip

        def connect(host: str, port: int, factory: Any, timeout: float) -> Any:
            return reactor.connectTCP(host, port, factory, timeout=timeout)

        self.proxy = Proxy(
            cfg,
            events.emit,
            reactor,
            connect,
            spool,
            self.learner.submit if cfg.learn else lambda paths: None,
            self.runtime.limit_hit,
            # a relayed UDP flow: an ephemeral client socket, connected to the pool host
            lambda proto: reactor.listenUDP(0, proto),
        )

    @property
    def bound(self) -> dict[PortSpec, int]:
        """The port number each served spec really listens on (port 0 picks one)."""
        return {spec: port.getHost().port for spec, port in self.listening.items()}

    def startService(self) -> None:  # noqa: N802
        super().startService()
        events = self.runtime.events
        events.start()
        for spec in self.specs:
            self._listen(spec)
        if self.specs and not self.listening and self.exit_if_nothing_bound:
            self._exit_unbound()
        targets = gated_ports(m.machine for m in self.holder.machines.values())
        self.gate.start({s.key: p for s, p in self.bound.items() if s.key in targets})
        if self.config.reload_interval > 0:
            self._reloader = LoopingCall(self.holder.reload)
            self._reloader.clock = self.reactor
            self._reloader.start(self.config.reload_interval, now=False)
        if self.config.ports is None:
            self.holder.on_new = self._serve_new
        self._install_hup()
        if self.proxy is not None:
            spool = self.proxy.spool
            spool.recover()  # recordings a crash left open are pending, as far as written
            if self.config.proxy.learn and spool.pending():
                self.learner.submit(spool.pending())
            spool.start(self.reactor.callFromThread)  # from now on no file write on the reactor
        events.emit(
            "scriptgen.service.started",
            config=self.config.source,
            model_dir=str(self.config.model_dir),
            ports={str(s): p for s, p in self.bound.items()},
        )

    def _listen(self, spec: PortSpec) -> None:
        listen = self.config.listen
        try:
            if spec.protocol == "tcp":
                factory = EmulatorFactory(self.runtime, spec)
                factory.gate = self.gate
                factory.proxy = self.proxy
                port = self.reactor.listenTCP(spec.served, factory, interface=listen, backlog=511)
            else:
                proto = EmulatorDatagramProtocol(self.runtime, spec)
                proto.proxy = self.proxy
                port = self.reactor.listenUDP(spec.served, proto, interface=listen)
                self.udp[spec] = proto
        except CannotListenError as e:
            problem = str(e.socketError) if e.socketError else str(e)
            self.runtime.events.emit(
                "scriptgen.port.error", port=str(spec), address=listen, error=problem
            )
            log.error(
                "scriptgen: cannot listen on {spec} at {addr}: {problem}",
                spec=str(spec),
                addr=listen,
                problem=problem,
            )
            return
        self.listening[spec] = port
        real = port.getHost().port
        self.runtime.events.emit(
            "scriptgen.port.listening", port=str(spec), address=listen, listening=real
        )
        log.info(
            "scriptgen: serving {spec} on {addr}:{real}", spec=str(spec), addr=listen, real=real
        )

    def _serve_drawn(self, key: tuple[str, int], port: int, gate: Any) -> Any:
        """Listen on ``port`` with the machine learned on ``key`` (an answer announced it):
        no proxy (a pool host has no such port), ``gate`` admits its source only.
        Raises CannotListenError when the port is taken; None without that machine."""
        if self.runtime.models.get(key) is None:
            return None
        factory = EmulatorFactory(self.runtime, PortSpec(key[0], key[1], port))
        factory.gate = gate
        return self.reactor.listenTCP(port, factory, interface=self.config.listen)

    def _exit_unbound(self) -> None:
        """Every served port failed to bind: stop start-up with one line, exit status 1."""
        self.runtime.events.close(timeout=2.0)  # the port.error events reach the log
        ports = ", ".join(f"{s} on {self.config.listen}" for s in self.specs)
        sys.stderr.write(f"scriptgen: no port could be bound ({ports}); see the lines above\n")
        sys.stderr.flush()
        raise SystemExit(1)

    def _serve_new(self, keys: list[tuple[str, int]]) -> None:
        """ports = auto: a model that appears later is served on its own port."""
        for proto, port in keys:
            spec = PortSpec(proto, port, port)
            if spec not in self.listening and self.running:
                self.specs.append(spec)
                self._listen(spec)

    def _install_hup(self) -> None:
        if (
            not hasattr(signal, "SIGHUP")
            or threading.current_thread() is not threading.main_thread()
        ):
            return

        def on_hup(_signum: int, _frame: Any) -> None:
            self.reactor.callFromThread(self.holder.reload, True)

        self._old_hup = signal.signal(signal.SIGHUP, on_hup)

    def stopService(self) -> Deferred[Any]:  # noqa: N802
        self.holder.on_new = None
        if self._reloader is not None and self._reloader.running:
            self._reloader.stop()
        if self._old_hup is not None:
            signal.signal(signal.SIGHUP, self._old_hup)
            self._old_hup = None
        self.runtime.events.emit("scriptgen.service.stopped")
        stops = []
        if self.proxy is not None:
            self.proxy.stop()  # recordings closed: pending, learned at the next start
            self.learner.stop()
            stops.append(self._stop_spool(self.proxy.spool))
        self.gate.stop()
        stops += [d for p in self.listening.values() if (d := p.stopListening()) is not None]
        self.listening.clear()
        d = DeferredList([*stops, super().stopService()])
        d.addBoth(lambda _: self.runtime.events.close(timeout=2.0))
        return d

    def _stop_spool(self, spool: Any) -> Deferred[Any]:
        """Everything queued for the spool's disk is written before the events close.

        Bounded: a disk that hangs must not hang the stop (the thread is a daemon)."""
        d = spool.stop()
        d.addTimeout(SPOOL_STOP_TIMEOUT, self.reactor)
        d.addErrback(lambda f: log.warn("scriptgen: spool: {e}", e=f.getErrorMessage()))
        return d


def _served_specs(config: Config, holder: ModelHolder) -> list[PortSpec]:
    if config.ports is not None:
        return list(config.ports)
    return [PortSpec(proto, port, port) for proto, port in sorted(holder.machines)]


def make_service(
    config: Config,
    *,
    reactor: Any = None,
    events: EventLog | None = None,
    defer_to_thread: Any = None,
) -> EmulatorService:
    """Build the emulator service; raise StartupError (one line) when it cannot serve.

    ``reactor``, ``events`` and ``defer_to_thread`` default to the real ones;
    tests pass fakes.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor

    def warn(line: str) -> None:  # called from the event-log writer thread
        reactor.callFromThread(log.warn, "{line}", line=line)

    if events is None:
        lim = config.limits
        events = EventLog(
            config.events,
            queue_size=lim.event_queue,
            queue_bytes=lim.event_queue_bytes,
            payload_bytes=lim.log_payload_bytes,
            warn=warn,
        )
    wanted = {s.key for s in config.ports} if config.ports is not None else None

    def served(key: tuple[str, int]) -> bool:
        return wanted is None or key in wanted

    def in_thread(f: Any, *args: Any) -> Deferred[Any]:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    holder = ModelHolder(
        config.model_dir,
        events,
        defer_to_thread or in_thread,
        served,
        match_timeout=config.limits.match_timeout,
    )
    if not config.model_dir.is_dir():
        raise StartupError(
            f"config {config.source}: [scriptgen] model_dir: not a directory: {config.model_dir}"
        )
    for result in holder.load_initial():
        if result.machine is None and served(result.key):
            raise StartupError(f"model {result.error}")
    specs = _served_specs(config, holder)
    if not specs:
        raise StartupError(f"model dir {config.model_dir}: no models to serve (ports = auto)")
    for spec in specs:
        if spec.key not in holder.machines and config.proxy.enabled:
            # Nothing learned yet: served empty, every connection goes to the pool.
            empty = Machine(spec.protocol, spec.learned)
            holder.machines[spec.key] = CompiledMachine.build(empty, "<empty: proxy>")
        if spec.key not in holder.machines:
            raise StartupError(
                f"config {config.source}: [scriptgen] ports: no model for "
                f"{spec.protocol}/{spec.learned} in {config.model_dir}"
            )
    runtime = Runtime(config, events, holder, reactor)
    return EmulatorService(config, runtime, holder, specs, reactor)
