"""Real FTP clients get their data through the emulator with content dependencies on.

vsftpd (passive ports drawn from a wide range, so nearly every run announces
another port) is captured under tcpdump while curl fetches a file and tnftp
lists the root; the capture is learned and served by ``twistd -n scriptgen``
on the same address with ``content_dependencies = true``. The passive answer
must name a port the emulator serves for that client: before ports drawn per
answer, content inference drew the port digits afresh (a port nobody served),
curl's data connection was refused, it fell back to PASV (unmatched) and
failed. Also: three sources at once each get their own port.

Real software, root (vsftpd, tcpdump): integration, skipped otherwise. Addresses
127.0.5.3 (server, then emulator) and 127.0.5.4-6 (clients).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path

import pytest

from scriptgen.learn import train
from scriptgen.model import load_model_dir
from tests.emulator_support import TWISTD, Emulator
from tests.lab import clients
from tests.lab.capture import Tcpdump, bpf_for
from tests.lab.clients import ClientResult, run_client
from tests.lab.servers import PUBLIC_FILES, FtpServer

ADDR = "127.0.5.3"
SOURCES = ("127.0.5.4", "127.0.5.5", "127.0.5.6")
PORT = 2121
PASV = (41000, 41999)
RUNS = 8  # of each client

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(TWISTD is None, reason="twistd not installed"),
    pytest.mark.skipif(
        any(shutil.which(b) is None for b in ("vsftpd", "tcpdump", "curl", "ftp")),
        reason="vsftpd, tcpdump, curl or ftp missing",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="vsftpd and tcpdump need root"),
]

CONFIG = """\
[scriptgen]
model_dir = {models}
listen = {addr}
ports = auto
events = {events}
reload_interval = 0
on_unmatched = close
content_dependencies = true
gate_mechanism = fallback
"""


def curl_from(source: str) -> ClientResult:
    argv = ["curl", "-sS", "--max-time", "15", "--interface", source]
    return run_client([*argv, f"ftp://{ADDR}:{PORT}/readme.txt"], timeout=20)


def listing(result: ClientResult) -> list[str]:
    """The directory lines tnftp printed (dates included: the capture's own)."""
    return [line for line in result.stdout.splitlines() if re.match(r"^[-d][rwx-]{9} ", line)]


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The model dir learned from the real server, and the listing tnftp got there."""
    tmp = tmp_path_factory.mktemp("dataport")
    pcap = tmp / "ftp.pcap"
    lists = []
    with FtpServer(ADDR, PORT, pasv_range=PASV), Tcpdump(pcap, bpf_for(ADDR, [PORT], [PASV])):
        for _ in range(RUNS):
            got = clients.curl_ftp(ADDR, PORT, "/readme.txt", timeout=15)
            assert (got.status, got.stdout) == (0, PUBLIC_FILES["readme.txt"].decode())
            lists.append(listing(clients.ftp_cli(ADDR, PORT, ["ls"], timeout=15)))
    assert all(lst == lists[0] for lst in lists) and any("readme.txt" in x for x in lists[0])
    models = tmp / "models"
    train([pcap], models)
    return models, lists[0]


def test_curl_and_tnftp_get_their_data_from_the_emulator(learned, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    models, real_listing = learned
    events = tmp_path / "events.json"
    config = CONFIG.format(models=models, addr=ADDR, events=events)
    with Emulator.start(tmp_path, config, events) as emu:
        got = curl_from(SOURCES[0])
        ls = clients.ftp_cli(ADDR, PORT, ["ls"], timeout=15)
        together: dict[str, ClientResult] = {}
        threads = [
            threading.Thread(target=lambda s=s: together.__setitem__(s, curl_from(s)))
            for s in SOURCES
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        readme = PUBLIC_FILES["readme.txt"].decode()
        assert (got.status, got.stdout) == (0, readme), got
        assert ls.status == 0 and listing(ls) == real_listing, ls.stdout[-800:]
        assert {s: (r.status, r.stdout) for s, r in together.items()} == {
            s: (0, readme) for s in SOURCES
        }
        # one per passive answer (the event log is written by a thread: wait for it)
        opened = emu.wait_count("scriptgen.gate.opened", 2 + len(SOURCES), timeout=10)
    drawn = [e for e in opened if e.get("drawn")]
    assert len(drawn) == len(opened)
    mine = [(e["src_ip"], e["port"]) for e in drawn if e["src_ip"] in SOURCES]
    assert {src for src, _ in mine} == set(SOURCES)
    assert len({port for _, port in mine}) == len(mine)  # a port per answer, per source
    # The model: the passive answers say where the port is spelt, and content
    # dependencies leave those bytes alone.
    machine = load_model_dir(models)[("tcp", PORT)]
    announcing = [s for s in machine.states.values() for g in s.signals if "announce" in g]
    assert announcing
    for state in announcing:
        (place,) = [g["announce"] for g in state.signals if "announce" in g]
        lo, hi = place["at"], place["at"] + place["len"]
        assert int(state.answer[lo:hi]) in range(PASV[0], PASV[1] + 1)
        for dep in state.dependencies:
            assert dep["at"] >= hi or dep["at"] + dep.get("len", dep.get("width", 0)) <= lo
