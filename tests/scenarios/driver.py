"""Capture, train and emulate the two session-dependency scenarios; prints a JSON summary.

Meant to run inside a network namespace the test created (own loopback, own
ports, own nftables), as root:

    ip netns exec NS python -m tests.scenarios.driver exploit --runs 20 --out DIR
    ip netns exec NS python -m tests.scenarios.driver ftp --runs 20 --out DIR

Phases: (1) the real server on 127.0.0.2 and ``runs`` real client runs,
captured with tests.lab's tcpdump wrapper; (2) ``scriptgen.learn.train`` on
the capture; (3) the emulator (``twistd -n scriptgen``) on 127.0.0.1 with the
learned models, and ``runs`` rounds in which a signalled source and a second
source that is not signalled use it at the same time. The summary says what
each client saw.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.emulator_support import Emulator
from tests.lab.capture import Tcpdump
from tests.lab.clients import DEFAULT_TIMEOUT, ClientResult, curl_ftp, ftp_cli, run_client
from tests.lab.daemon import wait_tcp
from tests.lab.servers import FtpServer
from tests.scenarios.exploit_client import probe

REPO = Path(__file__).resolve().parents[2]
REAL = "127.0.0.2"
EMU = "127.0.0.1"
EXPLOIT_PORT, SHELL_PORT = 9139, 4444
FTP_PORT, DATA_PORT = 2121, 41000


# --- phase 1: capture -------------------------------------------------------


def exploit_client(target: str, source: str, seed: int, hold: float = 0.0) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "tests.scenarios.exploit_client", "--target", target]
    argv += ["--source", source, "--seed", str(seed), "--hold", str(hold)]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 30.0) -> dict[str, Any]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    done = [x for x in lines if x.get("stage") == "done"]
    return done[-1] if done else {"ok": False, "error": f"no result (status {proc.returncode})"}


def capture_exploit(out: Path, runs: int) -> tuple[Path, list[dict]]:
    pcap = out / "exploit.pcap"
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.scenarios.exploit_server", "--addr", REAL],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    results = []
    try:
        wait_tcp(REAL, EXPLOIT_PORT, 10, server)
        bpf = f"host {REAL} and (port {EXPLOIT_PORT} or port {SHELL_PORT})"
        with Tcpdump(pcap, bpf):
            for i in range(runs):  # a different attacker address per run
                results.append(finish(exploit_client(REAL, f"127.0.1.{i + 1}", seed=i)))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
    return pcap, results


FTP_RUNS: list[tuple[str, dict[str, Any]]] = [
    ("curl", {"path": "/"}),
    ("curl", {"path": "/readme.txt"}),
    ("ftp", {"commands": ["ls"]}),
    ("curl", {"path": "/pub/"}),
    ("curl", {"path": "/notes.txt"}),
    ("ftp", {"commands": ["get readme.txt -"]}),
]


def ftp_ok(kind: str, kw: dict[str, Any], r: ClientResult) -> bool:
    """The client finished and printed the listing or the file."""
    if r.status != 0:
        return False
    if kind == "curl":
        return bool(r.stdout.strip())
    return "226" in r.stdout and "refused" not in r.stdout.lower()


def capture_ftp(out: Path, runs: int) -> tuple[Path, list[dict]]:
    pcap = out / "ftp.pcap"
    results = []
    with FtpServer(REAL, FTP_PORT, pasv_range=(DATA_PORT, DATA_PORT)):
        bpf = f"host {REAL} and (port {FTP_PORT} or port {DATA_PORT})"
        with Tcpdump(pcap, bpf):
            for i in range(runs):
                kind, kw = FTP_RUNS[i % len(FTP_RUNS)]
                if kind == "curl":
                    r = curl_ftp(REAL, FTP_PORT, kw["path"], user="anonymous", password="a@b.c")
                else:
                    r = ftp_cli(REAL, FTP_PORT, kw["commands"])
                results.append({"kind": kind, **kw, "ok": ftp_ok(kind, kw, r)})
    return pcap, results


# --- phase 2: train ---------------------------------------------------------


def train(pcap: Path, model_dir: Path) -> list[dict[str, Any]]:
    """Learn, and return every signal found in the saved models (from the files)."""
    from scriptgen.learn import train as learn
    from scriptgen.model import load_model_dir

    learn([pcap], model_dir)
    found = []
    for key, machine in sorted(load_model_dir(model_dir).items()):
        for sid, state in sorted(machine.states.items()):
            for sig in state.signals:
                found.append({"machine": f"{key[0]}/{key[1]}", "state": sid, **sig})
    return found


# --- phase 3: emulate -------------------------------------------------------

CONFIG = """\
[scriptgen]
model_dir = {models}
listen = {listen}
ports = {ports}
events = {events}
reload_interval = 0
request_settle = 0.1
on_unmatched = close
gate_mechanism = {gate}
[limits]
idle_timeout = 10
request_timeout = 5
session_timeout = 60
"""


def emulate(
    out: Path,
    models: Path,
    ports: str,
    rounds: int,
    one_round: Callable[[int], dict],
    gate: str = "auto",
) -> dict[str, Any]:
    events = out / "events.json"
    config = CONFIG.format(models=models, listen=EMU, ports=ports, events=events, gate=gate)
    with Emulator.start(out, config, events, timeout=20) as emu:
        ready = emu.wait_event("scriptgen.gate.ready", timeout=10)
        results = [one_round(i) for i in range(rounds)]
        expired = expiry_check(emu)
    ids = [e["eventid"] for e in emu.read_events()]
    return {
        "gate": {k: ready.get(k) for k in ("mechanism", "ports", "reason")},
        "rounds": results,
        "expired_closed_again": expired,
        "events": {i: ids.count(i) for i in sorted(set(ids)) if ".gate." in i},
    }


def expiry_check(emu: Emulator) -> bool | None:
    """After the last signal ran out, its source is refused again."""
    opened = [e for e in emu.read_events() if e["eventid"] == "scriptgen.gate.opened"]
    if not opened:
        return None
    last = opened[-1]
    port = int(last["port"].split("/")[1])
    deadline = time.monotonic() + float(last["seconds"]) + 10
    while time.monotonic() < deadline:
        if any(
            e["eventid"] == "scriptgen.gate.expired" and e["src_ip"] == last["src_ip"]
            for e in emu.read_events()
        ):
            return probe(EMU, port, last["src_ip"]) == "refused"
        time.sleep(0.2)
    return False


def exploit_round(i: int) -> dict[str, Any]:
    """Source X attacks; while X's shell is open, source Y (never signalled) probes it."""
    x, y = f"127.0.2.{i + 1}", f"127.0.3.{i + 1}"
    proc = exploit_client(EMU, x, seed=1000 + i, hold=0.3)
    other = None
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until X ran the sequence, then probe from Y
        if '"exploited"' in line:
            other = probe(EMU, SHELL_PORT, y)
            break
    result = finish(proc)
    return {
        "source": x,
        "before": result.get("before"),
        "after": result.get("after"),
        "other_source": y,
        "other_during": other,
        "ok": bool(result.get("ok")),
    }


