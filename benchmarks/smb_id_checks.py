"""Which echoed ids do real SMB clients check? Perturb one header field in the emulator's answers.

    python benchmarks/smb_id_checks.py [--runs 20] [--only smbclient445,rpcclient139,...]

For each client dialog (fixed commands and login): capture ``--runs`` runs
against the real smbd (127.0.6.2), train, and serve the model with content
dependencies *off* on 127.0.6.1, first as learned, then once per field with
that field changed in the templates (a bit flipped): either in every answer
(ids the client chooses: SMB2 message id, SMB1 pid/mid, DCE-RPC call_id) or
in every answer after the first one that carries a non-zero value (ids the
server chooses and the client echoes: SMB2 session/tree id, SMB1 uid/tid).
A client that still completes does not check that field; one that stops
shows after which request (the emulator's count of answered requests) and
with which error. Needs root (ports 139/445, tcpdump), smbd, smbclient,
rpcclient, twistd; impacket and pysmb (PyPI) for their rows.

Protocol knowledge (header offsets) lives here, in the benchmark, never in
scriptgen/.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.lsass_like import scatter_pid, train  # noqa: E402
from scriptgen.trace import Direction, read_conversations  # noqa: E402
from tests.emulator_support import Emulator, read_events  # noqa: E402
from tests.lab.capture import Tcpdump, bpf_for  # noqa: E402
from tests.lab.clients import run_client  # noqa: E402
from tests.lab.servers import SambaServer  # noqa: E402

REAL = "127.0.6.2"
EMU = "127.0.6.1"
NAME = "LABSRV"  # the real server's NetBIOS name; clients reach an address with -I
NT1 = ["--option=client min protocol=NT1", "--option=client max protocol=NT1"]
IPC_NT1 = ["--option=client ipc min protocol=NT1", "--option=client ipc max protocol=NT1"]
IMPACKET_CLIENT = Path(__file__).resolve().parent / "impacket_lsa.py"
PYSMB_CLIENT = Path(__file__).resolve().parent / "pysmb_ls.py"


@dataclass(frozen=True)
class Dialog:
    """One fixed client dialog: ``argv(addr)`` runs it against an address."""

    name: str
    port: int
    argv: Callable[[str], list[str]]
    # impacket writes the address into the tree-connect path: its emulator takes the
    # real server's address once that is stopped.
    emu_addr: str = EMU


def _smbclient(port: int, extra: list[str]) -> Callable[[str], list[str]]:
    return lambda addr: (
        ["smbclient", "-p", str(port), *extra, "-U%", f"//{NAME}/public"]
        + [
            "-I",
            addr,
            "-c",
            "ls",
        ]
    )


def _rpcclient(port: int, extra: list[str]) -> Callable[[str], list[str]]:
    cmds = "lsaquery; lookupnames root"
    return lambda addr: ["rpcclient", "-p", str(port), *extra, "-U%", "-I", addr, "-c", cmds, NAME]


def _impacket(port: int) -> Callable[[str], list[str]]:
    return lambda addr: [sys.executable, str(IMPACKET_CLIENT), addr, str(port), "root"]


def _pysmb(port: int) -> Callable[[str], list[str]]:
    return lambda addr: [sys.executable, str(PYSMB_CLIENT), addr, str(port)]


DIALOGS = {
    d.name: d
    for d in (
        Dialog("smbclient445", 445, _smbclient(445, [])),
        Dialog("smbclient139", 139, _smbclient(139, NT1)),
        Dialog("rpcclient445", 445, _rpcclient(445, [])),
        Dialog("rpcclient139", 139, _rpcclient(139, IPC_NT1)),
        Dialog("impacket445", 445, _impacket(445), REAL),
        Dialog("impacket139", 139, _impacket(139), REAL),
        Dialog("pysmb445", 445, _pysmb(445)),
        Dialog("pysmb139", 139, _pysmb(139)),
    )
}


# -- where the ids are ---------------------------------------------------------
@dataclass(frozen=True)
class Field:
    """An id field: ``locate(answer)`` yields its (offset, width) spans; ``server`` ids
    are perturbed only after the answer that introduced them."""

    name: str
    locate: Callable[[bytes], Iterator[tuple[int, int]]]
    server: bool


def frames(answer: bytes) -> Iterator[int]:
    """Start offsets of the NetBIOS/direct-TCP frames (4-byte header) of one answer."""
    pos = 0
    while pos + 4 <= len(answer):
        yield pos
        pos += 4 + int.from_bytes(answer[pos + 1 : pos + 4], "big")


def smb2_headers(answer: bytes) -> Iterator[int]:
    """Offsets of every SMB2 header, following compound chains (NextCommand)."""
    for f in frames(answer):
        pos = f + 4
        while answer[pos : pos + 4] == b"\xfeSMB" and pos + 64 <= len(answer):
            yield pos
            step = int.from_bytes(answer[pos + 20 : pos + 24], "little")
            if not step:
                break
            pos += step


def smb1_headers(answer: bytes) -> Iterator[int]:
    for f in frames(answer):
        if answer[f + 4 : f + 8] == b"\xffSMB" and f + 36 <= len(answer):
            yield f + 4


# version 5.0, request/response/fault/bind/bind_ack, little-endian data representation
DCERPC = re.compile(rb"\x05\x00[\x00\x02\x03\x0b\x0c][\x00-\xff]\x10\x00\x00\x00", re.S)


def _in_smb2(offset: int, width: int) -> Callable[[bytes], Iterator[tuple[int, int]]]:
    return lambda a: ((h + offset, width) for h in smb2_headers(a))


def _in_smb1(offset: int, width: int) -> Callable[[bytes], Iterator[tuple[int, int]]]:
    return lambda a: ((h + offset, width) for h in smb1_headers(a))


def _call_ids(answer: bytes) -> Iterator[tuple[int, int]]:
    for m in DCERPC.finditer(answer):
        if m.start() + 16 <= len(answer):
            yield m.start() + 12, 4


FIELDS = [
    Field("smb2.message_id", _in_smb2(24, 8), server=False),
    Field("smb2.session_id", _in_smb2(40, 8), server=True),
    Field("smb2.tree_id", _in_smb2(36, 4), server=True),
    Field("smb1.pid", _in_smb1(26, 2), server=False),
    Field("smb1.mid", _in_smb1(30, 2), server=False),
    Field("smb1.uid", _in_smb1(28, 2), server=True),
    Field("smb1.tid", _in_smb1(24, 2), server=True),
    Field("dcerpc.call_id", _call_ids, server=False),
]


def dialog_order(model: dict) -> list[dict]:
    """States by depth from the root (the dialog order of a linear machine)."""
    by_id = {s["id"]: s for s in model["states"]}
    order, seen, frontier = [], {model["root"]}, [model["root"]]
    while frontier:
        nxt = []
        for sid in frontier:
            order.append(by_id[sid])
            for t in by_id[sid]["transitions"]:
                if t["target"] not in seen:
                    seen.add(t["target"])
                    nxt.append(t["target"])
        frontier = nxt
    return order


def perturb(model: dict, field: Field) -> int:
    """Flip the low bit of the field's lowest byte where it applies; returns how many spans."""
    changed, introduced = 0, not field.server
    for state in dialog_order(model):
        answer = bytearray.fromhex(state["answer"])
        spans = list(field.locate(bytes(answer)))
        if not introduced:
            introduced = any(any(answer[o : o + w]) for o, w in spans)
            continue
        for offset, _width in spans:
            answer[offset] ^= 0x01
            changed += 1
        state["answer"] = answer.hex()
    return changed


