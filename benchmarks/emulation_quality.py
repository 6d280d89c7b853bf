"""Emulation quality: do real clients finish their dialogs against the emulator?

    python benchmarks/emulation_quality.py [--protocols ftp,redis,dns,smb139,smb445,lsarpc139]
        [--train-runs 50] [--test-runs 20] [--seed S] [--addr 127.0.0.2] [--json OUT]
        [--option KEY=VALUE ...] [--deps both|on|off] [--no-repeat-real] [--work DIR]
        [--train-option FLAG=VALUE ...] [--reuse] [--scriptgen-root DIR] [--client-timeout S]

Per protocol (issue 4, "Must show"):

1. start the real server (tests/lab) on ADDR and its lab port;
2. capture ``--train-runs`` client runs drawn with varied arguments
   (tests/lab/variety.py, seeded) under tcpdump;
3. play ``--test-runs`` NEW runs drawn the same way (another seed) against the
   real server and keep each run's output and exit status;
4. (unless ``--no-repeat-real``) restart the real server, replay the training
   runs without capture and the test runs again: the real-vs-real match rate
   is the ceiling, and it shows which output differences are noise;
5. train (``scriptgen train``), stop the real server, serve the model with
   ``twistd -n scriptgen`` on the same ADDR and port, play the same test runs
   against it, once per emulator configuration (``content_dependencies``
   true and false when etc/scriptgen.ini.dist has that key);
6. a run matches when its normalised output (stdout and stderr) and exit
   status equal the real server's. The normalisations (below, ``NOISE``) only
   remove what differs between two runs against the same real server.

For a failed run the table names the first differing output line and what
the emulator's event log says about that run's sessions (requests matched,
where and why a request was unmatched).

``--reuse`` keeps the capture and real outcomes of an earlier run in --work
(same addr, run counts, seed) and only retrains and replays: with
``--scriptgen-root`` (an export of another commit, e.g. ``git archive``) it
measures a learner or emulator change before/after on the same data.
Results and failure analysis: docs/emulation-quality.md.

Needs root (ports < 1024, tcpdump, useradd), the lab's servers and clients
and twistd. Protocol knowledge (the normalisations) lives here, never in
scriptgen/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.emulator_support import Emulator, read_events  # noqa: E402
from tests.lab.clients import ClientResult  # noqa: E402
from tests.lab.daemon import DEFAULT_ADDR  # noqa: E402
from tests.lab.make_captures import play_runs, protocol_seed  # noqa: E402
from tests.lab.protocols import PROTOCOLS, LabProtocol  # noqa: E402
from tests.lab.variety import ClientRun, draw_runs  # noqa: E402

INI_DIST = REPO / "etc" / "scriptgen.ini.dist"
TEST_SEED_OFFSET = 7_919  # test runs: another seed than the training runs, drawn the same way

# -- normalisation -------------------------------------------------------------
# (protocol or "*", pattern, replacement, why). Each was chosen by diffing two
# runs of the same arguments against the same real server (step 4 above).
NOISE: list[tuple[str, str, str, str]] = [
    ("dns", r";; Query time: \d+ msec", ";; Query time: N msec", "dig timing"),
    ("dns", r";; WHEN: .*", ";; WHEN: <date>", "dig prints the wall clock"),
    ("dns", r"; COOKIE: [0-9a-f]+.*", "; COOKIE: <cookie>", "client cookie is random per query"),
    ("dns", r"(->>HEADER<<-.*), id: \d+", r"\1, id: <id>", "dig picks a random query id"),
    (
        "dns",
        r";; SERVER: .*",
        ";; SERVER: <server>",
        "same server either way; kept out so a port-0 emulator would compare",
    ),
    (
        "ftp",
        r"\b(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d ( \d{4}|\d\d:\d\d)",
        "<date>",
        "listing dates are the files' mtimes: the lab writes the tree afresh per server start",
    ),
    (
        "ftp",
        r"\d+ bytes (received|sent) in [\d.:]+ (seconds )?\([^)]*\)",
        r"N bytes \1 in <time>",
        "tnftp transfer figures (time and rate)",
    ),
    ("ftp", r"\(127,\d+,\d+,\d+,\d+,\d+\)", "(<pasv>)", "vsftpd picks a random passive port"),
    ("ftp", r"\|\|\|\d+\|", "|||<port>|", "EPSV port is random too"),
    (
        "ftp",
        r"/tmp/sglab-vsftpd-[A-Za-z0-9_]+",
        "<labdir>",
        "the lab server's home is a fresh temp dir per start (PWD, MKD answers)",
    ),
    (
        "smb",
        r"\d+ blocks of size \d+\. \d+ blocks available",
        "<blocks>",
        "free disk space changes between runs",
    ),
    (
        "smb",
        r"(?m)^(  \S.*?\s+[ADHNRS]*\s+\d+\s+)\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$",
        r"\1<mtime>",
        "smbclient ls shows mtimes of files written per server start",
    ),
    (
        "smb",
        r"\([\d.]+ KiloBytes/sec\)( \(average (-?[\d.]+|-?inf|-?nan) KiloBytes/sec\))?",
        "(<rate>)",
        "smbclient get prints the transfer rate",
    ),
    (
        "smb",
        r"(?m)^(create_time|access_time|write_time|change_time):.*$",
        r"\1: <time>",
        "allinfo file times (files written per server start)",
    ),
    (
        "smb",
        r"(?m)^(attributes|stream):.*$",
        r"\1: <x>",
        "allinfo stream and attribute lines carry sizes per start",
    ),
    (
        "smb",
        r"S-1-5-21-\d+-\d+-\d+",
        "S-1-5-21-<domain>",
        "Samba makes a random domain SID per fresh private dir (per server start)",
    ),
    ("*", r"\[killed after [\d.]+s\]", "[killed]", "our own client timeout differs per run"),
]


def family(protocol: str) -> str:
    """smb139, smb445 and lsarpc139 share smbclient/rpcclient noise."""
    return "smb" if protocol.startswith(("smb", "lsarpc")) else protocol


def normalise(protocol: str, text: str) -> str:
    fam = family(protocol)
    for proto, pattern, repl, _why in NOISE:
        if proto in ("*", fam):
            text = re.sub(pattern, repl, text)
    return text


def first_difference(a: str, b: str) -> str:
    """The first line where two outputs differ, as 'line N: real | emulated'."""
    la, lb = a.splitlines(), b.splitlines()
    for i in range(max(len(la), len(lb))):
        x = la[i] if i < len(la) else "<end>"
        y = lb[i] if i < len(lb) else "<end>"
        if x != y:
            return f"line {i + 1}: {x[:70]!r} | {y[:70]!r}"
    return ""


# -- results ------------------------------------------------------------------
@dataclass
class Outcome:
    status: int
    out: str  # normalised stdout + stderr
    seconds: float

    @classmethod
    def of(cls, protocol: str, res: ClientResult, seconds: float) -> Outcome:
        text = res.stdout + "\n--stderr--\n" + res.stderr
        return cls(res.status, normalise(protocol, text), round(seconds, 2))


@dataclass
class RunCheck:
    run: str
    matched: bool
    real_status: int
    emu_status: int
    difference: str = ""  # first differing output line
    dialog: str = ""  # the emulator's view: matched requests, unmatched state/reason


@dataclass
class Variant:
    name: str  # e.g. "deps on"
    options: dict[str, str]
    matched: int = 0
    total: int = 0
    runs: list[RunCheck] = field(default_factory=list)
    requests_matched: int = 0
    unmatched: int = 0
    seconds: float = 0.0


@dataclass
class ProtocolResult:
    protocol: str
    port: int
    train_runs: int
    test_runs: int
    train_statuses: dict[str, int] = field(default_factory=dict)
    real_statuses: dict[str, int] = field(default_factory=dict)
    real_again: int | None = None  # test runs whose repeat against a fresh real server matched
    seen: int = 0  # test runs whose exact arguments were also among the training runs
    real_again_diffs: list[str] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    variants: list[Variant] = field(default_factory=list)
    error: str = ""


# -- steps --------------------------------------------------------------------
def timed_runs(runs: Sequence[ClientRun], addr: str, port: int, timeout: float) -> list[Any]:
    """(result, start, end) per run, played one after the other."""
    out = []
    for run in runs:
        t0 = time.time()
        res = run.execute(addr, port, timeout=timeout)
        out.append((res, t0, time.time()))
    return out


def count_statuses(results: Sequence[ClientResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        counts[str(r.status)] = counts.get(str(r.status), 0) + 1
    return dict(sorted(counts.items()))


def train_model(
    pcap: Path, model_dir: Path, extra: Sequence[str] = (), root: Path = REPO
) -> dict[str, Any]:
    """``scriptgen train`` in a subprocess (as a user would run it); returns model counts."""
    cmd = [sys.executable, "-m", "scriptgen", "train", "-q", "--model-dir", str(model_dir)]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([*cmd, *extra, str(pcap)], check=True, capture_output=True, cwd=root, env=env)
    counts: dict[str, Any] = {}
    for f in sorted(model_dir.glob("*.json")):
        data = json.loads(f.read_text())
        states = data.get("states", [])
        trans = sum(len(s.get("transitions", [])) for s in states)
        counts[f.stem] = {"states": len(states), "transitions": trans}
    return counts


def ini_sections() -> dict[str, str]:
    """key -> section of every key documented in etc/scriptgen.ini.dist."""
    keys: dict[str, str] = {}
    section = ""
    for line in INI_DIST.read_text().splitlines():
        m = re.match(r"\[(\w+)\]", line)
        if m:
            section = m[1]
            continue
        m = re.match(r"(\w+)\s*=", line)
        if m and section:
            keys[m[1]] = section
    return keys


def emulator_config(
    model_dir: Path, addr: str, events: Path, options: dict[str, str], table: str
) -> str:
    """An ini for the emulator: the lab's address, every learned port, our overrides."""
    sections = ini_sections()
    values: dict[str, dict[str, str]] = {
        "scriptgen": {
            "model_dir": str(model_dir),
            "listen": addr,
            "ports": "auto",
            "events": str(events),
            "reload_interval": "0",
            "on_unmatched": "close",  # a silent emulator only makes clients wait for their timeout
            "gate_table": table,  # teammates may run emulators with the default table
        },
    }
    for key, value in options.items():
        section = sections.get(key)
        if section is None:
            raise SystemExit(f"--option {key}: not a key of {INI_DIST.name}")
        values.setdefault(section, {})[key] = value
    lines = []
    for section, kv in values.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v}" for k, v in kv.items() if k in sections]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def emulator(
    model_dir: Path, addr: str, work: Path, options: dict[str, str], root: Path = REPO
) -> Iterator[Path]:
    """``twistd -n scriptgen`` on ``addr``; yields the events file; stops it by its pid."""
    work.mkdir(parents=True, exist_ok=True)
    events = work / "events.json"
    events.unlink(missing_ok=True)
    config = emulator_config(model_dir, addr, events, options, f"sgq{os.getpid()}")
    with Emulator.start(work, config, events, root=root, timeout=60) as emu:
        errors = [e for e in emu.read_events() if e["eventid"] == "scriptgen.port.error"]
        if errors:
            raise RuntimeError(f"emulator could not bind: {errors[0]}")
        yield events


