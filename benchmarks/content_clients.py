"""Real clients against the emulator, content dependencies on and off, side by side.

    python benchmarks/content_clients.py [--runs 30] [--only smb139,lsarpc139]

For each lab protocol served on port 139 (smbclient over SMB1, rpcclient over
``\\pipe\\lsarpc`` as the lab runs it): train on the committed capture
(tests/data/captures/<name>.pcap), draw new runs of the same lab client
(another seed), play them against the real server (for its exit status and
output), stop it, serve the model at the same address (the NetBIOS session
request names it) and play them again with ``content_dependencies`` true and
false. A run completes when the client exits as it did against the real
server and nothing was unmatched. Needs root (port 139), smbd, the clients,
twistd.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.lsass_like import EMU, REAL, serve_and_play  # noqa: E402
from tests.lab.protocols import PROTOCOLS  # noqa: E402
from tests.lab.variety import draw_runs  # noqa: E402

CAPTURES = REPO / "tests" / "data" / "captures"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--only", default="smb139,lsarpc139")
    ap.add_argument("--work", type=Path, default=Path("/tmp/scriptgen-content-clients"))
    args = ap.parse_args()
    print("protocol   deps  completed        same-output  requests answered (min/median/max)")
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        proto = PROTOCOLS[name]
        work = args.work / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        planned = draw_runs(name, args.runs, args.seed)
        runs = []
        with proto.make_server(REAL, proto.port):
            for run in planned:
                res = run.execute(REAL, proto.port)
                runs.append({"run": run, "status": res.status, "stdout": res.stdout})
        model_dir = work / "models"
        subprocess.run(
            [sys.executable, "-m", "scriptgen", "train", "--model-dir", str(model_dir)]
            + [str(CAPTURES / f"{name}.pcap")],
            check=True,
            capture_output=True,
            cwd=REPO,
        )

        def client(run: dict, port: int = proto.port) -> tuple[int, str]:
            res = run["run"].execute(EMU, port, timeout=10)
            return res.status, res.stdout

        for deps in (True, False):
            r = serve_and_play(model_dir, work, runs, deps, client=client, min_requests=1)
            req = sorted(r.requests or [0])
            print(
                f"{name:10s} {'on ' if deps else 'off'}   {r.completed:3d}/{len(runs)}"
                f" ({100 * r.completed / len(runs):5.1f} %)  {r.same_output:3d}"
                f"          {req[0]}/{req[len(req) // 2]}/{req[-1]}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
