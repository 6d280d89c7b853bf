"""The trainer: determinism, incremental training, provenance, bounded work on bad input."""

from __future__ import annotations

import os
import random
import threading
import tracemalloc
from pathlib import Path

import pytest

from scriptgen.learn.phases import LearnOptions, replay
from scriptgen.learn.trainer import TrainOptions, train
from scriptgen.model import ModelError, load_model_dir
from scriptgen.trace.types import Conversation, Direction, Endpoint, Message, Outcome
from tests.test_learn_standin import make_standin

CAPTURES = Path(__file__).resolve().parent / "data" / "captures"


class StandinRegionOptions:
    """Options object of the stand-in analysis (what goes into the model's options)."""

    def to_json(self) -> dict:
        return {"standin": True}


def standin_options(**learn) -> TrainOptions:
    return TrainOptions(learn=LearnOptions(**learn), region=StandinRegionOptions())


def real_regions():
    """The real analysis' options class; a broken regions module fails, never skips."""
    from scriptgen.learn.regions import RegionOptions

    return RegionOptions


ANALYSERS = ["standin", "real"]


def analysis(kind: str, **region):
    """(analyser, TrainOptions) for the stand-in or the real region analysis."""
    if kind == "standin":
        return make_standin(), standin_options()
    return None, TrainOptions(region=real_regions()(**region))


def capture(name: str) -> Path:
    path = CAPTURES / name
    if not path.is_file():
        pytest.skip(f"{path} not committed")
    return path


def read(name: str) -> list[Conversation]:
    from scriptgen.trace import read_conversations

    return list(read_conversations(capture(name)))


def dialogs_of(convs, key):
    from scriptgen.learn.dialog import group_dialogs

    return group_dialogs(convs).get(key, [])


def files_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def synth(i: int, requests, port=7000, answers=None, proto="tcp") -> Conversation:
    msgs = []
    t = 100.0 + i
    for n, r in enumerate(requests):
        msgs.append(Message(Direction.CLIENT, r, t + n * 0.01))
        a = answers[n] if answers else b"ok %d\r\n" % n
        if a:
            msgs.append(Message(Direction.SERVER, a, t + n * 0.01 + 0.005))
    return Conversation(
        proto,
        Endpoint(f"10.1.{i // 250}.{i % 250 + 1}", 30000 + i % 30000),
        Endpoint("10.0.0.2", port),
        t,
        t + 1,
        msgs,
        Outcome.CLOSED,
        Direction.CLIENT,
        source="synth",
    )


# -- determinism ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ANALYSERS)
def test_same_input_gives_byte_identical_models_whatever_jobs(tmp_path, kind):
    analyser, options = analysis(kind)
    pcaps = [capture("redis.pcap"), capture("dns.pcap")]
    train(pcaps, tmp_path / "a", options, analyser=analyser)
    train(list(reversed(pcaps)), tmp_path / "b", options, analyser=analyser, jobs=2)
    a, b = files_bytes(tmp_path / "a"), files_bytes(tmp_path / "b")
    assert set(a) == {"tcp-6379.json", "tcp-53.json", "udp-53.json"}
    assert a == b
    # with another thread alive, workers come from a forkserver: same bytes
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        train(pcaps, tmp_path / "fs", options, analyser=analyser, jobs=2)
    finally:
        stop.set()
        other.join()
    assert files_bytes(tmp_path / "fs") == a
    # and nothing depends on the clock or on where the captures are
    elsewhere = tmp_path / "copies"
    elsewhere.mkdir()
    copies = [elsewhere / p.name for p in pcaps]
    for src, dst in zip(pcaps, copies, strict=True):
        dst.write_bytes(src.read_bytes())
    train(copies, tmp_path / "c", options, analyser=analyser)
    assert files_bytes(tmp_path / "c") == a


def test_provenance_names_captures_options_and_counts(tmp_path):
    pcap = capture("redis.pcap")
    train([pcap], tmp_path, standin_options(), analyser=make_standin())
    (m,) = load_model_dir(tmp_path).values()
    assert m.provenance["captures"][0]["file"] == "redis.pcap"
    assert len(m.provenance["captures"][0]["sha256"]) == 64
    assert m.provenance["counts"]["conversations"] == 50
    assert m.provenance["scriptgen"]
    assert m.options["region"] == {"standin": True}
    assert m.options["learn"]["max_bucket"] == LearnOptions().max_bucket
    # training again on the same capture: same capture listed once, counts add up
    train([pcap], tmp_path, standin_options(), analyser=make_standin())
    (m,) = load_model_dir(tmp_path).values()
    assert len(m.provenance["captures"]) == 1
    assert m.provenance["counts"]["conversations"] == 100
    assert m.provenance["counts"]["trainings"] == 2


