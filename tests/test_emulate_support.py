"""Shared helpers for the emulator tests: hand-built machines, a recording
event log, and protocols wired to fake transports and a fake clock."""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from scriptgen.emulate.config import Config, Limits, PortSpec
from scriptgen.emulate.eventlog import Endpoint, EventLog
from scriptgen.emulate.matching import CompiledMachine
from scriptgen.emulate.protocol import EmulatorFactory, EmulatorProtocol
from scriptgen.emulate.runtime import Runtime
from scriptgen.model import End, Machine, Pattern, Region, Transition


class RecordingEvents(EventLog):
    """An event log that keeps events in memory (and still checks the catalogue)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.records: list[dict[str, Any]] = []

    def emit(self, eventid: str, where: Endpoint | None = None, **fields: Any) -> None:
        super().emit(eventid, where, **fields)
        self.records.append({"eventid": eventid, **(where.fields() if where else {}), **fields})

    def ids(self) -> list[str]:
        return [r["eventid"] for r in self.records]

    def of(self, eventid: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["eventid"] == eventid]


class StaticModels:
    def __init__(self, *machines: Machine) -> None:
        self.machines = {m.key: CompiledMachine.build(m) for m in machines}

    def get(self, key: tuple[str, int]) -> CompiledMachine | None:
        return self.machines.get(key)


def line_machine(port: int = 7000, protocol: str = "tcp") -> Machine:
    """A tiny line protocol: banner; PING -> +PONG; USER <name> -> 331; QUIT -> bye+close;
    KILL -> reset; PING is also a prefix of PINGALL (a longer request)."""
    m = Machine(protocol, port)
    root = m.states[0]
    root.answer = b"220 hello\r\n"
    pong = m.new_state()
    pong.answer = b"+PONG\r\n"
    user = m.new_state()
    user.answer = b"331 password?\r\n"
    bye = m.new_state()
    bye.answer = b"221 bye\r\n"
    bye.end = End.CLOSE
    reset = m.new_state()
    reset.end = End.RESET
    pingall = m.new_state()
    pingall.answer = b"+ALL\r\n"
    user_pat = Pattern((Region(b"USER "), Region.mutating(1, 20), Region(b"\r\n")))
    for s in (root, pong, user):
        s.transitions.append(Transition(Pattern.literal(b"PING\r\n"), pong.id))
        s.transitions.append(Transition(Pattern.literal(b"PING"), pong.id))
        s.transitions.append(Transition(Pattern.literal(b"PINGALL\r\n"), pingall.id))
        s.transitions.append(Transition(user_pat, user.id))
        s.transitions.append(Transition(Pattern.literal(b"QUIT\r\n"), bye.id))
        s.transitions.append(Transition(Pattern.literal(b"KILL\r\n"), reset.id))
    return m


def make_config(**limits: Any) -> Config:
    top = {k: limits.pop(k) for k in ("on_unmatched", "request_settle") if k in limits}
    return Config(
        ports=(PortSpec("tcp", 7000, 7000),),
        events=None,
        limits=dataclasses.replace(Limits(), **limits),
        **top,
    )


class Harness:
    """A runtime with a fake clock; ``connect`` returns (protocol, transport)."""

    def __init__(self, *machines: Machine, **config: Any) -> None:
        self.clock = MemoryReactorClock()
        self.events = RecordingEvents()
        self.config = make_config(**config)
        self.models = StaticModels(*(machines or (line_machine(),)))
        self.runtime = Runtime(self.config, self.events, self.models, self.clock)
        self.factory = EmulatorFactory(self.runtime, PortSpec("tcp", 7000, 7000))

    def connect(
        self, src: str = "10.0.0.1", port: int = 40000
    ) -> tuple[EmulatorProtocol, StringTransport]:
        proto = self.factory.buildProtocol(IPv4Address("TCP", src, port))
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 7000),
            peerAddress=IPv4Address("TCP", src, port),
        )
        proto.makeConnection(transport)
        return proto, transport

    def disconnect(self, proto: EmulatorProtocol, transport: StringTransport) -> None:
        """What the reactor does after loseConnection/abortConnection or a client close."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        proto.connectionLost(Failure(ConnectionDone()))