def _epoch(ts: str) -> float:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def sessions_between(events: list[dict[str, Any]], t0: float, t1: float) -> list[dict[str, Any]]:
    """Per session that connected during [t0, t1]: its requests and how it stopped."""
    ids = [
        e["session"]
        for e in events
        if e["eventid"] == "scriptgen.session.connect" and t0 <= _epoch(e["timestamp"]) <= t1
    ]
    out = []
    for sid in ids:
        mine = [e for e in events if e.get("session") == sid]
        matched = [e for e in mine if e["eventid"] == "scriptgen.request.matched"]
        unmatched = [e for e in mine if e["eventid"] == "scriptgen.request.unmatched"]
        closed = next((e for e in mine if e["eventid"] == "scriptgen.session.closed"), None)
        port = mine[0].get("dst_port")
        out.append(
            {
                "port": f"{mine[0].get('protocol')}/{port}",
                "matched": len(matched),
                "path": [e["target"] for e in matched],
                "unmatched": [
                    {
                        "state": u["state"],
                        "reason": u["reason"],
                        "request": bytes.fromhex(u["request"])[:60].decode(errors="replace"),
                    }
                    for u in unmatched
                ],
                "closed": closed.get("reason") if closed else None,
            }
        )
    return out


def describe_sessions(sessions: list[dict[str, Any]]) -> str:
    parts = []
    for s in sessions:
        text = f"{s['port']}: {s['matched']} matched"
        for u in s["unmatched"][:1]:
            text += f", unmatched at state {u['state']} ({u['reason']}) {u['request'][:40]!r}"
        if s["closed"] and not s["unmatched"]:
            text += f", {s['closed']}"
        parts.append(text)
    return "; ".join(parts) if parts else "no session reached the emulator"


