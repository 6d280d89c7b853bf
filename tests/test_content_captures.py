"""Content dependencies learned from the committed lab captures.

The protocol facts are here only (the learner knows none): the DNS
transaction id (bytes 0-1 over UDP, 2-3 over TCP after the length), the
SMB1 process id (bytes 30-31 with NetBIOS framing), the SMB2 session id
(bytes 44-51). The multiplex id (SMB1) and message id (SMB2) are sequential
per connection in these captures, hence fixed per state: nothing to link.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from scriptgen.emulate.rewrite import History, Rewriter
from scriptgen.learn.dialog import Dialog, group_dialogs
from scriptgen.learn.trainer import TrainOptions, learn_machine
from scriptgen.model import Machine

CAPTURES = Path(__file__).resolve().parent / "data" / "captures"
_cache: dict[str, dict[tuple[str, int], tuple[Machine, list[Dialog]]]] = {}


def learned(name: str) -> dict[tuple[str, int], tuple[Machine, list[Dialog]]]:
    pytest.importorskip("scriptgen.learn.regions")
    from scriptgen.trace import read_conversations

    if name not in _cache:
        out = {}
        for key, dialogs in group_dialogs(read_conversations(CAPTURES / name)).items():
            machine = Machine(*key)
            learn_machine(machine, dialogs, TrainOptions())  # infers the dependencies too
            out[key] = (machine, dialogs)
        _cache[name] = out
    return _cache[name]


def general(machine: Machine, varying_at: int | None = None) -> list:
    """States reached by a transition that is not verbatim (one recorded request byte for
    byte, ids included: its recorded answer already echoes them; the trainer infers
    dependencies with those set aside) and, with ``varying_at``, whose pattern lets that
    request byte vary (a request with a new id there can arrive)."""
    targets = {
        t.target
        for s in machine.states.values()
        for t in s.transitions
        if not t.verbatim and (varying_at is None or _varies(t.pattern.regions, varying_at))
    }
    return [machine.states[i] for i in sorted(targets)]


def _varies(regions: tuple, offset: int) -> bool:
    pos = 0
    for r in regions:
        if r.min_len != r.max_len or pos + r.max_len > offset:
            return not r.is_fixed or r.min_len != r.max_len
        pos += r.max_len
    return False


def emulate(machine: Machine, requests: list[bytes], seed: int = 1) -> list[bytes | None]:
    """Answers the emulator would send (None from the first unmatched request on)."""
    rw = Rewriter(random.Random(seed))
    history = History()
    state = machine.states[machine.root]
    out: list[bytes | None] = []
    for req in requests:
        hit = state.best_transition(req)
        if hit is None:
            out += [None] * (len(requests) - len(out))
            break
        state = machine.states[hit[0].target]
        history.request(req, hit[1])
        answer = rw.apply(state.answer, state.dependencies, history)
        history.answer(answer)
        out.append(answer)
    return out


def covered(deps: list[dict], lo: int, hi: int) -> bool:
    return any(d["kind"] == "copy" and d["at"] <= lo and hi <= d["at"] + d["len"] for d in deps)


@pytest.mark.parametrize(("proto", "id_at"), [("udp", 0), ("tcp", 2)])
def test_dns_transaction_id_is_linked(proto: str, id_at: int) -> None:
    machine, dialogs = learned("dns.pcap")[(proto, 53)]
    answering = [s for s in general(machine) if s.answer]
    assert answering
    for state in answering:
        assert covered(state.dependencies, id_at, id_at + 2), (state.id, state.dependencies)
    rng = random.Random(4)
    checked = 0
    for dialog in dialogs:
        req = dialog.suffix.turns[0].request
        new_id = rng.randbytes(2)
        live = req[:id_at] + new_id + req[id_at + 2 :]
        (answer,) = emulate(machine, [live])
        if answer is None or not answer:
            continue
        assert answer[id_at : id_at + 2] == new_id
        checked += 1
    assert checked >= len(dialogs) * 0.8


def test_smb1_process_id_is_linked() -> None:
    machine, dialogs = learned("smb139.pcap")[("tcp", 139)]
    smb1 = [
        s
        for s in general(machine, varying_at=30)
        if s.answer[4:8] == b"\xffSMB" and s.answer[8] != 0x72  # not the negotiate answer
    ]
    linked = [s for s in smb1 if covered(s.dependencies, 30, 32)]
    assert len(linked) >= 0.95 * len(smb1)
    # A client with another process id gets it back in every SMB1 answer.
    rng = random.Random(8)
    answers = right = 0
    for dialog in dialogs:
        pid = rng.randbytes(2)
        reqs = [t.request for t in dialog.suffix.turns]
        live = [
            r[:30] + pid + r[32:] if i >= 2 and r[4:8] == b"\xffSMB" else r
            for i, r in enumerate(reqs)
        ]
        for i, answer in enumerate(emulate(machine, live)):
            if i >= 2 and answer is not None and answer[4:8] == b"\xffSMB":
                answers += 1
                right += answer[30:32] == pid
    assert answers > 100
    assert right >= 0.95 * answers


def test_smb2_session_id_is_linked_and_server_chosen_first() -> None:
    """The session id is chosen by the server in the session setup answer (random per
    connection), then echoed by the client: later answers copy it from the request."""
    machine, _ = learned("lsarpc139.pcap")[("tcp", 139)]
    smb2 = [s for s in general(machine) if s.answer[4:8] == b"\xfeSMB"]
    with_session = [s for s in smb2 if s.answer[44:48] != b"\0\0\0\0"]
    linked = [s for s in with_session if covered(s.dependencies, 44, 48)]
    chosen = [
        s
        for s in with_session
        if any(d["kind"] == "random" and d["at"] <= 44 < d["at"] + d["len"] for d in s.dependencies)
    ]
    assert chosen, "the first session-setup answer should draw a fresh session id"
    assert len(linked) + len(chosen) >= 0.9 * len(with_session)


def test_two_connections_get_different_server_values() -> None:
    """A constant challenge or session id would fingerprint the honeypot."""
    machine, dialogs = learned("lsarpc139.pcap")[("tcp", 139)]
    reqs = [t.request for t in dialogs[0].suffix.turns]
    a, b = emulate(machine, reqs, seed=1), emulate(machine, reqs, seed=2)
    assert a[:3] != b[:3]
    assert [len(x or b"") for x in a] == [len(x or b"") for x in b]