def curl_from(source: str, path: str) -> ClientResult:
    url = f"ftp://{EMU}:{FTP_PORT}{path}"
    argv = ["curl", "-sS", "--max-time", str(DEFAULT_TIMEOUT), "--interface", source, url]
    return run_client(argv + ["--user", "anonymous:a@b.c"], timeout=DEFAULT_TIMEOUT + 5)


def ftp_round(i: int) -> dict[str, Any]:
    """Source X lists/fetches over passive FTP; source Y probes the data port meanwhile."""
    x, y = f"127.0.2.{i + 1}", f"127.0.3.{i + 1}"
    path = ("/", "/readme.txt", "/pub/", "/notes.txt")[i % 4]
    before = probe(EMU, DATA_PORT, x)
    r = curl_from(x, path)
    other = probe(EMU, DATA_PORT, y)
    after = probe(EMU, DATA_PORT, x)  # still inside X's signal window
    return {
        "source": x,
        "path": path,
        "before": before,
        "after": after,
        "other_source": y,
        "other_during": other,
        "curl_status": r.status,
        "curl_error": r.stderr.strip()[:200],
        "ok": r.status == 0 and bool(r.stdout.strip()),
    }


def ftp_cli_round(i: int) -> dict[str, Any]:
    """The ftp client (no source choice: 127.0.0.1) listing or fetching through the emulator."""
    cmds = (["ls"], ["get readme.txt -"])[(i // 4) % 2]
    r = ftp_cli(EMU, FTP_PORT, cmds)
    return {"kind": "ftp", "commands": cmds, "ok": ftp_ok("ftp", {}, r), "out": r.stdout[-300:]}


def summarise(name: str, captured: list[dict], signals: list[dict], emu: dict) -> dict[str, Any]:
    rounds = emu["rounds"]
    two_source = [
        r
        for r in rounds
        if r.get("before") == "refused"
        and r.get("after") == "open"
        and r.get("other_during") == "refused"
    ]
    return {
        "scenario": name,
        "capture_runs_ok": sum(bool(r.get("ok")) for r in captured),
        "capture_runs": len(captured),
        "signals": signals,
        "gate": emu["gate"],
        "emulated_runs_ok": sum(bool(r.get("ok")) for r in rounds),
        "emulated_runs": len(rounds),
        "refused_before_open_after_other_refused": len(two_source),
        "expired_closed_again": emu["expired_closed_again"],
        "gate_events": emu["events"],
        "extra": emu.get("extra"),
        "rounds": rounds,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("scenario", choices=("exploit", "ftp"))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gate", choices=("auto", "nftables", "fallback"), default="auto")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=False)
    models = out / "models"
    if args.scenario == "exploit":
        pcap, captured = capture_exploit(out, args.runs)
        signals = train(pcap, models)
        ports = f"tcp/{EXPLOIT_PORT}, tcp/{SHELL_PORT}"
        emu = emulate(out, models, ports, args.runs, exploit_round, args.gate)
    else:
        pcap, captured = capture_ftp(out, args.runs)
        signals = train(pcap, models)
        ports = f"tcp/{FTP_PORT}, tcp/{DATA_PORT}"

        def both(i: int) -> dict[str, Any]:
            r = ftp_round(i)
            if i % 4 == 3:  # now and then the ftp client too (not counted in rounds)
                extra.append(ftp_cli_round(i))
            return r

        extra: list[dict[str, Any]] = []
        emu = emulate(out, models, ports, args.runs, both, args.gate)
        emu["extra"] = extra
    summary = summarise(args.scenario, captured, signals, emu)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
