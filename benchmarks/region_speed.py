"""Region analysis speed: ``analyse()`` time and peak memory, and the alignment libraries.

    python benchmarks/region_speed.py            # full table (a few minutes on 2 busy cores)
    python benchmarks/region_speed.py --quick    # smaller sizes, for a smoke run

Part 1 times ``scriptgen.learn.regions.analyse`` on synthetic requests of a
few "commands", each a template with fixed bytes, fixed-width random ids
and a variable-length random argument, for 10/100/1000 requests of
100 B..4 KB. Peak memory is tracemalloc's (numpy reports its buffers to it).

Part 2 compares the libraries that can compute all pairwise distances of
printable ~1 KB messages (the issue's measurement: 200 messages) and one
alignment of two 4 KB messages. Only rapidfuzz has an all-pairs call; the
others run a Python loop over pairs, as region analysis would have to.
Libraries that are not installed are skipped with a note
(``pip install edlib parasail biopython`` to include them).
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from scriptgen.learn.regions import RegionOptions, analyse

PRINTABLE = bytes(range(32, 127))


def synthetic(n: int, size: int, rng: random.Random) -> list[bytes]:
    """``n`` requests of about ``size`` bytes from four command templates."""
    templates = []
    for k in range(4):
        body = bytes(rng.choice(PRINTABLE) for _ in range(max(8, size - 24)))
        templates.append((b"CMD%d " % k, body))
    out = []
    for _ in range(n):
        head, body = rng.choice(templates)
        ident = rng.randbytes(4)
        arg = bytes(rng.choice(PRINTABLE) for _ in range(rng.randrange(2, 12)))
        cut = len(body) // 2
        out.append(head + ident + body[:cut] + arg + body[cut:] + b"\r\n")
    return out


def measure(fn: Callable[[], object]) -> tuple[float, float]:
    """(seconds, peak MB) of one call."""
    tracemalloc.start()
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return elapsed, peak


def part1(counts: list[int], sizes: list[int]) -> None:
    print("## analyse() on synthetic requests (default RegionOptions)")
    print(
        f"{'requests':>8} {'size':>6} {'seconds':>8} {'peak MB':>8} {'clusters':>8} {'covered':>8}"
    )
    rng = random.Random(1)
    for n in counts:
        for size in sizes:
            samples = synthetic(n, size, rng)
            result: list = []
            secs, peak = measure(lambda s=samples, r=result: r.extend(analyse(s)))
            covered = sum(len(c.members) for c in result)
            print(f"{n:>8} {size:>6} {secs:>8.2f} {peak:>8.1f} {len(result):>8} {covered:>8}")


def all_pairs_rapidfuzz(msgs: list[bytes], scorer_name: str, workers: int) -> float:
    from rapidfuzz import process
    from rapidfuzz.distance import Indel, Levenshtein

    scorer = {"Indel": Indel, "Levenshtein": Levenshtein}[scorer_name].normalized_distance
    t0 = time.perf_counter()
    process.cdist(msgs, msgs, scorer=scorer, dtype=np.float32, workers=workers)
    return time.perf_counter() - t0


def pair_loop(msgs: list[bytes], one: Callable[[bytes, bytes], object]) -> float:
    t0 = time.perf_counter()
    for i in range(len(msgs)):
        for j in range(i + 1, len(msgs)):
            one(msgs[i], msgs[j])
    return time.perf_counter() - t0


def library_pair_functions() -> dict[str, Callable[[bytes, bytes], object] | str]:
    """Edit distance / global alignment score per library, or why it is skipped."""
    funcs: dict[str, Callable[[bytes, bytes], object] | str] = {}
    try:
        import edlib

        funcs["edlib (align, distance)"] = lambda a, b: edlib.align(a, b, task="distance")
    except ImportError:
        funcs["edlib (align, distance)"] = "not installed (pip install edlib)"
    try:
        import parasail

        matrix = parasail.matrix_create("".join(map(chr, PRINTABLE)), 1, -1)
        funcs["parasail (nw_scan_16)"] = lambda a, b: (
            parasail.nw_scan_16(a.decode("ascii"), b.decode("ascii"), 1, 1, matrix).score
        )
    except ImportError:
        funcs["parasail (nw_scan_16)"] = "not installed (pip install parasail)"
    try:
        from Bio import Align

        aligner = Align.PairwiseAligner(mode="global")
        funcs["Biopython (PairwiseAligner.score)"] = lambda a, b: aligner.score(
            a.decode("ascii"), b.decode("ascii")
        )
    except ImportError:
        funcs["Biopython (PairwiseAligner.score)"] = "not installed (pip install biopython)"
    return funcs


def library_align_functions() -> dict[str, Callable[[bytes, bytes], object] | str]:
    """A full alignment (path) of two messages per library."""
    from rapidfuzz.distance import Indel, Levenshtein

    funcs: dict[str, Callable[[bytes, bytes], object] | str] = {
        "rapidfuzz Levenshtein.opcodes": Levenshtein.opcodes,
        "rapidfuzz Indel.opcodes": Indel.opcodes,
    }
    try:
        import edlib

        funcs["edlib (align, path)"] = lambda a, b: edlib.align(a, b, task="path")
    except ImportError:
        funcs["edlib (align, path)"] = "not installed"
    try:
        import parasail

        matrix = parasail.matrix_create("".join(map(chr, PRINTABLE)), 1, -1)
        funcs["parasail (nw_trace_scan_16)"] = lambda a, b: (
            parasail.nw_trace_scan_16(a.decode("ascii"), b.decode("ascii"), 1, 1, matrix).traceback
        )
    except ImportError:
        funcs["parasail (nw_trace_scan_16)"] = "not installed"
    try:
        from Bio import Align

        aligner = Align.PairwiseAligner(mode="global")
        funcs["Biopython (PairwiseAligner.align)"] = lambda a, b: aligner.align(
            a.decode("ascii"), b.decode("ascii")
        )[0]
    except ImportError:
        funcs["Biopython (PairwiseAligner.align)"] = "not installed"
    return funcs


def part2(n: int, slow_n: int) -> None:
    rng = random.Random(2)
    msgs = synthetic(n, 1024, rng)
    msgs = [bytes(b if 32 <= b < 127 else 46 for b in m) for m in msgs]  # printable for parasail
    pairs = n * (n - 1) // 2
    print(f"\n## all pairs of {n} messages of ~1 KB ({pairs} pairs)")
    print(f"{'library':<40} {'seconds':>9}  note")
    for scorer in ("Indel", "Levenshtein"):
        for workers in (1, -1):
            secs = all_pairs_rapidfuzz(msgs, scorer, workers)
            print(
                f"{f'rapidfuzz cdist {scorer} workers={workers}':<40} {secs:>9.2f}  compiled all-pairs"
            )
    sub = msgs[:slow_n]
    scale = pairs / (slow_n * (slow_n - 1) // 2)
    for name, fn in library_pair_functions().items():
        if isinstance(fn, str):
            print(f"{name:<40} {'-':>9}  skipped: {fn}")
            continue
        secs = pair_loop(sub, fn) * scale
        print(f"{name:<40} {secs:>9.2f}  Python loop; measured on {slow_n}, scaled ×{scale:.1f}")
    a, b = synthetic(2, 4096, random.Random(3))
    a = bytes(x if 32 <= x < 127 else 46 for x in a)
    b = bytes(x if 32 <= x < 127 else 46 for x in b)
    print(f"\n## one alignment of two ~4 KB messages ({len(a)} and {len(b)} bytes)")
    print(f"{'library':<40} {'ms':>9}")
    for name, fn in library_align_functions().items():
        if isinstance(fn, str):
            print(f"{name:<40} {'-':>9}  skipped: {fn}")
            continue
        reps = 3
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(a, b)
        print(f"{name:<40} {(time.perf_counter() - t0) / reps * 1000:>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args()
    print(f"defaults: {RegionOptions().to_json()}\n")
    if args.quick:
        part1([10, 100], [100, 1000])
        part2(60, 20)
    else:
        part1([10, 100, 1000], [100, 1000, 4000])
        part2(200, 40)


if __name__ == "__main__":
    main()
