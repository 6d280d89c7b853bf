"""Proxied fraction against the number of runs: how fast online learning takes over.

    python benchmarks/proxy_learning.py [--runs 60] [--seed 1] [--expiry 0.5]
                                        [--png docs/proxy_learning.png]
                                        [--listen 127.0.5.1] [--pool 127.0.5.2]
                                        [--set scriptgen.backoff=false] [--keep DIR]

From an *empty* model, the real client runs of the lab (``tests.lab.variety``,
redis-cli with one of ~30 command kinds and random values) are played one
after another against the emulator (twistd, 127.0.0.1) whose proxy pool is a
real redis-server on 127.0.0.2. A run is *proxied* when the emulator handed
it to the pool host (a ``scriptgen.proxy.relaying`` event for it), otherwise
*emulated*. After a proxied run the benchmark waits until the source expired
and its recording was learned, as if the next run came later (one source;
while a source is allocated all its connections go to the host).

Output: a table (proxied fraction per window of runs; per activity, the
number of proxied runs before the first emulated one) and a PNG of the
cumulative and windowed proxied fraction (matplotlib, if installed). An
emulated run counts as a success when redis-cli exits 0 without "Error"; the
benchmark cannot compare with the real answer of the same run (the server's
state moved on) exactly; it runs the same client once more against the real
server right after and reports whether redis-cli printed the same ("same as
real": a strict check -- counters and stored values legitimately differ).

``--set section.key=value`` adds config keys (repeatable), to measure an
option; ``--keep DIR`` keeps the event log, models and recordings there;
``--json FILE`` writes the per-run rows (and, per emulated run that printed
something else than the real server, the transitions its requests took) for
comparing two settings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.lab.servers import RedisServer  # noqa: E402
from tests.lab.variety import draw_runs  # noqa: E402
from tests.proxy_support import (  # noqa: E402
    LISTEN,
    POOL,
    Emulator,
    start_emulator,
    stop_emulator,
    tracebacks,
)


def kind(run) -> str:  # type: ignore[no-untyped-def]
    """An activity: the command and its number of arguments (``SET k v`` and
    ``SET k v EX n`` are different requests to learn), repeated (-r) or not."""
    cmd = run.kwargs["commands"][0]
    return f"{cmd[0]}/{len(cmd) - 1}" + (" -r" if run.kwargs.get("repeat") else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--expiry", type=float, default=0.5)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument("--listen", default=LISTEN, help="emulator address")
    ap.add_argument("--pool", default=POOL, help="address of the real redis-server (pool)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--keep", type=Path, default=None, help="copy events, models, spool here")
    ap.add_argument("--json", type=Path, default=None, help="write the per-run rows here")
    args = ap.parse_args(argv)
    extra: dict[str, dict[str, str]] = {"scriptgen": {}, "proxy": {}}
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        extra.setdefault(section, {})[name] = value
    runs = draw_runs("redis", args.runs, seed=args.seed)
    rows: list[tuple] = []  # index, kind, proxied, success, same output as the real server
    details: list[dict] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="proxy-learning-") as tmp, RedisServer(args.pool):
        emu = start_emulator(
            Path(tmp), "tcp/6379=0", expiry=args.expiry, pool=args.pool, listen=args.listen,
            scriptgen=extra["scriptgen"], **extra["proxy"],
        )  # fmt: skip
        port = emu.ports["tcp/6379=0"]
        try:
            for i, run in enumerate(runs):
                relaying = emu.count("scriptgen.proxy.relaying")
                learned = emu.count("scriptgen.proxy.learned")
                mark = len(emu.read_events())
                res = run.execute(args.listen, port, timeout=15)
                ok = res.status == 0 and "Error" not in res.stdout
                time.sleep(0.3)  # events are written asynchronously
                proxied = emu.count("scriptgen.proxy.relaying") > relaying
                same = None
                if not proxied:  # the same run against the real server, for comparison
                    real = run.execute(args.pool, 6379, timeout=15)
                    same = real.status == res.status and real.stdout == res.stdout
                    if not same:
                        details.append(_walk(emu, mark, i, run, res.stdout, real.stdout))
                rows.append((i, kind(run), proxied, ok, same))
                if proxied:
                    emu.wait_count("scriptgen.proxy.learned", learned + 1, timeout=300)
                    time.sleep(0.3)  # the reload that follows runs in a thread
                print(f"{i:>3} {kind(run):<12} {'proxied' if proxied else 'emulated':<9} "
                      f"{'ok' if ok else 'FAIL':<5} {'' if same is None else 'same' if same else 'differs'}",
                      flush=True)  # fmt: skip
        finally:
            stop_emulator(emu)
            if args.keep:
                shutil.copytree(tmp, args.keep, dirs_exist_ok=True)
        problems = tracebacks(emu)
    report(rows, args.window, time.monotonic() - started, problems)
    if args.json:
        args.json.write_text(json.dumps({"settings": args.set, "rows": rows, "differs": details}))
    if args.png:
        plot(rows, args.window, args.png)
    return 0


def _walk(emu: Emulator, mark: int, i: int, run, got: str, real: str) -> dict:  # type: ignore[no-untyped-def]
    """What an emulated run that printed something else went through: its matched
    requests (state, transition, target) and unmatched ones, for finding causes."""
    steps = []
    for e in emu.read_events()[mark:]:
        if e["eventid"] == "scriptgen.request.matched":
            steps.append((e["state"], e["transition"], e["target"], _text(e.get("request"))))
        elif e["eventid"] == "scriptgen.request.unmatched":
            steps.append((e["state"], "unmatched", e["reason"], _text(e.get("request"))))
    return {"run": i, "kind": kind(run), "command": run.kwargs["commands"][0],
            "repeat": run.kwargs.get("repeat"), "got": got[:200], "real": real[:200],
            "steps": steps}  # fmt: skip


def _text(hexed: str | None) -> str:
    try:
        return bytes.fromhex(hexed or "")[:60].decode("latin-1")
    except ValueError:
        return ""


def report(rows: list[tuple], window: int, seconds: float, tb: list) -> None:
    n = len(rows)
    print(f"\n{n} redis-cli runs from an empty model, {seconds:.0f} s, tracebacks: {len(tb)}")
    print(f"{'runs':<10} {'proxied':>8} {'emulated ok':>12} {'same as real':>13}")
    for lo in range(0, n, window):
        part = rows[lo : lo + window]
        prox = sum(r[2] for r in part)
        emu_ok = sum(1 for r in part if not r[2] and r[3])
        emu_n = sum(1 for r in part if not r[2])
        same = sum(1 for r in part if not r[2] and r[4])
        print(
            f"{lo + 1:>3}-{lo + len(part):<6} {prox / len(part):>8.0%} {emu_ok:>6}/{emu_n:<5}"
            f" {same:>7}/{emu_n:<5}"
        )
    proxied_ok = sum(1 for r in rows if r[2] and r[3])
    print(f"proxied runs that succeeded: {proxied_ok}/{sum(r[2] for r in rows)}")
    per: dict[str, list[tuple]] = defaultdict(list)
    for r in rows:
        per[r[1]].append(r)
    print(f"\n{'activity':<12} {'runs':>4} {'proxied':>7} {'proxied before 1st emulated':>28}"
          f" {'proxied before 1st emulated = real':>35}")  # fmt: skip
    for k, seq in sorted(per.items()):
        print(f"{k:<12} {len(seq):>4} {sum(r[2] for r in seq):>7}"
              f" {_before(seq, lambda r: not r[2]):>28} {_before(seq, lambda r: not r[2] and r[4]):>35}")  # fmt: skip
    emulated = sum(1 for r in rows if not r[2])
    right = sum(1 for r in rows if not r[2] and r[4])
    print(f"\nemulated runs: {emulated}, of which output = real: {right}")


def _before(seq: list[tuple], hit: Callable[[tuple], bool]) -> str:
    """Proxied runs of an activity before its first run that ``hit`` accepts."""
    for n, r in enumerate(seq):
        if hit(r):
            return str(sum(x[2] for x in seq[:n]))
    return f"(never; {len(seq)} runs)"


def plot(rows: list[tuple], window: int, png: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG")
        return
    xs = [r[0] + 1 for r in rows]
    cum, total = [], 0
    for i, r in enumerate(rows, start=1):
        total += r[2]
        cum.append(total / i)
    win = [sum(r[2] for r in rows[max(0, i - window) : i]) / min(i, window) for i in xs]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(xs, win, label=f"proxied fraction, last {window} runs")
    ax.plot(xs, cum, label="proxied fraction, cumulative", linestyle="--")
    right = [
        sum(1 for r in rows[max(0, i - window) : i] if not r[2] and r[4]) / min(i, window)
        for i in xs
    ]
    ax.plot(xs, right, label=f"emulated, output = real server's, last {window} runs", linestyle=":")
    ax.scatter(xs, [1.02 if r[2] else -0.02 for r in rows], s=6, c="grey", label="each run")
    ax.set_xlabel("run (redis-cli, lab variety, from an empty model)")
    ax.set_ylabel("fraction of runs")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100, bbox_inches="tight")
    print(f"wrote {png}")


if __name__ == "__main__":
    raise SystemExit(main())
