"""SMB2 dialogs with the logins a scanner tries, content dependencies on and off.

    python benchmarks/content_smb_logins.py [--train 40] [--test 30] [--only smbclient,rpcclient]
        [--logins guest,anonymous,unknown]

One fixed command per client (smbclient ``ls`` on ``//LABSRV/public``;
rpcclient ``lsaquery; lookupnames root`` over ``\\pipe\\lsarpc``), on port
445 (SMB2/3), the login drawn per run from ``--logins``: ``guest`` (-N: the
default user is unknown to smbd, which maps it to guest), ``anonymous``
(-U%), ``unknown`` (-U scanner%scanner: also guest). --train runs are
captured against the real smbd on 127.0.6.2, --test new runs (another seed)
are played against it too, then against the emulator on 127.0.6.1 (clients
name the server LABSRV and reach it with -I), with ``content_dependencies``
true and false. A run completes when the client exits as it did against the
real server, with nothing unmatched. Failed runs are grouped by the request
after which the client gave up and its error line.

Why the logins matter (benchmarks/smb_id_checks.py, docs/content-dependencies.md):
Samba's SMB2 client checks that the answer to its second session setup
carries the session id the server chose in the first, and it sends that id
back in its request. With dependencies the emulator copies it from the
request; without, both answers are templates, which agree only when they
come from the same training conversation. Consolidation takes, per state,
the smallest of its first 16 distinct answers, so one login kind alone gives
agreeing templates; mixed logins put the second session setup of each kind
in its own state, and the kinds whose smallest conversation is not the
first answer's smallest fail.

Needs root (port 445, tcpdump), smbd, smbclient, rpcclient, twistd.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.lsass_like import train  # noqa: E402
from benchmarks.smb_id_checks import EMU, NAME, REAL, Dialog, Outcome, play  # noqa: E402
from tests.lab.capture import Tcpdump, bpf_for  # noqa: E402
from tests.lab.clients import run_client  # noqa: E402
from tests.lab.servers import SambaServer  # noqa: E402

PORT = 445
LOGINS = {
    "guest": ["-N"],
    "anonymous": ["-U%"],
    "unknown": ["-U", "scanner%scanner"],
}
CLIENTS = {
    "smbclient": lambda login, addr: (
        ["smbclient", "-p", str(PORT), *login, f"//{NAME}/public"] + ["-I", addr, "-c", "ls"]
    ),
    "rpcclient": lambda login, addr: (
        ["rpcclient", "-p", str(PORT), *login, "-I", addr]
        + ["-c", "lsaquery; lookupnames root", NAME]
    ),
}


@dataclass(frozen=True)
class Run:
    """One client run: which client, which login; ``status`` as against the real server."""

    client: str
    login: str
    status: int = 0

    def argv(self, addr: str) -> list[str]:
        return CLIENTS[self.client](LOGINS[self.login], addr)


def draw(client: str, logins: list[str], n: int, seed: int) -> list[Run]:
    """``n`` runs of ``client``, logins drawn from ``logins`` (each appears at least once
    when n allows: a kind missing from the draw would not be measured)."""
    rng = random.Random(seed)
    kinds = logins * (n // len(logins)) + rng.sample(logins, n % len(logins))
    rng.shuffle(kinds)
    return [Run(client, k) for k in kinds]


def capture(train_runs: list[Run], test_runs: list[Run], pcap: Path) -> list[Run]:
    """Record the training runs; play the test runs against the real server for their status."""
    with SambaServer(REAL, port=PORT, netbios_port=0):
        with Tcpdump(pcap, bpf_for(REAL, [PORT])):
            for run in train_runs:
                run_client(run.argv(REAL), timeout=20)
        return [
            Run(r.client, r.login, run_client(r.argv(REAL), timeout=20).status) for r in test_runs
        ]


def play_runs(model_dir: Path, work: Path, runs: list[Run], deps: bool) -> list[Outcome]:
    """Every run against one emulator process. smb_id_checks.play repeats one dialog;
    here each run has its own login, so the dialog's argv takes the next run."""
    queue = list(runs)

    def next_argv(addr: str) -> list[str]:
        return queue.pop(0).argv(addr)

    return play(model_dir, work, Dialog("mixed", PORT, next_argv), deps, len(runs))


def completed(run: Run, out: Outcome) -> bool:
    return out.status == run.status and out.reason != "unmatched"


def report(client: str, runs: list[Run], deps: bool, outs: list[Outcome]) -> str:
    """One table row: completed per login kind, and where the others stopped."""
    kinds = sorted({r.login for r in runs})
    per_kind = []
    for k in kinds:
        pairs = [(r, o) for r, o in zip(runs, outs, strict=True) if r.login == k]
        per_kind.append(f"{k} {sum(completed(r, o) for r, o in pairs)}/{len(pairs)}")
    stops = Counter(
        (o.requests, o.error) for r, o in zip(runs, outs, strict=True) if not completed(r, o)
    )
    done = sum(completed(r, o) for r, o in zip(runs, outs, strict=True))
    where = "; ".join(f"{n}x after request {req}: {err or '-'}" for (req, err), n in stops.items())
    return (
        f"{client:9s}  {'on ' if deps else 'off'}   {done:3d}/{len(runs)}  "
        f"({', '.join(per_kind)})  {where}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=40)
    ap.add_argument("--test", type=int, default=30)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--only", default="smbclient,rpcclient")
    ap.add_argument("--logins", default="guest,anonymous,unknown")
    ap.add_argument("--work", type=Path, default=Path("/tmp/scriptgen-smb-logins"))
    args = ap.parse_args()
    logins = [k.strip() for k in args.logins.split(",") if k.strip()]
    print(f"train {args.train} runs, test {args.test} new runs, logins {logins}, port {PORT}")
    print("client     deps  completed  (per login)  failures: where they stopped")
    for client in [c.strip() for c in args.only.split(",") if c.strip()]:
        work = args.work / client
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        train_runs = draw(client, logins, args.train, args.seed)
        test_runs = capture(
            train_runs, draw(client, logins, args.test, args.seed + 1000), work / "train.pcap"
        )
        model_dir = work / "models"
        train(work / "train.pcap", model_dir)
        for deps in (True, False):
            outs = play_runs(model_dir, work / "emu", test_runs, deps)
            print(report(client, test_runs, deps, outs), flush=True)
    print(f"(emulator {EMU}, real server {REAL})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