# -- one protocol ----------------------------------------------------------------
def real_phase(
    proto: LabProtocol,
    addr: str,
    train: Sequence[ClientRun],
    test: Sequence[ClientRun],
    work: Path,
    repeat_real: bool,
    client_timeout: float,
    key: dict[str, Any],
) -> None:
    """Capture the training runs, play the test runs (twice with ``repeat_real``, the
    second time on a fresh server that saw the training runs again); save to real.json."""
    port = proto.port
    pcap = work / f"{proto.name}.pcap"
    with proto.make_server(addr, port):
        trained = play_runs(
            list(train), addr, port, pcap, list(proto.port_ranges), work / "train.jsonl"
        )
        real = timed_runs(test, addr, port, client_timeout)
    again = None
    if repeat_real:
        with proto.make_server(addr, port):
            play_runs(list(train), addr, port)
            again = timed_runs(test, addr, port, client_timeout)

    def rows(results: list[Any]) -> list[Any]:
        return [[r.status, r.stdout, r.stderr, t0, t1] for r, t0, t1 in results]

    data = {
        "key": key,
        "train_statuses": count_statuses(trained),
        "test": rows(real),
        "again": rows(again) if again is not None else None,
    }
    (work / "real.json").write_text(json.dumps(data))


def measure(
    proto: LabProtocol,
    addr: str,
    train_n: int,
    test_n: int,
    seed: int,
    variants: list[tuple[str, dict[str, str]]],
    work: Path,
    repeat_real: bool,
    client_timeout: float,
    train_args: Sequence[str] = (),
    reuse: bool = False,
    root: Path = REPO,
) -> ProtocolResult:
    name, port = proto.name, proto.port
    result = ProtocolResult(name, port, train_n, test_n)
    train = draw_runs(name, train_n, protocol_seed(seed, name))
    test = draw_runs(name, test_n, protocol_seed(seed + TEST_SEED_OFFSET, name))
    trained_args = {run.describe() for run in train}
    result.seen = sum(run.describe() in trained_args for run in test)
    pcap = work / f"{name}.pcap"
    saved = work / "real.json"
    key = {"addr": addr, "train": train_n, "test": test_n, "seed": seed, "again": repeat_real}
    if not (reuse and saved.exists() and json.loads(saved.read_text())["key"] == key):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        real_phase(proto, addr, train, test, work, repeat_real, client_timeout, key)
    real = json.loads(saved.read_text())
    result.train_statuses = real["train_statuses"]
    real_res = [(ClientResult(*r[:3]), r[3], r[4]) for r in real["test"]]
    result.real_statuses = count_statuses([r for r, _, _ in real_res])
    real_out = [Outcome.of(name, r, t1 - t0) for r, t0, t1 in real_res]
    if real["again"] is not None:
        same = 0
        for run, a, r in zip(test, real_out, real["again"], strict=True):
            b = Outcome.of(name, ClientResult(*r[:3]), r[4] - r[3])
            if (a.status, a.out) == (b.status, b.out):
                same += 1
            else:
                diff = first_difference(a.out, b.out)
                result.real_again_diffs.append(f"{run.describe()[:80]}: {diff}")
        result.real_again = same
    shutil.rmtree(work / "models", ignore_errors=True)
    model_dir = work / "models"
    result.model = train_model(pcap, model_dir, train_args, root)
    for vname, options in variants:
        result.variants.append(
            play_emulator(
                name,
                test,
                real_out,
                model_dir,
                addr,
                port,
                work / vname,
                options,
                vname,
                client_timeout,
                root,
            )
        )
    (work / "result.json").write_text(json.dumps(asdict(result), indent=1))
    return result