# -- incremental ---------------------------------------------------------------


def accepted(machine, dialogs) -> set[str]:
    """Origins of the dialogs that replay to their end without reaching a bucket."""
    return {d.suffix.origin for d in dialogs if replay(machine, d.suffix)[1] is None}


def check_incremental(
    tmp_path, convs_a, convs_b, key, analyser, options, held=()
) -> tuple[int, int]:
    """Train A+B at once, and A then B; the second must accept what the first accepts:
    the training dialogs, and of the ``held`` conversations (trained on by neither)
    every one the joint machine accepts. Exact: no tolerance (verbatim leftovers
    keep what formed no cluster, sibling merges join what A split and B shows
    to be one kind, examples weighted by their samples keep microclusters apart).
    """
    train(convs_a + convs_b, tmp_path / "ab", options, analyser=analyser)
    train(convs_a, tmp_path / "inc", options, analyser=analyser)
    train(convs_b, tmp_path / "inc", options, analyser=analyser)
    joint = load_model_dir(tmp_path / "ab")[key]
    inc = load_model_dir(tmp_path / "inc")[key]
    dialogs = dialogs_of(convs_a + convs_b, key)
    acc_joint, acc_inc = accepted(joint, dialogs), accepted(inc, dialogs)
    assert not acc_joint - acc_inc, sorted(acc_joint - acc_inc)[:5]
    others = dialogs_of(list(held), key)
    missing = accepted(joint, others) - accepted(inc, others)
    assert not missing, sorted(missing)[:5]
    return len(acc_joint), len(acc_inc)


INCREMENTAL_KINDS = {  # kind -> (analysis, region options)
    "standin": ("standin", {}),
    "real-defaults": ("real", {}),
    "real-keep-all": ("real", {"min_cluster_size": 1}),
}


