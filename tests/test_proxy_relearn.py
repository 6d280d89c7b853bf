"""Online relearning: each batch is learned with every recording learned online
before it, from the base model -- the result is what one training on all of it
gives (the real trainer, small synthesized recordings)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from scriptgen.emulate.online import HISTORY, relearn_files
from scriptgen.emulate.recorder import Spool
from scriptgen.learn.trainer import train

MODEL = "tcp-6379.json"


def recording(spool: Spool, port: int, dialogs: list[list[tuple[bytes, bytes]]]) -> Path:
    """A pending recording of ``dialogs`` (one connection each), written inline."""
    rec = spool.new("127.0.0.9", "127.0.0.2")
    t = time.time()
    for i, turns in enumerate(dialogs):
        flow = rec.flow(("127.0.0.9", port + i), ("127.0.0.1", 6379))
        for request, answer in turns:
            t += 0.01
            flow.data(False, request, t)
            flow.data(True, answer, t + 0.005)
        flow.close(t + 0.01)
    box: list = []
    rec.finish().addBoth(box.append)
    assert isinstance(box[0], Path), box
    return box[0]


def commands(word: bytes, answer: bytes, n: int = 3) -> list[list[tuple[bytes, bytes]]]:
    return [[(word + b" key%d\r\n" % i, answer)] for i in range(n)]


def scratch(tmp: Path, files: list[Path], name: str) -> bytes:
    out = tmp / name
    train([str(f) for f in files], out)
    return (out / MODEL).read_bytes()


def test_batch_by_batch_gives_what_one_training_on_all_gives(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    a = recording(spool, 40000, commands(b"GET", b"$-1\r\n"))
    b = recording(spool, 41000, commands(b"DEL", b":0\r\n"))
    models, base = tmp_path / "models", str(spool.root / "relearn")
    first = relearn_files(str(models), [str(a)], base, 1 << 20)
    assert first["new"] and first["ports"][0]["port"] == "tcp/6379"
    (spool.root / "learned" / a.name).parent.mkdir(exist_ok=True)
    shutil.move(a, spool.root / "learned" / a.name)  # as the spool does once learned
    second = relearn_files(str(models), [str(b)], base, 1 << 20)
    both = scratch(tmp_path, [spool.root / "learned" / a.name, b], "scratch")
    assert (models / MODEL).read_bytes() == both
    history = json.loads((spool.root / "relearn" / HISTORY).read_text())
    assert history["recordings"] == [a.name, b.name]
    # what the first batch learned is not reported again (state ids may move)
    assert all("DEL" in t["pattern"] for t in second["new"])


def test_a_model_changed_by_someone_else_starts_a_new_base(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    a = recording(spool, 40000, commands(b"GET", b"$-1\r\n"))
    b = recording(spool, 41000, commands(b"DEL", b":0\r\n"))
    c = recording(spool, 42000, commands(b"TTL", b":-2\r\n"))
    models, base = tmp_path / "models", str(spool.root / "relearn")
    relearn_files(str(models), [str(a)], base, 1 << 20)
    (models / MODEL).write_bytes(scratch(tmp_path, [c], "operator"))  # scriptgen train
    relearn_files(str(models), [str(b)], base, 1 << 20)
    expected = tmp_path / "expected"
    train([str(c)], expected)
    train([str(b)], expected)  # the operator's model, then the new batch: a not again
    assert (models / MODEL).read_bytes() == (expected / MODEL).read_bytes()
    assert json.loads((spool.root / "relearn" / HISTORY).read_text())["recordings"] == [b.name]


def test_recordings_over_the_budget_are_folded_into_the_base(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    a = recording(spool, 40000, commands(b"GET", b"$-1\r\n"))
    b = recording(spool, 41000, commands(b"DEL", b":0\r\n"))
    models, base = tmp_path / "models", spool.root / "relearn"
    budget = b.stat().st_size + 1  # room for one recording
    relearn_files(str(models), [str(a)], str(base), budget)
    relearn_files(str(models), [str(b)], str(base), budget)
    assert json.loads((base / HISTORY).read_text())["recordings"] == [b.name]
    expected = tmp_path / "expected"
    train([str(a)], expected)
    assert (base / MODEL).read_bytes() == (expected / MODEL).read_bytes()  # a, for good
    train([str(b)], expected)
    assert (models / MODEL).read_bytes() == (expected / MODEL).read_bytes()


def test_a_damaged_history_starts_a_new_base(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    a = recording(spool, 40000, commands(b"GET", b"$-1\r\n"))
    b = recording(spool, 41000, commands(b"DEL", b":0\r\n"))
    models, base = tmp_path / "models", spool.root / "relearn"
    relearn_files(str(models), [str(a)], str(base), 1 << 20)
    (base / HISTORY).write_bytes(b"\xff{not json")
    relearn_files(str(models), [str(b)], str(base), 1 << 20)
    expected = tmp_path / "expected"
    train([str(a)], expected)
    train([str(b)], expected)
    assert (models / MODEL).read_bytes() == (expected / MODEL).read_bytes()


def test_a_recording_gone_from_the_spool_is_not_forgotten_by_the_model(tmp_path: Path) -> None:
    """An analyst may clean learned/: what it taught stays (the models become the base)."""
    spool = Spool(tmp_path / "spool")
    a = recording(spool, 40000, commands(b"GET", b"$-1\r\n"))
    b = recording(spool, 41000, commands(b"DEL", b":0\r\n"))
    models, base = tmp_path / "models", spool.root / "relearn"
    relearn_files(str(models), [str(a)], str(base), 1 << 20)
    a.unlink()
    relearn_files(str(models), [str(b)], str(base), 1 << 20)
    from scriptgen.model import load_model_dir

    machine = load_model_dir(models)[("tcp", 6379)]
    patterns = [t.pattern.describe() for t in machine.states[machine.root].transitions]
    assert any("GET" in p for p in patterns) and any("DEL" in p for p in patterns)
    assert json.loads((base / HISTORY).read_text())["recordings"] == [b.name]


def test_a_recording_learned_again_after_a_restart_counts_once(tmp_path: Path) -> None:
    """A crash after the history was written but before the spool moved the batch to
    learned/: the recording is pending again at the next start; relearning it must
    not learn it twice (it is both in the history and in the batch)."""
    spool = Spool(tmp_path / "spool")
    a = recording(spool, 40000, commands(b"GET", b"$-1\r\n"))
    models, base = tmp_path / "models", str(spool.root / "relearn")
    relearn_files(str(models), [str(a)], base, 1 << 20)
    relearn_files(str(models), [str(a)], base, 1 << 20)  # pending again after the crash
    assert (models / MODEL).read_bytes() == scratch(tmp_path, [a], "scratch")
    assert json.loads((spool.root / "relearn" / HISTORY).read_text())["recordings"] == [a.name]


def test_a_failed_batch_does_not_fold_a_recording_into_the_base_twice(tmp_path: Path) -> None:
    """Folding writes the base; a batch that then fails (a bad recording) must leave a
    history that says so, or the next batch folds the same recording again."""
    import pytest

    spool = Spool(tmp_path / "spool")
    a = recording(spool, 40000, commands(b"GET", b"$-1\r\n"))
    b = recording(spool, 41000, commands(b"DEL", b":0\r\n"))
    bad = spool.root / "bad.pcap"
    bad.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x00" * b.stat().st_size)  # a broken capture
    models, base = tmp_path / "models", spool.root / "relearn"
    budget = b.stat().st_size + 1  # room for one recording
    relearn_files(str(models), [str(a)], str(base), budget)
    for _ in range(2):
        with pytest.raises(Exception):  # noqa: B017 -- whatever the trainer raises
            relearn_files(str(models), [str(bad)], str(base), budget)
    relearn_files(str(models), [str(b)], str(base), budget)
    expected = tmp_path / "expected"
    train([str(a)], expected)
    assert (base / MODEL).read_bytes() == (expected / MODEL).read_bytes()  # a, once
    train([str(b)], expected)
    assert (models / MODEL).read_bytes() == (expected / MODEL).read_bytes()


def test_the_report_of_new_transitions_is_linear_in_the_model_size(tmp_path: Path) -> None:
    """Transitions are keyed by the patterns that lead to their state; spelling that
    path out per state (and compiling every pattern to show its regex) cost (depth^2 x pattern size): a hostile dialog of 500 distinct
    4 KiB requests learned as one verbatim chain made it a gigabyte."""
    import tracemalloc

    from scriptgen.emulate.online import _transitions
    from scriptgen.model import Machine, Pattern, Transition, save_machine

    machine = Machine("tcp", 6379)
    state = machine.states[machine.root]
    for i in range(160):
        nxt = machine.new_state()
        literal = Pattern.literal(b"%05d" % i + b"x" * 2048)
        state.transitions.append(Transition(literal, nxt.id, 1, verbatim=True))
        state = nxt
    save_machine(machine, tmp_path)
    started = time.process_time()
    found = _transitions(tmp_path)
    assert time.process_time() - started < 1.5  # no pattern compiled (~13 ms per 2 KiB literal)
    assert len(found) == 160
    assert found[next(iter(found))]["regex"].startswith("(?s)(00000xxx")
    tracemalloc.start()
    try:
        _transitions(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak  # the model's own size is about 1.3 MB


def test_a_history_recording_that_cannot_be_read_any_more_does_not_block_learning(
    tmp_path: Path,
) -> None:
    """Every batch learns the history again: one recording of it that became
    unreadable (a damaged disk, a trainer that now refuses it) would make every
    later batch fail, and every new recording end in failed/. The models as they
    are become the base instead; a bad *new* recording still fails alone."""
    import pytest

    from scriptgen.model import load_model_dir

    spool = Spool(tmp_path / "spool")
    a = recording(spool, 40000, commands(b"GET", b"$-1\r\n"))
    b = recording(spool, 41000, commands(b"DEL", b":0\r\n"))
    c = recording(spool, 42000, commands(b"TTL", b":-2\r\n"))
    models, base = tmp_path / "models", spool.root / "relearn"
    relearn_files(str(models), [str(a)], str(base), 1 << 20)
    bad = spool.root / "bad.pcap"
    bad.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x00" * 100)
    with pytest.raises(Exception):  # noqa: B017 -- the new recording is the bad one
        relearn_files(str(models), [str(bad)], str(base), 1 << 20)
    assert json.loads((base / HISTORY).read_text())["recordings"] == [a.name]  # kept
    relearn_files(str(models), [str(b)], str(base), 1 << 20)
    a.write_bytes(bad.read_bytes())  # now a recording of the history is damaged
    relearn_files(str(models), [str(c)], str(base), 1 << 20)
    machine = load_model_dir(models)[("tcp", 6379)]
    patterns = " ".join(t.pattern.describe() for t in machine.states[machine.root].transitions)
    assert "GET" in patterns and "DEL" in patterns and "TTL" in patterns
    assert json.loads((base / HISTORY).read_text())["recordings"] == [c.name]