def play_emulator(
    name: str,
    test: Sequence[ClientRun],
    real_out: Sequence[Outcome],
    model_dir: Path,
    addr: str,
    port: int,
    work: Path,
    options: dict[str, str],
    vname: str,
    client_timeout: float,
    root: Path = REPO,
) -> Variant:
    variant = Variant(vname, options, total=len(test))
    t_start = time.monotonic()
    with emulator(model_dir, addr, work, options, root) as events_path:
        played = timed_runs(test, addr, port, client_timeout)
        time.sleep(0.5)  # let the event writer catch up
    variant.seconds = round(time.monotonic() - t_start, 1)
    events = read_events(events_path)
    variant.requests_matched = sum(e["eventid"] == "scriptgen.request.matched" for e in events)
    variant.unmatched = sum(e["eventid"] == "scriptgen.request.unmatched" for e in events)
    for run, want, (res, t0, t1) in zip(test, real_out, played, strict=True):
        got = Outcome.of(name, res, t1 - t0)
        ok = (want.status, want.out) == (got.status, got.out)
        variant.matched += ok
        check = RunCheck(run.describe(), ok, want.status, got.status)
        if not ok:
            check.difference = first_difference(want.out, got.out)
            check.dialog = describe_sessions(sessions_between(events, t0, t1))
        variant.runs.append(check)
    return variant


