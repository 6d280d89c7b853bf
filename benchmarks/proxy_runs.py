"""Proxied runs of one activity before the emulator answers it alone (FTP, DNS).

    python benchmarks/proxy_runs.py [--protocol ftp dns] [--runs 10] [--seed 1]
                                    [--listen 127.0.8.1] [--pool 127.0.8.2]
                                    [--set proxy.doubt_samples=0] [--json FILE]

From an *empty* model, one activity is run again and again with varying
arguments against the emulator (twistd) whose proxy pool is the real server:

* ``ftp``: a tnftp control session -- login with a varying password, ``pwd``,
  ``cd`` to one of two directories, ``size`` of one of the public files (the
  session of ``tests/test_proxy_ftp.py``; vsftpd);
* ``dns``: ``dig NAME A`` with a name drawn from the lab zone (dig draws the
  query id; dnsmasq).

A run is *proxied* when it caused a ``scriptgen.proxy.relaying`` event,
otherwise *emulated*. After a proxied run the benchmark waits until the
source expired and its recording was learned (as if the next run came
later). The figure of the issue -- "proxied runs before the emulator
answers alone" -- is the number of proxied runs before the first run from
which every later run was emulated and succeeded. The table also gives the
proxied runs before the first emulated run, and per proxied run why it was
proxied (the ``scriptgen.proxy.allocated`` event: an unmatched request, or
a doubted match, at which state).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import proxy_support as ps  # noqa: E402
from tests.lab import clients  # noqa: E402
from tests.lab.servers import PUBLIC_FILES, DnsServer, FtpServer  # noqa: E402

FTP_DIRS = ("pub", "docs")
FTP_FILES = sorted(f for f in PUBLIC_FILES if f.endswith(".txt"))
FTP_EXPECTED = ("230 Login successful", "Remote directory: /", "250 Directory successfully changed")
FTP_SIZE = re.compile(r"^/\S+\t(\d+)$", re.M)
DNS_ZONE = {  # tests/lab/conf/dnsmasq.conf
    "www": "192.0.2.10", "ftp": "192.0.2.21", "mail": "192.0.2.25",
    "ns1": "192.0.2.53", "files": "192.0.2.45", "db": "192.0.2.79",
}  # fmt: skip
DNS_ANSWER = re.compile(r"^([\w.-]+)\.\s+\d+\s+IN\s+A\s+(\S+)$", re.M)


class Activity:
    """One protocol's activity: its port, its server and one run with drawn arguments."""

    port = ""

    def server(self, addr: str) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def run(self, rng: random.Random, addr: str, port: int) -> tuple[bool, bool]:
        """(succeeded, and printed what the real server's answer says: the right size
        of the file, the zone's address of the name)."""
        raise NotImplementedError


class Ftp(Activity):
    port = "tcp/21=0"

    def server(self, addr: str) -> AbstractContextManager[Any]:
        return FtpServer(addr)

    def run(self, rng: random.Random, addr: str, port: int) -> tuple[bool, bool]:
        password = f"{rng.choice(('ann', 'bob', 'carol'))}{rng.randint(0, 99)}@example.org"
        name = rng.choice(FTP_FILES)
        cmds = ["pwd", f"cd {rng.choice(FTP_DIRS)}", f"size /{name}"]
        res = clients.ftp_cli(addr, port, cmds, password=password, timeout=15)
        ok = res.status == 0 and all(e in res.stdout for e in FTP_EXPECTED)
        size = FTP_SIZE.search(res.stdout)
        return ok and size is not None, size is not None and size.group(1) == str(
            len(PUBLIC_FILES[name])
        )


class Dns(Activity):
    port = "udp/53=0"

    def server(self, addr: str) -> AbstractContextManager[Any]:
        return DnsServer(addr)

    def run(self, rng: random.Random, addr: str, port: int) -> tuple[bool, bool]:
        host = rng.choice(sorted(DNS_ZONE))
        name = f"{host}.lab.test"
        res = clients.dig(addr, port, name, "A", timeout=8)
        out = res.stdout
        ok = res.status == 0 and "status: NOERROR" in out and f";{name}." in out
        answers = DNS_ANSWER.findall(out)
        ok = ok and bool(answers) and all(n == name for n, _ in answers)
        ok = ok and not any(w in out for w in ("mismatch", "timed out"))
        return ok, [a for _, a in answers] == [DNS_ZONE[host]]


ACTIVITIES: dict[str, Callable[[], Activity]] = {"ftp": Ftp, "dns": Dns}


