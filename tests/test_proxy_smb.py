"""Proxying SMB end to end (NetBIOS session service, SMB1, content
dependencies): smbd on 127.0.0.2:139 is the pool, smbclient lists the guest
share through the emulator (twistd) on 127.0.0.1, from an empty model. After
three proxied runs and online learning, with smbd stopped, smbclient lists
the same files from the emulator alone."""

from __future__ import annotations

import shutil
import time

import pytest

from tests.emulator_support import TWISTD
from tests.lab import clients
from tests.lab.servers import SambaServer
from tests.proxy_support import (
    LISTEN,
    POOL,
    Emulator,
    assert_emulated_alone,
    start_emulator,
    stop_emulator,
    tracebacks,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(TWISTD is None, reason="twistd not installed"),
    pytest.mark.skipif(shutil.which("smbd") is None, reason="smbd missing"),
    pytest.mark.skipif(shutil.which("smbclient") is None, reason="smbclient missing"),
]

TRAIN = 3


def listing(emu: Emulator) -> list[str]:
    """The names smbclient lists on the share (fails on an unsuccessful run)."""
    res = clients.smbclient(LISTEN, emu.ports["tcp/139=0"], command="ls", timeout=20)
    assert res.status == 0, res.stderr[-500:]
    names = [line.split()[0] for line in res.stdout.splitlines() if line.startswith("  ")]
    assert names, res.stdout
    return names


def test_smb_from_an_empty_model_proxied_then_emulated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    emu = start_emulator(tmp_path, "tcp/139=0", expiry=1.0)
    loaded = emu.count("scriptgen.model.loaded")
    try:
        with SambaServer(POOL, port=0, netbios_port=139):
            real = [listing(emu) for _ in range(TRAIN)]
            emu.wait_count("scriptgen.proxy.relaying", TRAIN, timeout=10)
            report = emu.wait_count("scriptgen.proxy.learned", 1, timeout=300)[-1]
        assert report["new_transitions"] >= 5
        emu.wait_served(loaded)
        mark = len(emu.read_events())
        alone = [listing(emu) for _ in range(2)]  # smbd is stopped
        assert alone == real[:2]
        time.sleep(0.5)
        assert_emulated_alone(emu, mark)
    finally:
        stop_emulator(emu)
    assert tracebacks(emu) == []