# -- reporting -------------------------------------------------------------------
def print_table(results: Sequence[ProtocolResult]) -> None:
    print()
    print(
        f"{'protocol':10s} {'variant':14s} {'matched':>9s} {'%':>6s}  {'real again':>10s}"
        f"  {'seen':>5s}  {'req ok':>6s} {'unmatched':>9s}  model"
    )
    for r in results:
        if r.error:
            print(f"{r.protocol:10s} error: {r.error}")
            continue
        again = f"{r.real_again}/{r.test_runs}" if r.real_again is not None else "-"
        model = ", ".join(f"{k} {v['states']}s/{v['transitions']}t" for k, v in r.model.items())
        for v in r.variants:
            pct = 100.0 * v.matched / v.total if v.total else 0.0
            print(
                f"{r.protocol:10s} {v.name:14s} {v.matched:4d}/{v.total:<4d} {pct:6.1f}  "
                f"{again:>10s}  {r.seen:5d}  {v.requests_matched:6d} {v.unmatched:9d}  {model[:60]}"
            )
    for r in results:
        for v in r.variants:
            fails = [c for c in v.runs if not c.matched]
            if not fails:
                continue
            print(f"\n{r.protocol} / {v.name}: first divergence of the failed runs")
            for c in fails:
                print(f"  {c.run[:90]}")
                print(f"    status real {c.real_status} emulated {c.emu_status}; {c.difference}")
                print(f"    emulator: {c.dialog}")
        if r.real_again_diffs:
            print(f"\n{r.protocol}: real server vs itself, differences left after normalising")
            for d in r.real_again_diffs:
                print(f"  {d}")


def variants_for(deps: str, options: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """One emulator configuration per content-dependency setting (when the key exists)."""
    has_deps = "content_dependencies" in ini_sections()
    if not has_deps or "content_dependencies" in options or deps not in ("both", "on", "off"):
        return [("emulator", dict(options))]
    chosen = {"both": ("on", "off"), "on": ("on",), "off": ("off",)}[deps]
    return [
        (f"deps {d}", {**options, "content_dependencies": "true" if d == "on" else "false"})
        for d in chosen
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--train-runs", type=int, default=50)
    ap.add_argument("--test-runs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--addr", default=DEFAULT_ADDR, help="real server and emulator address")
    ap.add_argument("--json", type=Path, help="write all results here")
    ap.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="emulator config key (any key of etc/scriptgen.ini.dist)",
    )
    ap.add_argument(
        "--deps",
        default="both",
        choices=("both", "on", "off"),
        help="content_dependencies settings to measure",
    )
    ap.add_argument(
        "--no-repeat-real",
        action="store_true",
        help="skip the real-vs-real ceiling (halves the real-server time)",
    )
    ap.add_argument(
        "--train-option",
        action="append",
        default=[],
        metavar="FLAG=VALUE",
        help="scriptgen train flag, e.g. min-cluster-size=2 (becomes --min-cluster-size 2)",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the capture and real-server outcomes in --work from an earlier run "
        "with the same addr/runs/seed (to compare learner or emulator options quickly)",
    )
    ap.add_argument(
        "--scriptgen-root",
        type=Path,
        help="import scriptgen (train, twistd) from this tree instead of this checkout",
    )
    ap.add_argument("--client-timeout", type=float, default=10.0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/scriptgen-emulation-quality"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root (lab ports < 1024, tcpdump, useradd)")
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--option {item!r}: expected KEY=VALUE")
        options[key.strip()] = value.strip()
    names = [n.strip() for n in args.protocols.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown:
        ap.error(f"unknown protocols {unknown}; known: {', '.join(PROTOCOLS)}")
    variants = variants_for(args.deps, options)
    root = args.scriptgen_root.resolve() if args.scriptgen_root is not None else REPO
    train_flags: list[str] = []
    for item in args.train_option:
        flag, _, value = item.partition("=")
        train_flags += [f"--{flag.strip().lstrip('-')}", value.strip()]
    results = []
    for name in names:
        proto = PROTOCOLS[name]
        t0 = time.monotonic()
        missing = proto.missing_binaries()
        if missing:
            results.append(ProtocolResult(name, proto.port, 0, 0, error=f"missing {missing}"))
            continue
        try:
            res = measure(
                proto,
                args.addr,
                args.train_runs,
                args.test_runs,
                args.seed,
                variants,
                args.work / name,
                not args.no_repeat_real,
                args.client_timeout,
                train_flags,
                args.reuse,
                root,
            )
        except Exception as exc:  # one protocol's lab failure must not hide the others
            res = ProtocolResult(name, proto.port, 0, 0, error=f"{type(exc).__name__}: {exc}")
        results.append(res)
        print(f"{name}: done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0 if all(not r.error for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