def variation(pcap: Path, field: Field) -> tuple[int, int]:
    """(dialog positions carrying the field, positions where its value differs between
    runs): requests for client-chosen ids, answers for server-chosen ones."""
    side = Direction.SERVER if field.server else Direction.CLIENT
    values: dict[int, set[tuple[bytes, ...]]] = defaultdict(set)
    for conv in read_conversations(pcap):
        msgs = [m.data for m in conv.messages if m.direction is side]
        for k, data in enumerate(msgs):
            found = tuple(data[o : o + w] for o, w in field.locate(data))
            if found:
                values[k].add(found)
    return len(values), sum(len(v) > 1 for v in values.values())


# -- running -------------------------------------------------------------------
@dataclass
class Outcome:
    status: int
    requests: int
    reason: str
    error: str


def capture(dialog: Dialog, runs: int, pcap: Path) -> list[int]:
    """``runs`` runs against the real smbd under tcpdump; their exit statuses."""
    statuses = []
    with SambaServer(REAL, port=445, netbios_port=139), Tcpdump(pcap, bpf_for(REAL, [dialog.port])):
        for _ in range(runs):
            scatter_pid()
            statuses.append(run_client(dialog.argv(REAL), timeout=20).status)
    return statuses


def play(model_dir: Path, work: Path, dialog: Dialog, deps: bool, runs: int) -> list[Outcome]:
    """Serve ``model_dir`` on EMU and run the dialog ``runs`` times."""
    events = work / "events.json"
    events.unlink(missing_ok=True)
    config = (
        f"[scriptgen]\nmodel_dir = {model_dir}\nlisten = {dialog.emu_addr}\nports = tcp/{dialog.port}\n"
        f"events = {events}\nreload_interval = 0\nrequest_settle = 0.05\n"
        f"on_unmatched = close\ncontent_dependencies = {'true' if deps else 'false'}\n"
    )
    out = []
    with Emulator.start(work, config, events):
        for _ in range(runs):
            before = len(_closed(events))
            scatter_pid()
            res = run_client(dialog.argv(dialog.emu_addr), timeout=10)
            time.sleep(0.15)
            closed = _closed(events)[before:]
            last = closed[-1] if closed else {}
            err = [ln for ln in (res.stderr + res.stdout).splitlines() if "NT_STATUS" in ln]
            err += [ln for ln in res.stderr.splitlines() if ln.strip()][-1:]
            out.append(
                Outcome(
                    res.status,
                    max((e.get("requests", 0) for e in closed), default=0),
                    str(last.get("reason", "")),
                    (err[0] if err else "").strip()[:90],
                )
            )
    return out