def three_ways(convs):
    """A, B and held-out conversations: 2 of every 5 held out, the rest halved in order."""
    held = [c for i, c in enumerate(convs) if i % 5 in (1, 3)]
    rest = [c for i, c in enumerate(convs) if i % 5 not in (1, 3)]
    return rest[: len(rest) // 2], rest[len(rest) // 2 :], held


@pytest.mark.parametrize("kind", sorted(INCREMENTAL_KINDS))
@pytest.mark.parametrize(
    "name,key",
    [("ftp.pcap", ("tcp", 21)), ("smb445.pcap", ("tcp", 445)), ("redis.pcap", ("tcp", 6379))],
)
def test_a_then_b_accepts_what_a_plus_b_accepts(tmp_path, kind, name, key):
    which, region = INCREMENTAL_KINDS[kind]
    analyser, options = analysis(which, **region)
    a, b, held = three_ways(read(name))
    n_joint, n_inc = check_incremental(tmp_path, a, b, key, analyser, options, held)
    assert n_joint > 0


def test_incremental_training_with_merges_is_deterministic(tmp_path):
    """A then B (sibling merges, absorbed verbatim transitions) twice: same bytes."""
    _, options = analysis("real")
    a, b, _ = three_ways(read("smb445.pcap"))
    for run in ("x", "y"):
        train(a, tmp_path / run, options)
        train(b, tmp_path / run, options)
    assert files_bytes(tmp_path / "x") == files_bytes(tmp_path / "y")


@pytest.mark.parametrize("kind", sorted(INCREMENTAL_KINDS))
def test_incremental_across_files_on_the_same_port(tmp_path, kind):
    which, region = INCREMENTAL_KINDS[kind]
    analyser, options = analysis(which, **region)
    a, b = read("smb139.pcap"), read("lsarpc139.pcap")
    a, held_a = [c for i, c in enumerate(a) if i % 5], a[::5]
    b, held_b = [c for i, c in enumerate(b) if i % 5], b[::5]
    n_joint, _ = check_incremental(tmp_path, a, b, ("tcp", 139), analyser, options, held_a + held_b)
    assert n_joint > 0


CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


@pytest.mark.corpus
@pytest.mark.parametrize("kind", sorted(INCREMENTAL_KINDS))
@pytest.mark.parametrize(
    "name,key",
    [
        ("zeek/ftp__bruteforce.pcap", ("tcp", 21)),
        ("zeek/mysql__auth.pcap", ("tcp", 3306)),
        ("suricata_verify/dcerpc__zerologon__input.pcap", ("tcp", 49668)),
        ("suricata_verify/dcerpc__zerologon__input.pcap", ("tcp", 445)),
    ],
)
def test_incremental_on_public_captures(tmp_path, name, key, kind):
    path = CORPORA / name
    if not path.is_file():
        pytest.skip(f"{path} absent")
    from scriptgen.trace import read_conversations

    convs = [c for c in read_conversations(path) if c.server.port == key[1]][:200]
    if len(convs) < 4:
        pytest.skip("too few conversations")
    which, region = INCREMENTAL_KINDS[kind]
    analyser, options = analysis(which, **region)
    check_incremental(tmp_path, convs[::2], convs[1::2], key, analyser, options)


# -- models already in the directory ---------------------------------------------


def test_damaged_model_is_an_error_and_is_not_overwritten(tmp_path):
    bad = tmp_path / "tcp-7000.json"
    bad.write_text('{"schema": "scriptgen.model/1", "trunc')
    with pytest.raises(ModelError, match="tcp-7000.json"):
        train(
            [synth(i, [b"HELLO"]) for i in range(5)],
            tmp_path,
            standin_options(),
            analyser=make_standin(),
        )
    assert bad.read_text() == '{"schema": "scriptgen.model/1", "trunc'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tcp-7000.json"]


def test_ports_filter_and_refused_only_ports_get_no_model(tmp_path):
    convs = [synth(i, [b"HELLO %d" % i]) for i in range(5)]
    convs += [synth(i, [b"X"], port=8000) for i in range(5)]
    refused = synth(99, [], port=4444)
    refused.messages, refused.outcome = [], Outcome.REFUSED
    report = train(
        convs + [refused], tmp_path, standin_options(), analyser=make_standin(), ports=[7000, 4444]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tcp-7000.json"]
    by_port = {p.port: p for p in report.ports}
    assert by_port[4444].saved is False and by_port[4444].ignored == 1
    assert by_port[7000].used == 5 and 8000 not in by_port


# -- bad input -------------------------------------------------------------------


def test_nothing_to_learn_writes_nothing(tmp_path):
    report = train([], tmp_path / "m", standin_options(), analyser=make_standin())
    assert report.ports == []
    assert not (tmp_path / "m").exists() or list((tmp_path / "m").iterdir()) == []


@pytest.mark.parametrize("kind", ANALYSERS)
def test_a_ten_megabyte_request(tmp_path, kind):
    analyser, options = analysis(kind)
    big = os.urandom(10 * 1024 * 1024)
    convs = [synth(0, [big, b"QUIT"]), synth(1, [b"HELLO", b"QUIT"])]
    report = train(convs, tmp_path, options, analyser=analyser)
    (p,) = report.ports
    # the huge request is over max_message_bytes: dropped and counted, never a pattern
    assert p.used == 2 and p.dropped == 1 and p.bucketed == 0
    m = load_model_dir(tmp_path)[("tcp", 7000)]
    assert all(t.pattern.max_len < 1 << 20 for s in m.states.values() for t in s.transitions)


@pytest.mark.parametrize("kind", ANALYSERS)
def test_binary_noise_requests(tmp_path, kind):
    analyser, options = analysis(kind)
    rng = random.Random(7)
    convs = [
        synth(
            i, [rng.randbytes(rng.randint(1, 300)) for _ in range(3)], answers=[b"", b"\x00", b"?"]
        )
        for i in range(60)
    ]
    report = train(convs, tmp_path, options, analyser=analyser)
    (p,) = report.ports
    assert p.used == 60
    m = load_model_dir(tmp_path)[("tcp", 7000)]
    # every learned transition is consistent: each dialog either replays or stops at a bucket
    for d in dialogs_of(convs, ("tcp", 7000)):
        n, stop = replay(m, d.suffix)
        assert stop is None or m.states[stop].bucket


@pytest.mark.parametrize("kind", ANALYSERS)
def test_a_single_sample(tmp_path, kind):
    analyser, options = analysis(kind)
    report = train([synth(0, [b"HELLO\r\n"])], tmp_path, options, analyser=analyser)
    (p,) = report.ports
    assert p.used == 1 and p.states >= 1 and p.bucketed + p.transitions >= 1


@pytest.mark.parametrize("kind", ANALYSERS)
def test_ten_thousand_distinct_one_off_requests_is_bounded(tmp_path, kind):
    analyser, options = analysis(kind)
    rng = random.Random(1)
    convs = [synth(i, [rng.randbytes(24)]) for i in range(10_000)]
    opts = TrainOptions(learn=LearnOptions(max_bucket=500), region=options.region)
    tracemalloc.start()
    report = train(convs, tmp_path, opts, analyser=analyser)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    (p,) = report.ports
    assert p.used == 10_000
    assert p.bucketed + p.dropped + p.transitions >= 500
    assert p.bucketed <= 500
    assert peak < 200 * 1024 * 1024
