"""Proxying UDP end to end: dnsmasq on 127.0.0.2:53 is the pool, dig asks the
emulator (twistd, udp) on 127.0.0.1, from an empty model. Every query is
relayed datagram by datagram and succeeds; after learning, with dnsmasq
stopped, queries of the same kind are answered by the emulator alone (with
the query's id: a content dependency)."""

from __future__ import annotations

import shutil
import time

import pytest

from scriptgen.trace import read_conversations
from tests.emulator_support import TWISTD
from tests.lab import clients
from tests.lab.servers import DnsServer
from tests.proxy_support import LISTEN, POOL, Emulator, start_emulator, stop_emulator, tracebacks

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(TWISTD is None, reason="twistd not installed"),
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq missing"),
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig missing"),
]

NAMES = ("www", "ftp", "mail")


def ask(emu: Emulator, name: str) -> list[str]:
    """dig one A question; the problems (empty: it succeeded)."""
    res = clients.dig(LISTEN, emu.ports["udp/53=0"], f"{name}.lab.test", "A", timeout=8)
    out = res.stdout
    problems = [] if res.status == 0 else [f"status {res.status}"]
    problems += [] if "status: NOERROR" in out else ["not NOERROR"]
    problems += [] if f";{name}.lab.test." in out else ["question not echoed"]
    problems += [w for w in ("mismatch", "timed out") if w in out]
    return [f"{name}: {p}: {out[-300:]!r}" for p in problems]


def test_dns_over_udp_proxied_then_emulated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    emu = start_emulator(tmp_path, "udp/53=0", expiry=1.0)
    loaded = emu.count("scriptgen.model.loaded")
    try:
        with DnsServer(POOL):
            assert [p for n in NAMES * 2 for p in ask(emu, n)] == []
            emu.wait_count("scriptgen.proxy.relaying", len(NAMES) * 2, timeout=10)
            report = emu.wait_count("scriptgen.proxy.learned", 1, timeout=120)[-1]
        assert report["new_transitions"] >= 1
        [rec] = (emu.spool / "learned").glob("*.pcap")
        convs = list(read_conversations(rec))
        assert len(convs) == 6 and all(c.protocol == "udp" and len(c.messages) == 2 for c in convs)
        emu.wait_served(loaded)
        allocated = emu.count("scriptgen.proxy.allocated")
        assert [p for n in NAMES for p in ask(emu, n)] == []  # dnsmasq is stopped
        time.sleep(0.5)
        assert emu.count("scriptgen.proxy.allocated") == allocated
    finally:
        stop_emulator(emu)
    assert tracebacks(emu) == []


def test_a_general_transition_from_one_query_goes_to_the_host(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """db three times, then ftp once: region analysis splits the recurring name off
    and keeps a general transition for the rest learned from ftp's query alone;
    its state's one answer carries ftp's query id, which dig rejects for any other
    query. Such a transition is doubted ([proxy] doubt_samples): www goes to
    dnsmasq and succeeds, and its answer is the second sample."""
    emu = start_emulator(tmp_path, "udp/53=0", expiry=1.0)
    loaded = emu.count("scriptgen.model.loaded")
    try:
        with DnsServer(POOL):
            assert [p for n in ("db", "db", "db", "ftp") for p in ask(emu, n)] == []
            emu.wait_count("scriptgen.proxy.learned", 1, timeout=120)
            emu.wait_served(loaded)
            mark = len(emu.read_events())
            assert ask(emu, "www") == []
            time.sleep(0.5)
        allocated = [
            e for e in emu.read_events()[mark:] if e["eventid"] == "scriptgen.proxy.allocated"
        ]
        assert [e["doubt"]["samples"] for e in allocated] == [1], allocated
        assert allocated[0]["doubt"]["general"] is True
    finally:
        stop_emulator(emu)
    assert tracebacks(emu) == []
