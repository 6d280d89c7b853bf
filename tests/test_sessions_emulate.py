"""The emulator with a signal in its model: ``twistd -n scriptgen`` as a subprocess.

Runs without root: the gate is forced into its fallback (accept, then reset at
once), so what is checked here is the per-source bookkeeping, the answer
hold, expiry and the events. The kernel mechanism (a refused connect) is
checked in tests/test_sessions_gate.py and tests/test_sessions_scenarios.py.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from scriptgen.model import End, Machine, Pattern, Transition, save_machine
from tests.emulator_support import TWISTD, Emulator

SERVICE, SHELL = 7101, 7102
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(TWISTD is None, reason="twistd not installed"),
]

CONFIG = """\
[scriptgen]
model_dir = {models}
listen = 127.0.0.1
ports = tcp/{service}=0, tcp/{shell}=0
events = {events}
reload_interval = 0
request_settle = 0.05
gate_mechanism = fallback
"""


def models(directory: Path) -> None:
    service = Machine("tcp", SERVICE)
    service.states[0].answer = b"ready\n"
    boom = service.new_state()
    boom.answer, boom.end = b"boom\n", End.CLOSE
    boom.signals = [{"kind": "session", "opens": f"tcp/{SHELL}", "for": 1.5}]
    service.states[0].transitions.append(Transition(Pattern.literal(b"GO\n"), boom.id, 1))
    shell = Machine("tcp", SHELL)
    shell.states[0].answer = b"# "
    save_machine(service, directory)
    save_machine(shell, directory)


def talk(port: int, source: str, send: bytes | None = None) -> bytes | str:
    """What a client from ``source`` reads (bytes), or how its connection failed."""
    s = socket.socket()
    s.settimeout(3)
    try:
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        got = s.recv(100)
        if send is not None:
            s.sendall(send)
            got += s.recv(100)
        return got
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    finally:
        s.close()


def test_fallback_gate_per_source_with_expiry(tmp_path: Path) -> None:
    models(tmp_path / "models")
    events = tmp_path / "events.json"
    config = CONFIG.format(models=tmp_path / "models", events=events, service=SERVICE, shell=SHELL)
    with Emulator.start(tmp_path, config, events, timeout=20) as emu:
        service = emu.ports[f"tcp/{SERVICE}=0"]
        shell = emu.ports[f"tcp/{SHELL}=0"]
        ready = emu.wait_event("scriptgen.gate.ready")
        assert ready["mechanism"] == "fallback" and ready["reason"] == "configured"
        assert ready["ports"] == [f"tcp/{SHELL}={shell}"]

        assert talk(shell, "127.0.0.5") in ("reset", b"")  # accepted, then reset: no answer
        assert talk(service, "127.0.0.5", b"GO\n") == b"ready\nboom\n"
        assert talk(shell, "127.0.0.5") == b"# "
        assert talk(shell, "127.0.0.6") in ("reset", b"")  # another source: still closed
        assert talk(service, "127.0.0.6") == b"ready\n"  # ungated port: open for everyone
        time.sleep(1.8)
        assert talk(shell, "127.0.0.5") in ("reset", b"")  # the signal expired

        deadline = time.monotonic() + 5  # the log is written by a thread: let it catch up
        while time.monotonic() < deadline:
            seen = emu.read_events()
            if sum(e["eventid"] == "scriptgen.gate.refused" for e in seen) >= 3:
                break
            time.sleep(0.05)
        opened = [e for e in seen if e["eventid"] == "scriptgen.gate.opened"]
        assert [(e["src_ip"], e["port"], e["seconds"]) for e in opened] == [
            ("127.0.0.5", f"tcp/{SHELL}", 1.5)
        ]
        expired = [e["src_ip"] for e in seen if e["eventid"] == "scriptgen.gate.expired"]
        refused = [e["src_ip"] for e in seen if e["eventid"] == "scriptgen.gate.refused"]
        assert expired == ["127.0.0.5"]
        assert refused == ["127.0.0.5", "127.0.0.6", "127.0.0.5"]
