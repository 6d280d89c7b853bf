"""The reference's LSASS-like long dialog: does a model trained on N runs carry new runs through?

    python benchmarks/lsass_like.py --train 60 20 --test 40 --work /tmp/lsass

1. Real smbd (SMB1 only for IPC: ``client ipc min/max protocol = NT1``,
   NetBIOS session service on 127.0.0.2:139) and rpcclient over
   ``\\pipe\\lsarpc``, anonymous, one command shape of ~31 requests
   (``lsaquery; lookupnames NAME; lookupsids S-1-5-32-RID; dsroledominfo;
   lsaquery``) with varied names and RIDs: max(--train) training runs are
   captured with tcpdump; --test further runs (another seed) are played
   against the real server too, for their expected output. The server is
   then stopped.
2. For each training size, ``scriptgen train`` on the first N connections.
3. The emulator (``twistd -n scriptgen``) serves the model on
   127.0.0.1:139, once with ``content_dependencies = true`` and once with
   ``false``; every test run is played against it, at the same address
   (the NetBIOS session request names the address the client was given).

A run *completes* when rpcclient exits as against the real server (0) and
the emulator answered at least 25 requests on its connection without an unmatched one; *same output* when
its stdout also equals the real server's (names map to SIDs, so a name the
training never saw gets the template's SID: completing is the measure).
Needs root (port 139, tcpdump), smbd, rpcclient, tcpdump, twistd.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.emulator_support import Emulator  # noqa: E402
from tests.lab.capture import Tcpdump, bpf_for  # noqa: E402
from tests.lab.clients import run_client  # noqa: E402
from tests.lab.servers import SambaServer  # noqa: E402

REAL = "127.0.0.2"
# The emulator takes the real server's address once that is stopped: the NetBIOS
# session request carries the called name (the address typed), fixed in training.
EMU = REAL
NAMES = ("root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "nobody")
NT1 = ["--option=client ipc min protocol=NT1", "--option=client ipc max protocol=NT1"]


def draw(rng: random.Random) -> str:
    name = rng.choice(NAMES)
    rid = rng.choice((544, 545, 546, 547, 548))
    return f"lsaquery; lookupnames {name}; lookupsids S-1-5-32-{rid}; dsroledominfo; lsaquery"


_PIDS = random.Random()
NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")


def scatter_pid() -> None:
    """Give the next client a random process id, when the kernel lets us.

    Real clients come from many hosts with unrelated process ids (SMB1 sends
    the pid in every request); runs started back to back on one box get
    consecutive pids, whose constant high byte region analysis would rightly
    learn as fixed, and a later test run would then not match.
    """
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
        NS_LAST_PID.write_text(str(_PIDS.randint(1000, max(1001, pid_max - 1000))))
    except (OSError, ValueError):
        pass


def rpcclient(addr: str, commands: str, timeout: float = 20.0) -> tuple[int, str]:
    scatter_pid()
    res = run_client(["rpcclient", "-p", "139", *NT1, "-U%", "-c", commands, addr], timeout=timeout)
    return res.status, res.stdout


def capture(
    work: Path, train: int, test: int, seed: int, addr: str = REAL
) -> tuple[Path, list[dict]]:
    """Training pcap (cached) and the test runs with the real server's answers (cached)."""
    pcap, tests_file = work / "train.pcap", work / "tests.json"
    if pcap.exists() and tests_file.exists():
        cached = json.loads(tests_file.read_text())
        if cached["train"] >= train and len(cached["runs"]) >= test and cached["seed"] == seed:
            return pcap, cached["runs"][:test]
    rng_train, rng_test = random.Random(seed), random.Random(seed + 1000)
    runs = []
    with SambaServer(addr, port=0, netbios_port=139):
        with Tcpdump(pcap, bpf_for(addr, [139])):
            for i in range(train):
                status, _ = rpcclient(addr, draw(rng_train))
                if status != 0:
                    print(f"training run {i} exited {status}", file=sys.stderr)
        for _ in range(test):
            commands = draw(rng_test)
            status, out = rpcclient(addr, commands)
            runs.append({"commands": commands, "status": status, "stdout": out})
    tests_file.write_text(json.dumps({"train": train, "seed": seed, "runs": runs}))
    return pcap, runs


