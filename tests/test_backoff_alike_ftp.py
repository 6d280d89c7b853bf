"""Alike back-off with real software: a command learned after ``PWD`` in one kind of
session is answered after ``PWD`` in another.

vsftpd is captured under tcpdump while tnftp runs two kinds of sessions, each
three times: A = ``cd pub; pwd; size /readme.txt`` and B = ``pwd; cd pub; pwd``.
The learned machine is a tree of positions: after B's second ``PWD`` it has no
``SIZE``, and none of the states that session passed has one. The emulator
(``twistd -n scriptgen``) then gets ``pwd; cd pub; pwd; size /readme.txt`` from
tnftp: with ``backoff_alike`` the request is read where ``PWD`` led in A, and
tnftp prints the size vsftpd gave; without it the request is unmatched and the
emulator closes (``on_unmatched = close``).

Real software, root (vsftpd, tcpdump): integration, skipped otherwise. Address
127.0.12.3 (server, then emulator).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from scriptgen.learn import train
from tests.emulator_support import TWISTD, Emulator
from tests.lab import clients
from tests.lab.capture import Tcpdump, bpf_for
from tests.lab.servers import PUBLIC_FILES, FtpServer

ADDR, PORT = "127.0.12.3", 2121
A = ["cd pub", "pwd", "size /readme.txt"]
B = ["pwd", "cd pub", "pwd"]
MIXED = ["pwd", "cd pub", "pwd", "size /readme.txt"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(TWISTD is None, reason="twistd not installed"),
    pytest.mark.skipif(
        any(shutil.which(b) is None for b in ("vsftpd", "tcpdump", "ftp")),
        reason="vsftpd, tcpdump or ftp missing",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="vsftpd and tcpdump need root"),
]

CONFIG = """\
[scriptgen]
model_dir = {models}
listen = {addr}
ports = tcp/{port}
events = {events}
reload_interval = 0
on_unmatched = close
backoff = true
backoff_alike = {alike}
gate_mechanism = fallback
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The model dir learned from vsftpd, and what tnftp printed for MIXED there."""
    tmp = tmp_path_factory.mktemp("alike")
    pcap = tmp / "ftp.pcap"
    with FtpServer(ADDR, PORT), Tcpdump(pcap, bpf_for(ADDR, [PORT], [])):
        for commands in [A, B] * 3:
            assert clients.ftp_cli(ADDR, PORT, commands, timeout=15).status == 0
    with FtpServer(ADDR, PORT):  # not captured: the real output for the mixed session
        real = clients.ftp_cli(ADDR, PORT, MIXED, timeout=15)
    size = str(len(PUBLIC_FILES["readme.txt"]))
    assert real.status == 0 and f"/readme.txt\t{size}" in real.stdout
    train([pcap], tmp / "models")
    return tmp / "models", size


@pytest.mark.parametrize("alike", [True, False])
def test_a_command_learned_after_pwd_elsewhere_is_answered(models, tmp_path: Path, alike) -> None:  # type: ignore[no-untyped-def]
    model_dir, size = models
    events = tmp_path / "events.json"
    config = CONFIG.format(
        models=model_dir, addr=ADDR, port=PORT, events=events, alike=str(alike).lower()
    )
    with Emulator.start(tmp_path, config, events):
        got = clients.ftp_cli(ADDR, PORT, MIXED, timeout=15)
        again = clients.ftp_cli(ADDR, PORT, B, timeout=15)  # what was learned still works
    assert again.status == 0 and "250 Directory successfully changed" in again.stdout
    if alike:
        assert got.status == 0 and f"/readme.txt\t{size}" in got.stdout, got.stdout[-600:]
    else:
        assert f"/readme.txt\t{size}" not in got.stdout
        assert "421" in got.stdout, got.stdout[-600:]  # unmatched: the emulator closed
