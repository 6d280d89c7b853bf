"""What the learner leaves unlearned, without real clients: one table per run.

    python benchmarks/learn_holdout.py               # every lab capture, default options
    python benchmarks/learn_holdout.py --min-cluster-size 1 --no-verbatim

For each committed lab capture (tests/data/captures/*.pcap) and each port
with dialogs:

* **bucketed**: train on every dialog with the given options, replay each
  one through the machine; how many stop at a bucket (a request no
  transition takes).
* **A→B differ**: train on the first half, then (incrementally) on the
  second half, and on both at once; dialogs the joint machine replays to
  the end and the incremental one does not.
* **held-out**: train on 30 of the 50 dialogs (every dialog whose index
  modulo 5 is 0, 2 or 4), replay the other 20: requests matched before the
  first unmatched one, of all held-out requests; dialogs replayed whole;
  and how close the answer of each state reached is to the answer the real
  server gave (mean normalised Indel similarity, 1.0 = identical: server
  ids and timestamps keep it below 1 even when the right state is reached).
* **train s**: wall time of training on the whole capture (all ports).

Nothing is written to disk; run it on an idle core for stable times.

Measured (2-core shared box): before verbatim leftovers and sibling merges
(5fed7f6) -> after, default options:

    capture         port     bucketed   held-out matched   whole    states
    dns             tcp/53     1 -> 0     5/6 -> 5/6        5 -> 5     5 -> 6
    dns             udp/53     0 -> 0    14/14 -> 14/14    14 -> 14   12 -> 12
    ftp             tcp/21    44 -> 0    62/161 -> 84/161   1 -> 4    36 -> 199
    lsarpc139       tcp/139   16 -> 0   193/286 -> 193/286  3 -> 3    61 -> 114
    lsass139        tcp/139    5 -> 0  1110/1182 -> same   34 -> 34  351 -> 409
    redis           tcp/6379  21 -> 0     6/30 -> 6/30      4 -> 4    15 -> 52
    smb139          tcp/139   33 -> 0   182/232 -> 182/232  1 -> 1    64 -> 172
    smb445          tcp/445   21 -> 0   173/248 -> 173/248  6 -> 6    73 -> 170

Verbatim transitions generalise nothing, so held-out matching only gains
where other runs repeat a request byte for byte (FTP commands).

Type-like answersplit (504e9f6) and small-cluster widths (57cec5d), from
e00c6b3; bucketed and A→B differ stay 0 everywhere:

    capture         port      held-out matched   answer sim       states
    dns             tcp/53     5/6 -> 5/6        0.790 -> 0.790    6 -> 8
    dns             udp/53    14/14 -> 14/14     0.699 -> 0.699   12 -> 12
    ftp             tcp/21    84/161 -> 84/161   0.996 -> 0.996  199 -> 199
    lsarpc139       tcp/139  193/286 -> 198/286  0.916 -> 0.915  114 -> 114
    lsass139        tcp/139 1110/1182 -> same    0.914 -> 0.914  409 -> 409
    redis           tcp/6379   6/30 -> 6/30      0.667 -> 0.759   52 -> 52
    smb139          tcp/139  182/232 -> 182/232  0.869 -> 0.894  172 -> 179
    smb445          tcp/445  173/248 -> 173/248  0.880 -> 0.891  170 -> 180

Tried and not kept (same table): folding fixed runs of up to 6 bytes in
clusters of fewer than 6 requests (chance-fixed islands such as a ``$6``
length) took redis to 12/30 but let SET and INCR share a transition and
lowered answer similarity (redis 0.563, smb139 0.870); up to 3 bytes gained
nothing and cost smb139 0.875.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from rapidfuzz.distance import Indel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scriptgen.learn.dialog import Dialog, group_dialogs  # noqa: E402
from scriptgen.learn.phases import LearnOptions, replay  # noqa: E402
from scriptgen.learn.regions import RegionOptions  # noqa: E402
from scriptgen.learn.trainer import TrainOptions, learn_machine  # noqa: E402
from scriptgen.model import Machine  # noqa: E402
from scriptgen.trace import read_conversations  # noqa: E402

CAPTURES = REPO / "tests" / "data" / "captures"
MIN_DIALOGS = 10  # ports with fewer (FTP passive data ports) are not listed


def train_on(key: tuple[str, int], dialogs: list[Dialog], options: TrainOptions) -> Machine:
    machine = Machine(*key)
    learn_machine(machine, dialogs, options)
    return machine


def accepted(machine: Machine, dialogs: list[Dialog]) -> set[str]:
    return {d.suffix.origin for d in dialogs if replay(machine, d.suffix)[1] is None}


def held_out(machine: Machine, dialogs: list[Dialog]) -> tuple[int, int, int, float]:
    """(requests matched before the first miss, requests, dialogs whole, mean answer similarity)."""
    matched = total = whole = 0
    sims: list[float] = []
    for d in dialogs:
        turns = d.suffix.turns
        total += len(turns)
        n, stop = replay(machine, d.suffix)
        matched += n
        whole += stop is None
        state = machine.states[machine.root]
        for turn in turns[:n]:
            hit = state.best_transition(turn.request)
            assert hit is not None
            state = machine.states[hit[0].target]
            sims.append(Indel.normalized_similarity(state.answer, turn.answer))
    return matched, total, whole, (sum(sims) / len(sims) if sims else 0.0)


def is_held_out(i: int) -> bool:
    return i % 5 in (1, 3)


def run(options: TrainOptions, names: list[str]) -> None:
    header = (
        f"{'capture':<16} {'port':<9} {'dialogs':>7} {'bucketed':>8} {'A→B differ':>11} "
        f"{'held-out matched':>17} {'whole':>6} {'answer sim':>10} {'states':>6} {'train s':>8}"
    )
    print(header)
    print("-" * len(header))
    for name in names:
        path = CAPTURES / name
        groups = group_dialogs(read_conversations(path))
        t0 = time.perf_counter()
        machines = {key: train_on(key, ds, options) for key, ds in groups.items()}
        elapsed = time.perf_counter() - t0
        for key in sorted(groups):
            dialogs = groups[key]
            if len(dialogs) < MIN_DIALOGS:
                continue
            machine = machines[key]
            stuck = len(dialogs) - len(accepted(machine, dialogs))
            half = len(dialogs) // 2
            inc = Machine(*key)
            learn_machine(inc, dialogs[:half], options)
            learn_machine(inc, dialogs[half:], options)
            differ = len(accepted(machine, dialogs) - accepted(inc, dialogs))
            train_set = [d for i, d in enumerate(dialogs) if not is_held_out(i)]
            test_set = [d for i, d in enumerate(dialogs) if is_held_out(i)]
            small = train_on(key, train_set, options)
            m, total, whole, sim = held_out(small, test_set)
            print(
                f"{name:<16} {key[0]}/{key[1]:<5} {len(dialogs):>7} {stuck:>8} {differ:>11} "
                f"{f'{m}/{total}':>17} {f'{whole}/{len(test_set)}':>6} {sim:>10.3f} "
                f"{len(machine.states):>6} {elapsed:>8.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-cluster-size", type=int, default=RegionOptions().min_cluster_size)
    parser.add_argument("--no-verbatim", action="store_true", help="no verbatim leftovers")
    parser.add_argument(
        "--region", action="append", default=[], metavar="NAME=VALUE", help="a RegionOptions field"
    )
    parser.add_argument("captures", nargs="*", help="file names under tests/data/captures")
    args = parser.parse_args()
    learn = LearnOptions()
    if args.no_verbatim:
        learn = replace(learn, verbatim=False)
    region = {"min_cluster_size": args.min_cluster_size}
    for item in args.region:
        name, _, text = item.partition("=")
        default = getattr(RegionOptions(), name)
        region[name] = (
            text.lower() in ("1", "yes", "true")
            if isinstance(default, bool)
            else (type(default)(text))
        )
    options = TrainOptions(learn=learn, region=RegionOptions(**region))
    names = args.captures or sorted(p.name for p in CAPTURES.glob("*.pcap"))
    run(options, names)


if __name__ == "__main__":
    main()