def record(out: Path, name: str, runs: int, seed: int, addr: str) -> dict[str, object]:
    """Write ``out/<name>.pcap`` and ``out/<name>.runs.jsonl`` (tests/data/captures layout:
    connection *i* comes from run *i*) for ``runs`` training runs against smbd on ``addr``."""
    pcap, log = out / f"{name}.pcap", out / f"{name}.runs.jsonl"
    rng = random.Random(seed)
    statuses: dict[int, int] = {}
    with SambaServer(addr, port=0, netbios_port=139), Tcpdump(pcap, bpf_for(addr, [139])):
        with log.open("w") as fh:
            for i in range(runs):
                commands = draw(rng)
                scatter_pid()
                t0 = time.monotonic()
                argv = ["rpcclient", "-p", "139", *NT1, "-U%", "-c", commands, addr]
                res = run_client(argv, timeout=20)
                rec: dict[str, object] = {
                    "i": i,
                    "run": f"rpcclient(commands={commands!r}, ipc_protocol='NT1')",
                    "status": res.status,
                    "seconds": round(time.monotonic() - t0, 2),
                }
                if res.status != 0:
                    rec["stderr"] = res.stderr[-300:]
                fh.write(json.dumps(rec) + "\n")
                statuses[res.status] = statuses.get(res.status, 0) + 1
    return {"pcap": str(pcap), "bytes": pcap.stat().st_size, "runs": runs, "statuses": statuses}


def first_connections(pcap: Path, n: int, out: Path) -> Path:
    """The first ``n`` TCP connections of the capture (tshark -Y on stream numbers)."""
    subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", f"tcp.stream < {n}", "-w", str(out)],
        check=True,
        capture_output=True,
    )
    return out


def train(pcap: Path, model_dir: Path) -> None:
    """``scriptgen train`` into a fresh ``model_dir``."""
    shutil.rmtree(model_dir, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "scriptgen", "train", "--model-dir", str(model_dir), str(pcap)],
        check=True,
        capture_output=True,
        cwd=REPO,
    )


@dataclass
class Result:
    completed: int = 0
    same_output: int = 0
    requests: list[int] | None = None


def serve_and_play(
    model_dir: Path,
    work: Path,
    runs: list[dict],
    deps: bool,
    client: Callable[[dict], tuple[int, str]] | None = None,
    min_requests: int = 25,
    addr: str = EMU,
) -> Result:
    """Serve ``model_dir`` on ``addr``:139 and play ``runs``; ``client(run)`` -> (status, stdout)
    (default: rpcclient with the run's commands). A run completes when it exits as it
    did against the real server (``run["status"]``), with ``min_requests`` answered and
    nothing unmatched."""
    client = client or (lambda run: rpcclient(addr, run["commands"], timeout=10))
    events = work / f"events-{deps}.json"
    events.unlink(missing_ok=True)
    config = (
        f"[scriptgen]\nmodel_dir = {model_dir}\nlisten = {addr}\nports = tcp/139\n"
        f"events = {events}\nreload_interval = 0\nrequest_settle = 0.05\n"
        f"on_unmatched = close\ncontent_dependencies = {'true' if deps else 'false'}\n"
    )
    with Emulator.start(work, config, events, config_name=f"scriptgen-{deps}.ini"):
        result = Result(requests=[])
        for run in runs:
            before = _closed_sessions(events)
            status, out = client(run)
            time.sleep(0.1)
            closed = _closed_sessions(events)[len(before) :]
            answered = max((e.get("requests", 0) for e in closed), default=0)
            clean = all(e.get("reason") != "unmatched" for e in closed)
            result.requests.append(answered)
            if status == run["status"] and answered >= min_requests and clean:
                result.completed += 1
                result.same_output += out == run["stdout"]
        return result


def _closed_sessions(events: Path) -> list[dict]:
    out = []
    for line in events.read_text().splitlines():
        if '"scriptgen.session.closed"' in line:
            out.append(json.loads(line))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, nargs="+", default=[60, 20])
    ap.add_argument("--test", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/scriptgen-lsass"))
    ap.add_argument(
        "--record",
        type=Path,
        metavar="DIR",
        help="only record max(--train) runs as DIR/lsass139.pcap + .runs.jsonl and stop",
    )
    ap.add_argument(
        "--addr", default=REAL, help="real server address, then the emulator's (127.x only)"
    )
    args = ap.parse_args()
    if args.record is not None:
        args.record.mkdir(parents=True, exist_ok=True)
        print(json.dumps(record(args.record, "lsass139", max(args.train), args.seed, args.addr)))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    pcap, runs = capture(args.work, max(args.train), args.test, args.seed, args.addr)
    print(f"test runs: {len(runs)}, real server exit 0 in {sum(r['status'] == 0 for r in runs)}")
    print("train  deps  completed  same-output  requests answered (min/median/max)")
    for n in args.train:
        part = first_connections(pcap, n, args.work / f"train-{n}.pcap")
        model_dir = args.work / f"models-{n}"
        train(part, model_dir)
        for deps in (True, False):
            r = serve_and_play(model_dir, args.work, runs, deps, addr=args.addr)
            req = sorted(r.requests or [0])
            pct = 100 * r.completed / len(runs)
            print(
                f"{n:5d}  {'on ' if deps else 'off'}   {r.completed:3d}/{len(runs)} ({pct:5.1f} %)"
                f"  {r.same_output:3d}          {req[0]}/{req[len(req) // 2]}/{req[-1]}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
