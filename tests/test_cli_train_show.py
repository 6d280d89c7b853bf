"""`scriptgen train` and `scriptgen show` from the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scriptgen.cli import main
from scriptgen.learn.trainer import train
from scriptgen.model import Machine, Pattern, Region, State, Transition, save_machine
from scriptgen.model.store import dumps
from tests.test_learn_standin import make_standin
from tests.test_learn_trainer import standin_options

CAPTURES = Path(__file__).resolve().parent / "data" / "captures"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scriptgen", *args], capture_output=True, text=True, timeout=300
    )


def needs_regions():
    """The real region analysis must import: a broken module fails these tests, never skips."""
    import scriptgen.learn.regions  # noqa: F401


def capture(name: str) -> Path:
    path = CAPTURES / name
    if not path.is_file():
        pytest.skip(f"{path} not committed")
    return path


def nasty_machine() -> Machine:
    """Bytes that break naive quoting in text, dot and JSON."""
    m = Machine("tcp", 9999)
    root = m.states[0]
    root.answer = b'220 "quoted" \\ back\\slash {brace} <tag> |pipe|\r\n\\l\\N'
    a = m.new_state()
    a.answer = bytes(range(256))
    a.bucket = []
    b = m.new_state()
    b.answer = b""
    root.transitions.append(
        Transition(Pattern((Region(b'GET "\\'), Region.mutating(1, 9), Region(b"\r\n"))), a.id, 3)
    )
    root.transitions.append(Transition(Pattern.literal(b'\x00\xff"\\\n'), b.id, 1))
    root.samples, a.samples, b.samples = 4, 3, 1
    return m


# -- train -----------------------------------------------------------------------


def test_unreadable_capture_is_one_line_and_exit_1(tmp_path):
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture at all" * 10)
    r = run_cli("train", "--model-dir", str(tmp_path / "m"), str(junk))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scriptgen: ") and "junk.pcap" in lines[0]
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_missing_and_empty_captures(tmp_path):
    r = run_cli("train", "--model-dir", str(tmp_path / "m"), str(tmp_path / "nope.pcap"))
    assert r.returncode == 1 and r.stderr.startswith("scriptgen: ") and "nope.pcap" in r.stderr
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    r = run_cli("train", "--model-dir", str(tmp_path / "m"), str(empty))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "empty.pcap" in r.stderr


def test_damaged_capture_is_a_warning_and_the_rest_is_learned(tmp_path):
    whole = capture("redis.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole[: len(whole) * 2 // 3])  # the last record is cut short
    r = run_cli("train", "-q", "--model-dir", str(tmp_path / "m"), str(cut))
    assert r.returncode == 0 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("scriptgen: ") and "cut.pcap" in line and "truncated-record=1" in line
    assert (tmp_path / "m" / "tcp-6379.json").is_file()
    r = run_cli("train", "-q", "--model-dir", str(tmp_path / "m2"), str(capture("redis.pcap")))
    assert r.returncode == 0 and r.stderr == ""


def test_damaged_model_in_dir_is_named_and_kept(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    bad = model_dir / "tcp-6379.json"
    bad.write_bytes(b"\x00garbage")
    r = run_cli("train", "--model-dir", str(model_dir), str(capture("redis.pcap")))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "tcp-6379.json" in r.stderr
    assert bad.read_bytes() == b"\x00garbage"


def test_train_then_show_on_a_real_capture(tmp_path):
    needs_regions()
    model_dir = tmp_path / "m"
    r = run_cli("train", "--model-dir", str(model_dir), str(capture("redis.pcap")))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and r.stderr == ""  # not a tty: no progress bar
    header, row = r.stdout.splitlines()[:2]
    assert header.split()[:5] == ["port", "states", "transitions", "verbatim", "bucketed"]
    assert row.split()[0] == "tcp/6379" and int(row.split()[1]) > 1
    assert (model_dir / "tcp-6379.json").is_file()
    first = (model_dir / "tcp-6379.json").read_bytes()
    # training again on more data updates in place; a fresh dir gives the same bytes
    r = run_cli("train", "--quiet", "--model-dir", str(tmp_path / "n"), str(capture("redis.pcap")))
    assert r.returncode == 0 and r.stdout == ""
    assert (tmp_path / "n" / "tcp-6379.json").read_bytes() == first
    r = run_cli("show", str(model_dir))
    assert r.returncode == 0 and r.stdout.startswith("tcp/6379:")


def test_train_port_and_jobs_options(tmp_path):
    needs_regions()
    args = ["--model-dir", str(tmp_path / "a"), "--port", "53", str(capture("dns.pcap"))]
    assert main(["train", "--quiet", *args]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["tcp-53.json", "udp-53.json"]
    args = [
        "--model-dir",
        str(tmp_path / "b"),
        "--port",
        "53",
        "--jobs",
        "2",
        str(capture("dns.pcap")),
    ]
    assert main(["train", "--quiet", *args]) == 0
    for name in ("tcp-53.json", "udp-53.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (
        main(
            [
                "train",
                "--quiet",
                "--proto",
                "udp",
                "--model-dir",
                str(tmp_path / "c"),
                str(capture("dns.pcap")),
            ]
        )
        == 0
    )
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["udp-53.json"]


def test_byte_bounds_drop_and_count_and_are_recorded_in_the_model(tmp_path):
    """A message cap smaller than every redis request: nothing is bucketed, all counted."""
    needs_regions()
    model_dir = tmp_path / "m"
    args = ["--max-message-bytes", "8", "--max-bucket-bytes", "4096"]
    r = run_cli("train", *args, "--model-dir", str(model_dir), str(capture("redis.pcap")))
    assert r.returncode == 0, r.stderr
    header, row = (line.split() for line in r.stdout.splitlines()[:2])
    cells = dict(zip(header, row[:1] + row[-(len(header) - 1) :], strict=True))
    assert cells["port"] == "tcp/6379" and cells["bucketed"] == "0"
    assert int(cells["dropped"]) == int(cells["used"]) > 0
    learn = json.loads((model_dir / "tcp-6379.json").read_text())["options"]["learn"]
    assert learn["max_message_bytes"] == 8 and learn["max_bucket_bytes"] == 4096


def test_verbatim_leftovers_are_on_by_default_and_shown_as_exact(tmp_path):
    """Requests too few to cluster become exact transitions (nothing left in a bucket),
    marked in the model and by ``show``; --no-verbatim leaves them in the buckets."""
    needs_regions()
    r = run_cli("train", "--model-dir", str(tmp_path / "v"), str(capture("redis.pcap")))
    assert r.returncode == 0, r.stderr
    header, row = (line.split() for line in r.stdout.splitlines()[:2])
    cells = dict(zip(header, row, strict=True))
    assert int(cells["verbatim"]) > 0 and cells["bucketed"] == "0"
    model = json.loads((tmp_path / "v" / "tcp-6379.json").read_text())
    assert model["options"]["learn"]["verbatim"] is True
    exact = [t for s in model["states"] for t in s["transitions"] if t.get("verbatim")]
    assert len(exact) == int(cells["verbatim"])
    assert all(len(t["pattern"]) <= 1 and "fixed" in t["pattern"][0] for t in exact)
    r = run_cli("show", str(tmp_path / "v"))
    exceptions = [t for s in model["states"] for t in s["transitions"] if t.get("exception")]
    assert exceptions  # PING, DBSIZE ...: seen once each, answered differently
    header = r.stdout.splitlines()[0]
    assert r.returncode == 0 and f"({len(exact)} exact, {len(exceptions)} exceptions)" in header
    assert r.stdout.count("-- exact ") == len(exact)
    assert r.stdout.count("-- exception ") == len(exceptions)
    r = run_cli(
        "train", "--no-verbatim", "--model-dir", str(tmp_path / "b"), str(capture("redis.pcap"))
    )
    assert r.returncode == 0, r.stderr
    header, row = (line.split() for line in r.stdout.splitlines()[:2])
    cells = dict(zip(header, row, strict=True))
    assert cells["verbatim"] == "0" and int(cells["bucketed"]) > 0
    model = json.loads((tmp_path / "b" / "tcp-6379.json").read_text())
    assert model["options"]["learn"]["verbatim"] is False


def test_bad_option_values_are_refused(tmp_path):
    r = run_cli("train", "--jobs", "0", "--model-dir", str(tmp_path), str(capture("redis.pcap")))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    for flag in ("--max-turns", "--max-bucket", "--max-bucket-bytes", "--max-message-bytes"):
        r = run_cli("train", flag, "0", "--model-dir", str(tmp_path), str(capture("redis.pcap")))
        assert r.returncode == 2 and "Traceback" not in r.stderr, flag
        assert r.stderr.startswith("scriptgen: bad option") and flag[2:].replace("-", "_") in (
            r.stderr.replace("-", "_")
        )
    assert not any(tmp_path.iterdir())
    afile = tmp_path / "models"
    afile.write_text("not a directory")
    r = run_cli("train", "--model-dir", str(afile), str(capture("redis.pcap")))
    assert r.returncode == 1 and r.stderr.strip().endswith("--model-dir is not a directory")
    assert afile.read_text() == "not a directory"


# -- show ------------------------------------------------------------------------


@pytest.fixture()
def learned(tmp_path) -> Path:
    train(
        [capture("ftp.pcap")],
        tmp_path / "m",
        standin_options(),
        analyser=make_standin(),
        ports=[21],
    )
    return tmp_path / "m"


def test_show_text_is_a_tree_with_patterns_and_answers(learned, capsys):
    assert main(["show", str(learned)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("tcp/21: ")
    assert lines[1] == "  learned from: ftp.pcap"
    assert lines[2] == "  conversations: 50 learned"
    assert lines[3].strip().startswith('[0] samples=50 answer="220')
    edges = [ln for ln in lines if "-->" in ln]
    assert edges and all(ln.startswith("    ") for ln in edges)  # children are indented
    assert any('"USER ' in ln for ln in edges)


def test_show_json_is_the_model_file(learned, capsys):
    assert main(["show", "--format", "json", str(learned)]) == 0
    out = capsys.readouterr().out
    assert out == (learned / "tcp-21.json").read_text()
    json.loads(out)


def test_show_port_filter_and_missing_models(learned, tmp_path, capsys):
    assert main(["show", "--port", "80", str(learned)]) == 1
    assert "no models" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "udp-53.json").write_text("[]")
    assert main(["show", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert "udp-53.json" in err and len(err.strip().splitlines()) == 1


def test_show_escapes_hostile_bytes(tmp_path, capsys):
    save_machine(nasty_machine(), tmp_path)
    assert main(["show", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert text.isprintable() or all(c.isprintable() or c == "\n" for c in text)
    assert len(text.splitlines()) == 4
    assert main(["show", "--format", "json", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["port"] == 9999


@pytest.mark.integration
def test_dot_output_renders_with_graphviz(tmp_path, capsys, learned):
    dot = shutil.which("dot")
    if dot is None:
        pytest.skip("graphviz dot not installed")
    save_machine(nasty_machine(), learned)
    assert main(["show", "--format", "dot", str(learned)]) == 0
    src = capsys.readouterr().out
    r = subprocess.run([dot, "-Tsvg"], input=src, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert "<svg" in r.stdout
    # every state is a node, every transition an edge, and each port a signal opens
    # (session dependencies; those machines are not shown) one more node
    states = load_states(learned / "tcp-21.json")
    opened = {sig["opens"] for s in states for sig in s.get("signals", [])}
    assert r.stdout.count('class="node"') == 3 + len(states) + len(opened)
    assert "quoted" in r.stdout and "USER" in r.stdout


def load_states(path: Path) -> list:
    return json.loads(path.read_text())["states"]


def test_render_json_of_several_machines_is_an_array(learned):
    from scriptgen.render import render_json

    m = nasty_machine()
    out = json.loads(render_json([m, m]))
    assert isinstance(out, list) and len(out) == 2
    assert render_json([m]) == dumps(m)


def test_unreachable_and_cyclic_states_do_not_loop(capsys):
    from scriptgen.render import render_text

    m = Machine("udp", 1)
    s = m.new_state()
    s.transitions.append(Transition(Pattern.literal(b"x"), 0))
    m.states[0].transitions.append(Transition(Pattern.literal(b"y"), s.id))
    m.states[5] = State(5)
    out = render_text(m)
    assert "(see above)" in out and "(unreachable) [5]" in out


def test_progress_display_draws_on_stderr_only_when_enabled(capsys):
    from scriptgen.commands.train import ProgressDisplay

    shown = ProgressDisplay(enabled=True)
    shown("read", 0, 2, "a.pcap")
    shown("read", 2, 2, "b.pcap: 256 conversations")
    shown("refine", 3, None, "tcp/21: 4 bucketed")
    shown.close()
    out = capsys.readouterr()
    assert out.out == ""
    assert "reading" in out.err and "2/2" in out.err and "refining" in out.err
    hidden = ProgressDisplay(enabled=False)
    hidden("read", 1, 2, "a.pcap")
    hidden.close()
    assert capsys.readouterr() == ("", "")


def test_region_flags_mirror_region_options():
    needs_regions()
    import dataclasses

    from scriptgen.commands.train import REGION_FLAGS
    from scriptgen.learn.regions import RegionOptions

    assert set(REGION_FLAGS) == {f.name for f in dataclasses.fields(RegionOptions)}
    # the defaults the help shows are the real ones
    assert {k: d for k, (d, _) in REGION_FLAGS.items()} == dataclasses.asdict(RegionOptions())


def test_region_options_are_converted_and_bad_values_refused(tmp_path):
    needs_regions()
    from scriptgen.cli import build_parser
    from scriptgen.commands.train import build_options

    args = build_parser().parse_args(
        [
            "train",
            "--model-dir",
            "d",
            "x.pcap",
            "--min-cluster-size",
            "1",
            "--distance-threshold",
            "0.25",
            "--keep-generic",
            "no",
            "--linkage",
            "single",
            "--max-bucket",
            "7",
            "--no-widen",
            "--no-regeneralise",
            "--max-examples",
            "3",
        ]
    )
    options = build_options(args)
    assert options.region.min_cluster_size == 1 and options.region.distance_threshold == 0.25
    assert options.region.keep_generic is False and options.region.linkage == "single"
    assert options.learn.max_bucket == 7 and options.learn.widen is False
    assert options.learn.regeneralise is False and options.learn.max_examples == 3
    args = build_parser().parse_args(
        [
            "train",
            "--model-dir",
            "d",
            "x.pcap",
            "--region",
            "max-samples=9",
            "--region",
            "workers=2",
        ]
    )
    assert build_options(args).region.max_samples == 9 and build_options(args).region.workers == 2
    for bad in (
        ["--distance-threshold", "2"],
        ["--min-cluster-size", "many"],
        ["--keep-generic", "maybe"],
        ["--region", "no_such_option=1"],
        ["--region", "max_samples"],
        ["--max-bucket", "0"],
        ["--max-examples", "-1"],
    ):
        r = run_cli("train", "--model-dir", str(tmp_path), str(capture("redis.pcap")), *bad)
        assert r.returncode == 2 and "Traceback" not in r.stderr and "bad option" in r.stderr