def measure(name: str, args: argparse.Namespace, extra: dict[str, dict[str, str]]) -> dict:
    """Run one protocol's activity ``args.runs`` times from an empty model."""
    act = ACTIVITIES[name]()
    rng = random.Random(args.seed)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=f"proxy-runs-{name}-") as tmp, act.server(args.pool):
        emu = ps.start_emulator(
            Path(tmp), act.port, expiry=args.expiry, pool=args.pool, listen=args.listen,
            scriptgen=extra.get("scriptgen", {}), **extra.get("proxy", {}),
        )  # fmt: skip
        try:
            port = emu.ports[act.port]
            for i in range(args.runs):
                mark = len(emu.read_events())
                learned = emu.count("scriptgen.proxy.learned")
                ok, right = act.run(rng, args.listen, port)
                time.sleep(0.3)  # events are written asynchronously
                events = emu.read_events()[mark:]
                proxied = any(e["eventid"] == "scriptgen.proxy.relaying" for e in events)
                why = _why(events)
                rows.append({"run": i, "proxied": proxied, "ok": ok, "right": right, "why": why})
                print(f"{name} {i:>3} {'proxied' if proxied else 'emulated':<9} "
                      f"{'ok' if ok else 'FAIL':<5}{' right' if right else ' wrong'} "
                      f"{'; '.join(why)}", flush=True)  # fmt: skip
                if proxied:
                    emu.wait_count("scriptgen.proxy.learned", learned + 1, timeout=300)
                    time.sleep(0.3)  # the reload that follows runs in a thread
        finally:
            ps.stop_emulator(emu)
            if args.keep:
                shutil.copytree(tmp, args.keep / name, dirs_exist_ok=True)
        problems = ps.tracebacks(emu)
    return {"protocol": name, "rows": rows, "tracebacks": len(problems)}


def _why(events: list[dict[str, Any]]) -> list[str]:
    """Why a run was handed to the pool host: per allocation, the request and the
    state it was unmatched at (or the doubted transition's samples)."""
    out, state = [], None
    for e in events:
        if e["eventid"] == "scriptgen.request.unmatched":
            state = e.get("state")
        if e["eventid"] != "scriptgen.proxy.allocated":
            continue
        try:
            req = bytes.fromhex(e.get("request") or "")[:48]
        except ValueError:
            req = b""
        text = req.decode("latin-1").encode("unicode_escape").decode()
        doubt = e.get("doubt")
        tag = f"doubted {json.dumps(doubt)}" if doubt else f"unmatched at state {state}"
        out.append(f"{tag}: {text}")
    return out


def alone_after(rows: list[dict[str, Any]]) -> str:
    """Proxied runs before the first run from which every run was emulated and ok."""
    start = len(rows)
    while start > 0 and not rows[start - 1]["proxied"] and rows[start - 1]["ok"]:
        start -= 1
    if start == len(rows):
        return f"never ({len(rows)} runs)"
    return str(sum(r["proxied"] for r in rows[:start]))


def first_emulated(rows: list[dict[str, Any]]) -> str:
    for n, r in enumerate(rows):
        if not r["proxied"]:
            return str(sum(x["proxied"] for x in rows[:n]))
    return "never"


def report(results: list[dict[str, Any]]) -> None:
    print(f"\n{'protocol':<9} {'runs':>4} {'proxied':>7} {'before 1st emulated':>20}"
          f" {'before alone':>13} {'emulated ok':>12} {'right':>7} {'tracebacks':>10}")  # fmt: skip
    for res in results:
        rows = res["rows"]
        emulated = [r for r in rows if not r["proxied"]]
        print(f"{res['protocol']:<9} {len(rows):>4} {sum(r['proxied'] for r in rows):>7}"
              f" {first_emulated(rows):>20} {alone_after(rows):>13}"
              f" {sum(r['ok'] for r in emulated):>6}/{len(emulated):<5}"
              f" {sum(r['right'] for r in emulated):>3}/{len(emulated):<3} {res['tracebacks']:>10}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", nargs="+", choices=sorted(ACTIVITIES), default=["ftp", "dns"])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--expiry", type=float, default=0.5)
    ap.add_argument("--listen", default=ps.LISTEN, help="emulator address")
    ap.add_argument("--pool", default=ps.POOL, help="address of the real servers (pool)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--json", type=Path, default=None, help="write the per-run rows here")
    ap.add_argument("--keep", type=Path, default=None, help="copy events, models, spool here")
    args = ap.parse_args(argv)
    extra: dict[str, dict[str, str]] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, option = key.partition(".")
        extra.setdefault(section, {})[option] = value
    results = [measure(name, args, extra) for name in args.protocol]
    report(results)
    if args.json:
        args.json.write_text(json.dumps({"settings": args.set, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
