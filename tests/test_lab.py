"""Smoke tests of the real-software lab (tests/lab): each server starts, real
clients get the expected answers, captures hold the dialogs, and everything the
lab started is gone afterwards.

The servers bind to a random 127.0.x.y per session (not the lab's default
127.0.0.2), so these tests do not collide with a capture, a benchmark or a
teammate's test run on the same machine.
"""

from __future__ import annotations

import random
import secrets
from pathlib import Path

import pytest

from tests.conftest import require_binaries, require_root
from tests.lab import clients
from tests.lab.capture import Tcpdump, bpf_for
from tests.lab.daemon import LabError, _pids_matching
from tests.lab.hostsetup import FTP_PASSWORD, FTP_USER
from tests.lab.servers import PUBLIC_FILES, DnsServer, FtpServer, RedisServer, SambaServer
from tests.lab.variety import DRAWERS, draw_runs

SMOKE_ADDR = f"127.0.{secrets.randbelow(150) + 100}.{secrets.randbelow(250) + 2}"


@pytest.mark.integration
def test_ftp_anonymous_user_and_upload() -> None:
    require_root()
    require_binaries("vsftpd", "curl", "ftp")
    with FtpServer(SMOKE_ADDR, 2121, pasv_range=(41000, 41009)) as srv:
        listing = clients.curl_ftp(SMOKE_ADDR, 2121, "/")
        assert listing.status == 0 and "readme.txt" in listing.stdout
        missing = clients.curl_ftp(SMOKE_ADDR, 2121, "/no-such-file.txt")
        assert missing.status == 78  # RETR answered 550
        up = clients.curl_ftp(SMOKE_ADDR, 2121, "/upload/x.txt", FTP_USER, FTP_PASSWORD, b"hi\n")
        assert up.status == 0, up.stderr
        assert srv.tmp is not None and (srv.tmp / "home/upload/x.txt").read_bytes() == b"hi\n"
        anon_up = clients.curl_ftp(SMOKE_ADDR, 2121, "/upload/y.txt", upload=b"no\n")
        assert anon_up.status == 25  # anonymous STOR refused
        session = clients.ftp_cli(
            SMOKE_ADDR, 2121, ["pwd", "get notes.txt -"], FTP_USER, FTP_PASSWORD
        )
        assert "230" in session.stdout and PUBLIC_FILES["notes.txt"].decode() in session.stdout
        tmp = srv.tmp
    assert not tmp.exists()


@pytest.mark.integration
def test_redis_set_get() -> None:
    require_binaries("redis-server", "redis-cli")
    with RedisServer(SMOKE_ADDR, 6390):
        assert clients.redis_cli(SMOKE_ADDR, 6390, [["SET", "k:1", "v one"]]).stdout.strip() == "OK"
        got = clients.redis_cli(SMOKE_ADDR, 6390, [["GET", "k:1"]], repeat=2)
        assert got.stdout.split("\n")[:2] == ["v one", "v one"]


@pytest.mark.integration
def test_dnsmasq_udp_and_tcp() -> None:
    require_root()  # dnsmasq drops privileges to nobody
    require_binaries("dnsmasq", "dig")
    with DnsServer(SMOKE_ADDR, 5300):
        a = clients.dig(SMOKE_ADDR, 5300, "www.lab.test", options=["+short"])
        assert a.stdout.strip() == "192.0.2.10"
        mx = clients.dig(SMOKE_ADDR, 5300, "lab.test", "MX", tcp=True, options=["+short"])
        assert mx.stdout.strip() == "10 mail.lab.test."
        nx = clients.dig(SMOKE_ADDR, 5300, "nosuch.lab.test")
        assert "NXDOMAIN" in nx.stdout