def _closed(events: Path) -> list[dict]:
    return [e for e in read_events(events) if e.get("eventid") == "scriptgen.session.closed"]


def probe(
    dialog: Dialog, runs: int, work: Path, plays: int
) -> list[tuple[str, str, list[Outcome]]]:
    """Rows (variant, how the field varies between training runs, outcomes) for one dialog."""
    work.mkdir(parents=True, exist_ok=True)
    pcap = work / "train.pcap"
    statuses = capture(dialog, runs, pcap)
    print(f"# {dialog.name}: {runs} training runs, real exit statuses {sorted(set(statuses))}")
    base = work / "models"
    train(pcap, base)
    model_file = next(base.glob("*.json"))
    rows = []
    for deps in (True, False):
        res = play(base, work / "emu", dialog, deps, plays)
        rows.append((f"as learned, deps {'on' if deps else 'off'}", "", res))
    for field in FIELDS:
        model = json.loads(model_file.read_text())
        changed = perturb(model, field)
        if not changed:
            continue
        pdir = work / f"models-{field.name}"
        shutil.rmtree(pdir, ignore_errors=True)
        pdir.mkdir()
        (pdir / model_file.name).write_text(json.dumps(model))
        where, varying = variation(pcap, field)
        outs = play(pdir, work / "emu", dialog, False, plays)
        rows.append((f"{field.name} changed, deps off", f"{varying}/{where}", outs))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="training runs per dialog")
    ap.add_argument("--plays", type=int, default=2, help="client runs per variant")
    ap.add_argument("--only", default=",".join(DIALOGS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/scriptgen-smb-id-checks"))
    args = ap.parse_args()
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        rows = probe(DIALOGS[name], args.runs, args.work / name, args.plays)
        print(f"{'variant':34s} varies  completed  stopped after  error")
        for variant, varies, outs in rows:
            done = sum(o.status == 0 for o in outs)
            where = "/".join(str(o.requests) for o in outs)
            print(
                f"{variant:34s} {varies:6s}  {done}/{len(outs)}        {where:13s}  {outs[0].error}"
            )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
