"""The per-source gate: decisions, expiry, events, nft scripts; the real kernel in a netns."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from scriptgen.emulate.eventlog import Endpoint
from scriptgen.emulate.gate import (
    Gate,
    element_script,
    gated_ports,
    setup_script,
    signal_targets,
)
from scriptgen.model import Machine

REPO = Path(__file__).resolve().parents[1]
SHELL = ("tcp", 4444)
SIG = [{"kind": "session", "opens": "tcp/4444", "for": 10.0}]


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []

    def emit(self, eventid: str, where: Endpoint | None = None, **fields) -> None:
        self.seen.append((eventid, dict(fields, src=where.src_ip if where else None)))

    def ids(self) -> list[str]:
        return [e for e, _ in self.seen]


def where(ip: str, port: int = 9139) -> Endpoint:
    return Endpoint("tcp", ip, 50000, "127.0.0.1", port, "s1")


def make(mechanism="auto", runner=None, unavailable=lambda: None, **kw):
    events, clock = Events(), Clock()
    scripts: list[str] = []

    def record(script: str) -> Deferred:
        scripts.append(script)
        return succeed((0, ""))

    gate = Gate(
        events,
        clock,
        lambda f, *a: succeed(f(*a)),
        mechanism=mechanism,
        runner=runner or record,
        unavailable=unavailable,
        **kw,
    )
    return gate, events, clock, scripts


def test_closed_until_signalled_then_expires_per_source() -> None:
    gate, events, clock, scripts = make()
    gate.start({SHELL: 4444})
    assert gate.kernel and "tcp dport 4444" in scripts[0]
    assert not gate.allows(SHELL, "127.0.0.5") and not gate.allows(SHELL, "127.0.0.6")
    d = gate.signal(where("127.0.0.5"), 3, SIG)
    assert d.called  # the fake runner confirms at once
    assert "127.0.0.5 timeout 10000ms" in scripts[-1]
    assert gate.allows(SHELL, "127.0.0.5") and not gate.allows(SHELL, "127.0.0.6")
    assert gate.allows(("tcp", 9139), "127.0.0.6")  # ungated ports are never touched
    clock.advance(9.9)
    assert gate.allows(SHELL, "127.0.0.5")
    clock.advance(0.2)
    assert not gate.allows(SHELL, "127.0.0.5")
    assert events.ids() == [
        "scriptgen.gate.ready",
        "scriptgen.gate.opened",
        "scriptgen.gate.expired",
    ]


def test_signal_again_refreshes() -> None:
    gate, events, clock, _ = make()
    gate.start({SHELL: 4444})
    gate.signal(where("127.0.0.5"), 3, SIG)
    clock.advance(8)
    gate.signal(where("127.0.0.5"), 3, SIG)
    clock.advance(8)
    assert gate.allows(SHELL, "127.0.0.5")
    opened = [f for e, f in events.seen if e == "scriptgen.gate.opened"]
    assert [f["refreshed"] for f in opened] == [False, True]
    clock.advance(2.1)
    assert not gate.allows(SHELL, "127.0.0.5")
    assert events.ids().count("scriptgen.gate.expired") == 1


def test_fallback_when_nft_is_unavailable_is_announced() -> None:
    gate, events, _, scripts = make(unavailable=lambda: "not running as root")
    gate.start({SHELL: 4444})
    assert not gate.kernel and scripts == []
    ready = events.seen[0]
    assert ready[0] == "scriptgen.gate.ready"
    assert ready[1]["mechanism"] == "fallback" and "root" in ready[1]["reason"]
    assert not gate.admit(SHELL, where("127.0.0.6", 4444))
    assert events.ids()[-1] == "scriptgen.gate.refused"
    assert gate.signal(where("127.0.0.6"), 1, SIG).called
    assert gate.admit(SHELL, where("127.0.0.6", 4444))


def test_fallback_when_the_setup_script_fails() -> None:
    gate, events, _, _ = make(runner=lambda s: succeed((1, "Error: Could not process rule")))
    gate.start({SHELL: 4444})
    assert not gate.kernel and gate.ready
    assert "Could not process rule" in events.seen[0][1]["reason"]


def test_configured_fallback_never_runs_nft() -> None:
    gate, events, _, scripts = make(mechanism="fallback")
    gate.start({SHELL: 4444})
    assert scripts == [] and events.seen[0][1]["mechanism"] == "fallback"


def test_answer_is_held_until_nft_confirms_and_calls_are_batched() -> None:
    pending: list[tuple[str, Deferred]] = []

    def slow(script: str) -> Deferred:
        d: Deferred = Deferred()
        pending.append((script, d))
        return d

    gate, _, _, _ = make(runner=slow)
    gate.start({SHELL: 4444})
    pending.pop()[1].callback((0, ""))
    d1 = gate.signal(where("127.0.0.5"), 3, SIG)
    d2 = gate.signal(where("127.0.0.6"), 3, SIG)
    d3 = gate.signal(where("127.0.0.7"), 3, SIG)
    assert not d1.called and len(pending) == 1  # one nft run at a time
    pending.pop()[1].callback((0, ""))
    assert d1.called and not d2.called
    script, d = pending.pop()
    assert "127.0.0.6" in script and "127.0.0.7" in script  # the rest in one batch
    d.callback((0, ""))
    assert d2.called and d3.called


def test_hold_is_bounded_when_nft_hangs() -> None:
    gate, events, clock, _ = make(runner=lambda s: Deferred(), hold_timeout=2.0)
    gate.kernel = gate.ready = True
    gate.ports = {SHELL: 4444}
    d = gate.signal(where("127.0.0.5"), 3, SIG)
    assert not d.called
    clock.advance(2.0)
    assert d.called and events.ids()[-1] == "scriptgen.gate.error"


def test_table_is_bounded() -> None:
    gate, events, _, _ = make(max_entries=2)
    gate.start({SHELL: 4444})
    for i in range(5):
        gate.signal(where(f"127.0.0.{i + 10}"), 3, SIG)
    assert len(gate.open) == 2
    assert events.ids().count("scriptgen.gate.error") == 3
    assert not gate.allows(SHELL, "127.0.0.14")


def test_hostile_signals_are_ignored() -> None:
    bad = [
        "tcp/4444",
        {"opens": "tcp/4444; flush ruleset", "for": 5},
        {"opens": "tcp/4444", "for": "nan"},
        {"opens": "tcp/4444", "for": -1},
        {"opens": "tcp/99999", "for": 5},
        {"opens": ["tcp/4444"], "for": 5},
        {"opens": "tcp/4444", "for": 1e300},
    ]
    assert signal_targets(bad) == [(SHELL, 86400.0)]
    assert element_script("t", [(4444, "127.0.0.1; flush ruleset", 5.0)]) == ""


def test_gated_ports_come_from_the_models() -> None:
    m = Machine("tcp", 9139)
    m.new_state().signals = [*SIG, {"opens": "udp/53", "for": 3}]
    assert gated_ports([m, Machine("tcp", 4444)]) == {SHELL}


def test_setup_script_families() -> None:
    v4 = setup_script("sg", [4444], "127.0.0.1")
    assert "ip daddr 127.0.0.1 tcp dport 4444" in v4 and "ip6" not in v4
    anyv6 = setup_script("sg", [4444], "::")
    assert "@a4_4444" in anyv6 and "@a6_4444" in anyv6 and "daddr" not in anyv6


# --- the real kernel --------------------------------------------------------

KERNEL_CHECK = textwrap.dedent(
    """
    import socket, time
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock
    from scriptgen.emulate.eventlog import Endpoint
    from scriptgen.emulate.gate import Gate, run_nft

    class Events:
        def emit(self, *a, **k): pass

    def connect(src):
        c = socket.socket(); c.bind((src, 0)); c.settimeout(2)
        try:
            c.connect(("127.0.0.1", 4444)); return "open"
        except ConnectionRefusedError:
            return "refused"
        finally:
            c.close()

    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 4444)); srv.listen(16)
    gate = Gate(Events(), Clock(), None, table=TABLE, runner=lambda s: succeed(run_nft(s)))
    gate.start({("tcp", 4444): 4444})
    assert gate.kernel, "nft set-up failed"
    out = [connect("127.0.0.5"), connect("127.0.0.6")]
    gate.signal(Endpoint("tcp", "127.0.0.5", 1, "127.0.0.1", 9139, "s"), 1,
                [{"opens": "tcp/4444", "for": 1.0}])
    out += [connect("127.0.0.5"), connect("127.0.0.6")]
    time.sleep(1.3)
    out += [connect("127.0.0.5")]
    gate.stop()
    out += [connect("127.0.0.6")]
    print(" ".join(out))
    """
)


@pytest.mark.integration
def test_kernel_refuses_per_source_in_a_network_namespace() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespace, nftables)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"not installed: {tool}")
    ns = f"sgtest-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        code = f"TABLE = {('sg' + ns[-8:])!r}\n" + KERNEL_CHECK
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["refused", "refused", "open", "refused", "refused", "open"]
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