@pytest.mark.integration
def test_samba_smb1_smb2_and_lsarpc_then_nothing_left() -> None:
    require_root()
    require_binaries("smbd", "smbclient", "rpcclient", "smbpasswd")
    with SambaServer(SMOKE_ADDR) as srv:
        ls1 = clients.smbclient(SMOKE_ADDR, 139)  # NT1 + NetBIOS session on 139
        assert ls1.status == 0 and "readme.txt" in ls1.stdout, ls1.stderr
        get2 = clients.smbclient(SMOKE_ADDR, 445, command="get docs\\guide.txt /dev/null")
        assert get2.status == 0, get2.stderr + get2.stdout
        shares = clients.smbclient(SMOKE_ADDR, 445, share=None)
        assert "public" in shares.stdout
        rpc = clients.rpcclient(SMOKE_ADDR, 139)
        assert rpc.status == 0 and "Domain Name: LABGROUP" in rpc.stdout, rpc.stderr
        tmp = str(srv.tmp)
        assert _pids_matching(tmp, None), "smbd should be running"
    # samba-dcerpcd and its rpcd_* workers are re-parented to PID 1: stop() must kill them too.
    leftovers = [p for p in _pids_matching(tmp, None) if not _is_zombie(p)]
    assert leftovers == []


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.integration
def test_tcpdump_captures_a_whole_dialog(tmp_path: Path) -> None:
    require_root()
    require_binaries("tcpdump", "redis-server", "redis-cli")
    from scriptgen.trace import Direction, read_conversations

    pcap = tmp_path / "r.pcap"
    with RedisServer(SMOKE_ADDR, 6391), Tcpdump(pcap, bpf_for(SMOKE_ADDR, [6391])):
        assert clients.redis_cli(SMOKE_ADDR, 6391, [["ECHO", "captured"]]).status == 0
    convs = [c for c in read_conversations(pcap) if c.protocol == "tcp"]
    assert len(convs) == 1
    assert b"captured" in convs[0].bytes_of(Direction.CLIENT)
    assert convs[0].bytes_of(Direction.SERVER) == b"$8\r\ncaptured\r\n"


def test_servers_refuse_non_loopback_addresses() -> None:
    with pytest.raises(LabError):
        RedisServer("0.0.0.0", 6379)
    with pytest.raises(LabError):
        SambaServer("192.0.2.1")


def test_variety_is_seeded_and_varied() -> None:
    for proto in DRAWERS:
        a, b = draw_runs(proto, 30, 7), draw_runs(proto, 30, 7)
        assert a == b, proto
        assert a != draw_runs(proto, 30, 8), proto
        assert len({r.describe() for r in a}) >= 10, proto  # not the same run over and over
    ftp = [r.describe() for r in draw_runs("ftp", 200, random.Random(1))]
    assert any("readme.txt" in d for d in ftp) and any("nope/" in d for d in ftp)
    assert any("curl_ftp" in d for d in ftp) and any("ftp_cli" in d for d in ftp)
    dns = draw_runs("dns", 200, 3)
    assert {r.kwargs["tcp"] for r in dns} == {True, False}
    assert {"A", "MX", "PTR", "SRV"} <= {r.kwargs["rtype"] for r in dns}


@pytest.mark.integration
def test_make_captures_small_run(tmp_path: Path) -> None:
    require_root()
    require_binaries("tcpdump", "redis-server", "redis-cli", "dnsmasq", "dig")
    from scriptgen.trace import read_conversations
    from tests.lab.make_captures import main

    assert (
        main(["--out", str(tmp_path), "--runs", "3", "--only", "redis,dns", "--addr", SMOKE_ADDR])
        == 0
    )
    assert len(list(read_conversations(tmp_path / "redis.pcap"))) == 3
    assert len(list(read_conversations(tmp_path / "dns.pcap"))) == 3
    assert len((tmp_path / "dns.runs.jsonl").read_text().splitlines()) == 3


def test_committed_run_logs_are_what_the_seed_draws(captures_dir: Path) -> None:
    """The README's command (seed 1, 50 runs) reproduces the runs of the committed captures."""
    import json

    from tests.lab.make_captures import protocol_seed

    for proto in DRAWERS:
        log = captures_dir / f"{proto}.runs.jsonl"
        logged = [json.loads(line)["run"] for line in log.read_text().splitlines()]
        drawn = [r.describe() for r in draw_runs(proto, len(logged), protocol_seed(1, proto))]
        assert logged == drawn, proto
