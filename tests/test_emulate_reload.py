"""Model loading and reloading: good files swap in, bad files leave the old
model serving and are reported; start-up refuses what it cannot serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock

from scriptgen.emulate import StartupError, make_service
from scriptgen.emulate.config import Config, PortSpec
from scriptgen.emulate.reload import ModelHolder
from scriptgen.model import Pattern, Region, Transition, save_machine
from tests.test_emulate_support import RecordingEvents, line_machine


def sync(f: Any, *args: Any) -> Deferred[Any]:
    return succeed(f(*args))


def holder_for(tmp_path: Path, defer: Any = sync) -> tuple[ModelHolder, RecordingEvents]:
    events = RecordingEvents()
    holder = ModelHolder(tmp_path, events, defer)
    return holder, events


def answer_of_pong(holder: ModelHolder) -> bytes:
    return holder.get(("tcp", 7000)).states[1].answer


def test_initial_load_and_good_reload(tmp_path: Path) -> None:
    save_machine(line_machine(), tmp_path)
    holder, events = holder_for(tmp_path)
    holder.load_initial()
    assert answer_of_pong(holder) == b"+PONG\r\n"
    assert events.of("scriptgen.model.loaded")[0]["machine"] == "tcp-7000"
    changed = line_machine()
    changed.states[1].answer = b"+NEW\r\n"
    save_machine(changed, tmp_path)
    holder.reload()
    assert answer_of_pong(holder) == b"+NEW\r\n"
    assert len(events.of("scriptgen.model.loaded")) == 2


def test_unchanged_files_are_not_reloaded(tmp_path: Path) -> None:
    save_machine(line_machine(), tmp_path)
    holder, events = holder_for(tmp_path)
    holder.load_initial()
    before = holder.get(("tcp", 7000))
    holder.reload()
    assert holder.get(("tcp", 7000)) is before
    assert len(events.of("scriptgen.model.loaded")) == 1
    holder.reload(force=True)  # SIGHUP: everything again
    assert holder.get(("tcp", 7000)) is not before


def test_bad_file_keeps_old_model_and_reports(tmp_path: Path) -> None:
    path = save_machine(line_machine(), tmp_path)
    save_machine(line_machine(8000), tmp_path)
    holder, events = holder_for(tmp_path)
    holder.load_initial()
    old = holder.get(("tcp", 7000))
    path.write_text('{"schema": "scriptgen.model/1", "truncat')
    changed = line_machine(8000)
    changed.states[1].answer = b"+EIGHT\r\n"
    save_machine(changed, tmp_path)
    holder.reload()
    assert holder.get(("tcp", 7000)) is old
    assert (
        holder.get(("tcp", 8000)).states[1].answer == b"+EIGHT\r\n"
    )  # the good file still swapped
    (error,) = events.of("scriptgen.model.error")
    assert error["file"] == str(path) and "invalid JSON" in error["error"]


def test_enormous_region_loads_and_keeps_its_bounds(tmp_path: Path) -> None:
    """A hostile model with a 10**12-byte region must load fast and still match by length."""
    m = line_machine()
    m.states[0].transitions.append(
        Transition(Pattern((Region(b"X"), Region.mutating(3, 10**12))), 1)
    )
    save_machine(m, tmp_path)
    holder, events = holder_for(tmp_path)
    (result,) = holder.load_initial()
    assert result.machine is not None and not events.of("scriptgen.model.error")
    root = result.machine.states[0]
    assert root.best(b"Xabc") is not None and root.best(b"Xab") is None


def test_removed_file_keeps_serving(tmp_path: Path) -> None:
    path = save_machine(line_machine(), tmp_path)
    holder, _events = holder_for(tmp_path)
    holder.load_initial()
    path.unlink()
    holder.reload()
    assert holder.get(("tcp", 7000)) is not None


def test_reload_while_busy_runs_again_after(tmp_path: Path) -> None:
    save_machine(line_machine(), tmp_path)
    pending: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

    def manual(f: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        pending.append((d, f, args))
        return d

    holder, _events = holder_for(tmp_path, manual)
    holder.load_initial()
    holder.reload()
    assert holder.reload() is None  # busy: remembered, not started twice
    d, f, args = pending.pop()
    d.callback(f(*args))
    assert len(pending) == 1  # the remembered reload started when the first finished
    d, f, args = pending.pop()
    d.callback(f(*args))
    assert holder.reloads == 2 and not pending


def test_thread_failure_is_reported_not_raised(tmp_path: Path) -> None:
    def broken(f: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        d.errback(RuntimeError("worker died"))
        return d

    holder, events = holder_for(tmp_path, broken)
    holder.reload()
    assert "worker died" in events.of("scriptgen.model.error")[0]["error"]


def config_for(models: Path, ports: tuple[PortSpec, ...] | None) -> Config:
    return Config(model_dir=models, ports=ports, events=None, reload_interval=0)


def test_make_service_refuses_bad_model(tmp_path: Path) -> None:
    path = save_machine(line_machine(), tmp_path)
    path.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(StartupError) as info:
        make_service(config_for(tmp_path, None), reactor=MemoryReactorClock())
    assert str(info.value).startswith(f"model {path}: ") and "\n" not in str(info.value)


def test_make_service_refuses_empty_auto_and_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="no models to serve"):
        make_service(config_for(tmp_path, None), reactor=MemoryReactorClock())
    with pytest.raises(StartupError, match="model_dir: not a directory"):
        make_service(config_for(tmp_path / "nope", None), reactor=MemoryReactorClock())


def test_bad_unserved_model_does_not_stop_startup(tmp_path: Path) -> None:
    save_machine(line_machine(), tmp_path)
    (tmp_path / "udp-53.json").write_text("{}")
    service = make_service(
        config_for(tmp_path, (PortSpec("tcp", 7000, 0),)), reactor=MemoryReactorClock()
    )
    assert service.holder.get(("tcp", 7000)) is not None


def test_service_listens_on_served_ports(tmp_path: Path) -> None:
    save_machine(line_machine(), tmp_path)
    save_machine(line_machine(7001), tmp_path)
    reactor = (
        MemoryReactorClock()
    )  # no UDP in MemoryReactor: UDP is covered by the integration test
    events = RecordingEvents()
    config = Config(model_dir=tmp_path, events=None, reload_interval=0, listen="127.0.0.3")
    service = make_service(config, reactor=reactor, events=events)
    service.startService()
    assert [(p[0], p[3]) for p in reactor.tcpServers] == [(7000, "127.0.0.3"), (7001, "127.0.0.3")]
    assert len(events.of("scriptgen.port.listening")) == 2
    assert events.of("scriptgen.service.started")
    service.stopService()
    assert events.ids()[-1] == "scriptgen.service.stopped"


def test_auto_mode_serves_a_model_that_appears_later(tmp_path: Path) -> None:
    save_machine(line_machine(), tmp_path)
    reactor = MemoryReactorClock()
    events = RecordingEvents()
    config = Config(model_dir=tmp_path, events=None, reload_interval=1)
    service = make_service(config, reactor=reactor, events=events, defer_to_thread=sync)
    service.startService()
    assert [p[0] for p in reactor.tcpServers] == [7000]
    save_machine(line_machine(7002), tmp_path)
    reactor.advance(1.1)  # the periodic check finds the new file
    assert [p[0] for p in reactor.tcpServers] == [7000, 7002]
    assert service.holder.get(("tcp", 7002)) is not None
    service.stopService()


def test_explicit_ports_do_not_grow(tmp_path: Path) -> None:
    save_machine(line_machine(), tmp_path)
    reactor = MemoryReactorClock()
    config = Config(
        model_dir=tmp_path, events=None, reload_interval=1, ports=(PortSpec("tcp", 7000, 7000),)
    )
    service = make_service(config, reactor=reactor, events=RecordingEvents(), defer_to_thread=sync)
    service.startService()
    save_machine(line_machine(7002), tmp_path)
    reactor.advance(1.1)
    assert [p[0] for p in reactor.tcpServers] == [7000]
    service.stopService()


def test_serving_does_not_import_the_learner() -> None:
    """DESIGN: nothing in emulate knows how alignment works (the learner may
    be imported lazily by the proxy's online learning, never to serve)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import scriptgen.emulate.service, scriptgen.emulate.protocol, scriptgen.emulate.udp\n"
        "print(sorted(m for m in sys.modules if m.startswith('scriptgen.learn')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
