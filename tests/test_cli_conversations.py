"""``scriptgen conversations``: table, -v, --json, filters, bad files, broken pipes."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

scapy_all = pytest.importorskip("scapy.all")
from scapy.all import IP, TCP, UDP, Ether, Raw, wrpcap  # noqa: E402

from scriptgen.cli import main  # noqa: E402
from scriptgen.trace.segment import Segment  # noqa: E402
from tests.test_tcp_reassembly import Wire  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def to_packet(s: Segment):
    """A scapy frame carrying one of our Segments."""
    ip = IP(src=".".join(map(str, s.src)), dst=".".join(map(str, s.dst)))
    if s.proto == 6:
        l4 = TCP(sport=s.sport, dport=s.dport, flags=s.flags, seq=s.seq, ack=s.ack, window=65535)
    else:
        l4 = UDP(sport=s.sport, dport=s.dport)
    p = Ether() / ip / l4
    if s.payload:
        p = p / Raw(s.payload)
    p.time = s.ts
    return p


def udp(ts: float, src: str, dst: str, sport: int, dport: int, data: bytes):
    p = Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(data)
    p.time = ts
    return p


def ftp_like_dialog() -> list[Segment]:
    w = Wire(t0=1700000000.0)
    w.handshake()
    w.send(1, b"220 hello\r\n")
    w.send(0, b"USER a\r\n")
    w.send(1, b"331 pw\r\n")
    w.send(0, b"\x00\x01binary data\xff")
    w.close(0)
    return w.segs


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    pkts = [to_packet(s) for s in ftp_like_dialog()]
    pkts += [
        udp(1700000001.0, "10.0.0.9", "10.0.0.53", 5353, 53, b"question"),
        udp(1700000001.1, "10.0.0.53", "10.0.0.9", 53, 5353, b"answer!"),
    ]
    path = tmp_path / "mixed.pcap"
    wrpcap(str(path), pkts)
    return path


def test_table_one_line_per_conversation(capture, capsys):
    assert main(["conversations", str(capture)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2, out
    tcp_line = next(line for line in lines if line.startswith("tcp"))
    assert "10.0.0.1:40000" in tcp_line and "-> 10.0.0.2:80" in tcp_line
    assert "closed" in tcp_line and "by=client" in tcp_line
    assert "msgs=4" in tcp_line and "c2s=22" in tcp_line and "s2c=19" in tcp_line
    assert "2023-11-14 22:13:20" in tcp_line  # start time, UTC
    udp_line = next(line for line in lines if line.startswith("udp"))
    assert "10.0.0.9:5353" in udp_line and "open" in udp_line and "msgs=2" in udp_line
    assert err == ""


def test_verbose_adds_message_lines_with_escaped_preview(capture, capsys):
    assert main(["conversations", "-v", "--proto", "tcp", str(capture)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tcp")
    msgs = out[1:]
    assert [m.split()[0] for m in msgs] == ["s2c", "c2s", "s2c", "c2s"]
    assert '"220 hello\\r\\n"' in msgs[0]
    assert '"\\x00\\x01binary data\\xff"' in msgs[3]
    assert all(line.isascii() for line in out)


def test_json_lines_round_trip_payloads(capture, capsys):
    assert main(["conversations", "--json", str(capture)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["protocol"] for r in rows) == ["tcp", "udp"]
    tcp = next(r for r in rows if r["protocol"] == "tcp")
    assert [bytes.fromhex(m["data"]) for m in tcp["messages"]] == [
        b"220 hello\r\n",
        b"USER a\r\n",
        b"331 pw\r\n",
        b"\x00\x01binary data\xff",
    ]
    assert tcp["outcome"] == "closed" and tcp["source"] == str(capture)
    udp_row = next(r for r in rows if r["protocol"] == "udp")
    assert udp_row["client"] == {"ip": "10.0.0.9", "port": 5353}


def test_port_and_proto_filters(capture, capsys):
    assert main(["conversations", "--port", "53", str(capture)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("udp")
    assert main(["conversations", "--port", "80", "--port", "53", str(capture)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["conversations", "--proto", "udp", "--port", "80", str(capture)]) == 0
    assert capsys.readouterr().out == ""


def test_udp_timeout_option_splits_flows(tmp_path, capsys):
    pkts = [udp(1000.0 + 10 * i, "10.0.0.9", "10.0.0.53", 5353, 53, b"q") for i in range(3)]
    path = tmp_path / "u.pcap"
    wrpcap(str(path), pkts)
    assert main(["conversations", "--udp-timeout", "5", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert [("timeout" in x, "open" in x) for x in lines] == [(True, False)] * 2 + [(False, True)]
    assert main(["conversations", str(path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_unreadable_files_one_line_each_and_exit_1(capture, tmp_path, capsys):
    garbage = tmp_path / "garbage.pcap"
    garbage.write_bytes(b"this is not a capture at all, just text\n" * 3)
    missing = tmp_path / "missing.pcap"
    status = main(["conversations", str(missing), str(capture), str(garbage)])
    out, err = capsys.readouterr()
    assert status == 1
    err_lines = err.splitlines()
    assert len(err_lines) == 2, err
    assert err_lines[0].startswith(f"scriptgen: {missing}: ")
    assert err_lines[1].startswith(f"scriptgen: {garbage}: ")
    assert "Traceback" not in err
    # the good file in the middle is still listed
    assert sum(1 for line in out.splitlines() if line.startswith(("tcp", "udp"))) == 2


def test_damaged_packets_warn_but_exit_0(tmp_path, capsys):
    good = [to_packet(s) for s in ftp_like_dialog()]
    broken = Ether() / IP(src="10.0.0.1", dst="10.0.0.2", proto=6) / Raw(b"\x01\x02\x03")
    broken.time = good[3].time
    path = tmp_path / "damaged.pcap"
    wrpcap(str(path), good[:4] + [broken] + good[4:])
    assert main(["conversations", str(path)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and "msgs=4" in out
    assert err.startswith(f"scriptgen: {path}: warning: 1 problem(s)")
    assert len(err.splitlines()) <= 2 + 5


def test_bad_udp_timeout_is_a_usage_error(capture, capsys):
    assert main(["conversations", "--udp-timeout", "0", str(capture)]) == 2
    assert capsys.readouterr().err.startswith("scriptgen:")


def write_many_udp_flows(path: Path, n: int) -> None:
    """A pcap of ``n`` one-datagram UDP flows, written directly (scapy is slow at this)."""
    template = bytes(
        Ether() / IP(src="10.0.0.1", dst="10.9.9.9") / UDP(sport=1024, dport=53) / Raw(b"x" * 40)
    )
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(n):
        frame = bytearray(template)
        frame[14 + 10 : 14 + 12] = b"\0\0"  # no IP checksum: the decoder does not need one
        frame[14 + 12 : 14 + 16] = bytes([10, 0, i // 250, i % 250 + 1])
        frame[34:36] = (1024 + i).to_bytes(2, "big")
        out.append(struct.pack("<IIII", 1000 + i, 0, len(frame), len(frame)) + bytes(frame))
    path.write_bytes(b"".join(out))


@pytest.mark.skipif(shutil.which("head") is None, reason="needs head(1)")
def test_broken_pipe_to_head_is_quiet(tmp_path):
    path = tmp_path / "many.pcap"
    write_many_udp_flows(path, 3000)
    proc = subprocess.run(
        f"{sys.executable} -m scriptgen conversations -v {path} | head -n 1",
        shell=True,
        capture_output=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.stdout.count(b"\n") == 1
    assert proc.stderr == b""
    listed = subprocess.run(
        [sys.executable, "-m", "scriptgen", "conversations", str(path)],
        capture_output=True,
        cwd=REPO,
        timeout=120,
    )
    assert listed.returncode == 0 and listed.stdout.count(b"\n") == 3000
