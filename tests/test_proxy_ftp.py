"""Proxying FTP end to end (server speaks first): vsftpd on 127.0.0.2 is the
pool, tnftp talks to the emulator (twistd) on 127.0.0.1, from an empty model.

Every connection of a port whose machine never saw a conversation goes
straight to the pool host (the banner comes from the real server). After
learning, with vsftpd stopped, control-channel sessions of the same kind
(login, pwd, cd, size) are answered by the emulator alone. Data transfers
(ls, get) are left out: the real server's PASV answer names its own address,
so the client's data connection never passes through the emulator."""

from __future__ import annotations

import random
import re
import shutil
import time

import pytest

from tests.emulator_support import TWISTD
from tests.lab import clients
from tests.lab.servers import PUBLIC_FILES, FtpServer
from tests.proxy_support import LISTEN, POOL, Emulator, start_emulator, stop_emulator, tracebacks

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(TWISTD is None, reason="twistd not installed"),
    pytest.mark.skipif(shutil.which("vsftpd") is None, reason="vsftpd missing"),
    pytest.mark.skipif(shutil.which("ftp") is None, reason="ftp client missing"),
]

# what tnftp prints for login, pwd, cd, and size (a tab, then the size)
EXPECTED = ("230 Login successful", "Remote directory: /", "250 Directory successfully changed")
TRAIN = 6  # sessions through the proxy before the real server is stopped (docs/proxy.md)
SIZE = re.compile(r"^/\S+\t\d+$", re.M)
SIZES = re.compile(r"^/(\S+)\t(\d+)$", re.M)


# One kind of session with varying arguments (a wider variety needs more
# proxied runs before region analysis forms clusters: benchmarks/proxy_learning.py).
DIRS = ("pub", "docs")
FILES = sorted(f for f in PUBLIC_FILES if f.endswith(".txt"))


def session(rng: random.Random) -> list[str]:
    return ["pwd", f"cd {rng.choice(DIRS)}", f"size /{rng.choice(FILES)}"]


def run_all(emu: Emulator, rng: random.Random, n: int) -> list[str]:
    problems = []
    for _ in range(n):
        password = draw_password(rng)
        problems.append(run_one(emu, password, session(rng))[0])
    return [p for p in problems if p]


def draw_password(rng: random.Random) -> str:
    return f"{rng.choice(('ann', 'bob', 'carol'))}{rng.randint(0, 99)}@example.org"


def run_one(emu: Emulator, password: str, commands: list[str]) -> tuple[str, dict[str, int]]:
    """One tnftp session: what went wrong ("" if nothing) and the sizes it printed."""
    res = clients.ftp_cli(LISTEN, emu.ports["tcp/21=0"], commands, password=password, timeout=15)
    missing = [e for e in EXPECTED if e not in res.stdout]
    missing += [] if SIZE.search(res.stdout) else ["size"]
    sizes = {m.group(1): int(m.group(2)) for m in SIZES.finditer(res.stdout)}
    if res.status != 0 or missing:
        return f"status {res.status}, missing {missing}: {res.stdout[-400:]!r}", sizes
    return "", sizes


def test_ftp_from_an_empty_model_proxied_then_emulated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(3)
    emu = start_emulator(tmp_path, "tcp/21=0", expiry=1.0)
    loaded = emu.count("scriptgen.model.loaded")
    try:
        with FtpServer(POOL):
            assert run_all(emu, rng, TRAIN) == []
            emu.wait_count("scriptgen.proxy.relaying", TRAIN, timeout=10)
            report = emu.wait_count("scriptgen.proxy.learned", 1, timeout=120)[-1]
        assert report["new_transitions"] >= 4
        emu.wait_served(loaded)
        # vsftpd is stopped: what the client checks is answered by the emulator
        # alone (a request after them, e.g. QUIT on a path seen once, may still
        # be unmatched: its proxy attempt fails and the connection closes).
        assert run_all(emu, rng, 3) == []
    finally:
        stop_emulator(emu)
    assert tracebacks(emu) == []


def test_one_ftp_activity_is_answered_alone_after_at_most_3_proxied_sessions(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Issue 7's target for one activity (login with a varying password, pwd, cd to
    one of two directories, size of one of five files), learned after each
    proxied session as if the next came later. ``CWD docs`` / ``CWD pub`` are
    just past the clustering cut: they cluster only because their answers
    agree (regions._link_by_answers); without that each directory was its own
    exact transition: 4 proxied sessions here on the learner before it
    (benchmarks/proxy_runs.py seeds 1-3: 5, never within 10, 7 before;
    3, 3, 4 now). The sizes the real server gave come back from the emulator
    for every file proxied, not one learned size for all."""
    rng = random.Random(1)
    emu = start_emulator(tmp_path, "tcp/21=0", expiry=0.5)
    proxied, seen = 0, {}
    try:
        with FtpServer(POOL):
            for _ in range(5):
                relayed = emu.count("scriptgen.proxy.relaying")
                learned = emu.count("scriptgen.proxy.learned")
                loaded = emu.count("scriptgen.model.loaded")
                password = draw_password(rng)
                problem, sizes = run_one(emu, password, session(rng))
                assert problem == ""
                time.sleep(0.3)  # events are written asynchronously
                if emu.count("scriptgen.proxy.relaying") > relayed:
                    proxied += 1
                    seen.update(sizes)  # what the real server said
                    emu.wait_count("scriptgen.proxy.learned", learned + 1, timeout=120)
                    emu.wait_served(loaded)
        assert proxied <= 3
        assert len((emu.spool / "salt").read_bytes()) == 16  # online learning's secret
        relayed = emu.count("scriptgen.proxy.relaying")
        assert run_all(emu, rng, 4) == []  # vsftpd stopped: the emulator alone
        # Each file whose size was proxied keeps its own size (answersplit exceptions),
        # whichever directory the session is in; files of several sizes were seen.
        assert len(set(seen.values())) > 1, seen
        for name, size in sorted(seen.items()):
            for where in DIRS:
                commands = ["pwd", f"cd {where}", f"size /{name}"]
                problem, sizes = run_one(emu, draw_password(rng), commands)
                assert problem == "" and sizes == {name: size}, (name, where, sizes)
                assert size == len(PUBLIC_FILES[name])
        assert emu.count("scriptgen.proxy.relaying") == relayed
    finally:
        stop_emulator(emu)
    assert tracebacks(emu) == []
