"""``scriptgen show`` displays signals: under the state (text), an edge to B's machine (dot)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from scriptgen.model import Machine, Pattern, Transition
from scriptgen.render import render_dot, render_text

SIGNAL = {"kind": "session", "opens": "tcp/4444", "for": 5.0, "mode": "refused", "samples": 7}


def machines() -> tuple[Machine, Machine]:
    a = Machine("tcp", 9139)
    s = a.new_state()
    s.signals = [dict(SIGNAL)]
    a.states[0].transitions.append(Transition(Pattern.literal(b"EXEC\r\n"), s.id, 7))
    return a, Machine("tcp", 4444)


def test_text_shows_the_signal_under_its_state() -> None:
    a, _ = machines()
    lines = render_text(a).splitlines()
    at = next(i for i, line in enumerate(lines) if '"EXEC\\r\\n"' in line)
    assert "=> signal: opens tcp/4444 for 5.0s (mode=refused, samples=7)" in lines[at + 1]


def test_dot_draws_an_edge_to_the_opened_machine_root() -> None:
    a, b = machines()
    dot = render_dot([a, b])
    assert 'm0s1 -> m1s0 [style=dashed, color=red, label="signal: opens tcp/4444 for 5.0s"]' in dot
    alone = render_dot([a])  # B's machine not shown: a plain node stands for the port
    assert '"port tcp/4444" [shape=ellipse]' in alone and 'm0s1 -> "port tcp/4444"' in alone
    if shutil.which("dot") is None:
        pytest.skip("graphviz not installed")
    for text in (dot, alone):
        subprocess.run(["dot", "-Tsvg"], input=text.encode(), capture_output=True, check=True)


def test_hostile_signal_entries_do_not_break_rendering() -> None:
    a, b = machines()
    a.states[1].signals += ["junk", {"opens": 'x" -> y [label="', "for": None}]
    render_text(a)
    dot = render_dot([a, b])
    assert 'x\\" -> y' in dot
    if shutil.which("dot") is not None:
        subprocess.run(["dot", "-Tsvg"], input=dot.encode(), capture_output=True, check=True)


def test_a_port_drawn_per_answer_says_where_the_answer_spells_it() -> None:
    a, b = machines()
    a.states[1].signals = [
        {**SIGNAL, "mode": "announced", "announce": {"at": 39, "len": 5, "form": "decimal"}}
    ]
    drawn = "opens tcp/4444 (port drawn per answer, at 39+5, decimal) for 5.0s"
    assert f"=> signal: {drawn} (mode=announced, samples=7)" in render_text(a)
    assert f'label="signal: {drawn}"' in render_dot([a, b])
    a.states[1].signals[0]["announce"] = ["not", "a", "dict"]  # hostile: shown as a plain one
    assert "=> signal: opens tcp/4444 for 5.0s" in render_text(a)
