"""The verbatim flag of a transition in the model file: round trip, old files, bad values."""

from __future__ import annotations

import json

import pytest

from scriptgen.model import Machine, ModelError, Pattern, Region, Transition, load_machine
from scriptgen.model.store import machine_from_json, machine_to_json, save_machine


def machine_with(verbatim: bool, pattern: Pattern) -> Machine:
    m = Machine("tcp", 7000)
    target = m.new_state()
    m.states[0].transitions.append(Transition(pattern, target.id, 1, [b"PING"], verbatim))
    return m


def test_verbatim_round_trips_and_is_written_only_when_set():
    m = machine_with(True, Pattern.literal(b"PING"))
    obj = machine_to_json(m)
    assert obj["states"][0]["transitions"][0]["verbatim"] is True
    (t,) = machine_from_json(json.loads(json.dumps(obj))).states[0].transitions
    assert t.verbatim and t.pattern == Pattern.literal(b"PING")
    plain = machine_to_json(machine_with(False, Pattern.literal(b"PING")))
    assert "verbatim" not in plain["states"][0]["transitions"][0]  # older files look the same


@pytest.mark.parametrize(
    "value,pattern",
    [("yes", Pattern.literal(b"PING")), (True, Pattern((Region(b"PI"), Region.mutating(2, 2))))],
)
def test_a_bad_verbatim_flag_is_one_clear_error(tmp_path, value, pattern):
    m = machine_with(False, pattern)
    path = save_machine(m, tmp_path)
    obj = json.loads(path.read_text())
    obj["states"][0]["transitions"][0]["verbatim"] = value
    path.write_text(json.dumps(obj))
    with pytest.raises(ModelError, match="tcp-7000.json.*verbatim"):
        load_machine(path)


def test_the_exception_flag_round_trips_and_a_bad_one_is_one_clear_error(tmp_path):
    """Exceptions (answersplit: a request kept with its own answer) carry their flag."""
    m = machine_with(False, Pattern.literal(b"PING"))
    m.states[0].transitions[0].exception = True
    obj = machine_to_json(m)
    assert obj["states"][0]["transitions"][0]["exception"] is True
    (t,) = machine_from_json(json.loads(json.dumps(obj))).states[0].transitions
    assert t.exception and not t.verbatim
    plain = machine_to_json(machine_with(False, Pattern.literal(b"PING")))
    assert "exception" not in plain["states"][0]["transitions"][0]
    path = save_machine(m, tmp_path)
    bad = json.loads(path.read_text())
    bad["states"][0]["transitions"][0]["exception"] = 1
    path.write_text(json.dumps(bad))
    with pytest.raises(ModelError, match="tcp-7000.json.*exception"):
        load_machine(path)
