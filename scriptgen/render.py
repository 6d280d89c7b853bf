"""Human views of learned machines: indented text tree, Graphviz dot, model JSON.

Shared by ``scriptgen show`` and anything else that displays a model (the
emulator's logs, for instance). Attacker bytes are only ever shown escaped:
printable ASCII as text, anything else as hex, always shortened.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from scriptgen.model import Machine, State, Transition
from scriptgen.model.store import dumps, machine_to_json

PRINTABLE = frozenset(range(32, 127)) | {9, 10, 13}


def abbreviate(data: bytes, limit: int = 40) -> str:
    """Bytes for display: quoted escaped text when printable, else 0x-hex; cut at ``limit`` bytes."""
    if not data:
        return "(silent)"
    short = data[:limit]
    more = f"…(+{len(data) - limit} B)" if len(data) > limit else ""
    if all(b in PRINTABLE for b in short):
        text = short.decode("ascii").encode("unicode_escape").decode("ascii").replace('"', '\\"')
        return f'"{text}"{more}'
    return f"0x{short.hex()}{more}"


def state_summary(state: State, answer_limit: int = 40) -> str:
    parts = [
        f"[{state.id}]",
        f"samples={state.samples}",
        f"answer={abbreviate(state.answer, answer_limit)}",
    ]
    if state.end.value != "open":
        parts.append(f"end={state.end.value}")
    if state.bucket:
        parts.append(f"bucket={len(state.bucket)}")
    return " ".join(parts)


def dependency_line(dep: dict[str, Any]) -> str:
    """One line for ``scriptgen show``: answer bytes a..b ← source, transform."""
    kind = dep.get("kind", "?")
    at = dep.get("at", 0)
    n = dep.get("len", dep.get("width", 0))
    span = f"answer[{at}..{at + n - 1}]" if isinstance(at, int) and isinstance(n, int) else "?"
    if kind == "copy":
        anchor = "" if dep.get("anchor", "start") == "start" else " from end"
        extra = " (borrowed)" if dep.get("borrowed") else ""
        return (
            f"{span} <- request {dep.get('request')} region {dep.get('region')} "
            f"offset {dep.get('offset')}{anchor}, {dep.get('order', 'same')}{extra}"
        )
    if kind == "copy-region":
        return f"{span} <- request {dep.get('request')} region {dep.get('region')}, whole (length varies)"
    if kind == "answer":
        return f"{span} <- answer {dep.get('answer')} offset {dep.get('offset')}, same"
    if kind == "length":
        return (
            f"{span} = length(answer) - {dep.get('base')}, {dep.get('width')} B {dep.get('endian')}"
        )
    if kind == "clock":
        return f"{span} = clock ({dep.get('unit')}, {dep.get('endian')})"
    if kind == "random":
        return f"{span} = random per answer"
    return f"{span} {kind}"


def signal_lines(state: State) -> list[str]:
    """One line per signal a state emits (session dependencies): what it opens, for how long."""
    lines = []
    for sig in state.signals:
        if not isinstance(sig, dict):
            continue
        evidence = ", ".join(f"{k}={sig[k]}" for k in ("mode", "samples", "sources") if k in sig)
        lines.append(
            f"=> signal: opens {sig.get('opens', '?')}{_drawn(sig)} for {sig.get('for', '?')}s"
            f" ({evidence})"
        )
    return lines


def _drawn(sig: dict) -> str:
    """For a port drawn per answer (``announce``): where the answer spells it, and how."""
    where = sig.get("announce")
    if not isinstance(where, dict):
        return ""
    at, size, form = where.get("at", "?"), where.get("len", "?"), where.get("form", "?")
    return f" (port drawn per answer, at {at}+{size}, {form})"


def edge_label(t: Transition, max_fixed: int = 24) -> str:
    """A transition for display: its regions and sample count; a verbatim one
    (one recorded request, nothing generalised) is marked ``exact``, an
    exception (a request kept with its own answer) ``exception``."""
    kind = "exact " if t.verbatim else "exception " if t.exception else ""
    return f"{kind}{t.pattern.describe(max_fixed)} ({t.samples})"


def _walk(machine: Machine) -> Iterator[tuple[int, State, str | None, bool]]:
    """Depth-first (depth, state, edge label, already shown) from the root; safe on cycles and DAGs."""
    shown: set[int] = set()
    stack: list[tuple[int, int, str | None]] = [(0, machine.root, None)]
    while stack:
        depth, sid, label = stack.pop()
        state = machine.states[sid]
        again = sid in shown
        yield depth, state, label, again
        if again:
            continue
        shown.add(sid)
        for t in reversed(state.transitions):
            stack.append((depth + 1, t.target, edge_label(t)))


def render_text(machine: Machine, answer_limit: int = 40) -> str:
    """An indented tree: each state with its evidence, each edge with its pattern."""
    c = machine.counts()
    lines = [
        f"{machine.protocol}/{machine.port}: {c['states']} states, {c['transitions']} transitions "
        f"({c['verbatim']} exact, {c['exceptions']} exceptions), {c['bucketed']} suffixes in buckets"
    ]
    caps = machine.provenance.get("captures", [])
    if caps:
        lines.append("  learned from: " + ", ".join(str(x.get("file", "?")) for x in caps))
    counts = machine.provenance.get("counts", {})
    if isinstance(counts, dict) and "conversations" in counts:
        ignored = counts.get("ignored", {})
        why = ", ".join(f"{k} {v}" for k, v in ignored.items()) if isinstance(ignored, dict) else ""
        lines.append(
            f"  conversations: {counts['conversations']} learned"
            + (f", ignored: {why}" if why else "")
        )
    dropped = sum(s.dropped for s in machine.states.values())
    if dropped:
        lines.append(f"  dropped (bucket bounds): {dropped} suffixes")
    for depth, state, label, again in _walk(machine):
        pad = "  " * (depth + 1)
        edge = f"-- {label} --> " if label is not None else ""
        body = f"[{state.id}] (see above)" if again else state_summary(state, answer_limit)
        lines.append(f"{pad}{edge}{body}")
        if state.dependencies and not again:
            lines += [f"{pad}    dep {dependency_line(d)}" for d in state.dependencies]
        if not again:
            lines.extend(f"{pad}    {line}" for line in signal_lines(state))
    # States no transition reaches (should not happen; shown so nothing is hidden).
    reached = {s.id for _, s, _, _ in _walk(machine)}
    for sid in sorted(set(machine.states) - reached):
        lines.append(f"  (unreachable) {state_summary(machine.states[sid], answer_limit)}")
    return "\n".join(lines) + "\n"


def dot_escape(text: str) -> str:
    """Escape for a double-quoted dot string: backslashes first (dot reads \\n, \\l ... as escapes)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_dot(machines: Sequence[Machine], answer_limit: int = 24) -> str:
    """One Graphviz digraph; each machine is a cluster, each state a box with its answer."""
    out = ["digraph scriptgen {", "  rankdir=LR;", '  node [shape=box, fontname="monospace"];']
    out.append('  edge [fontname="monospace"];')
    for i, m in enumerate(machines):
        out.append(f"  subgraph cluster_{i} {{")
        out.append(f'    label="{dot_escape(f"{m.protocol}/{m.port}")}";')
        for sid in sorted(m.states):
            s = m.states[sid]
            label = f"{s.id}  n={s.samples}\n{abbreviate(s.answer, answer_limit)}"
            if s.end.value != "open":
                label += f"\nend={s.end.value}"
            if s.bucket:
                label += f"\nbucket={len(s.bucket)}"
            out.append(f'    m{i}s{sid} [label="{dot_escape(label)}"];')
        for sid in sorted(m.states):
            for t in m.states[sid].transitions:
                label = edge_label(t, max_fixed=16)
                out.append(f'    m{i}s{sid} -> m{i}s{t.target} [label="{dot_escape(label)}"];')
        out.append("  }")
    out.extend(_signal_edges(machines))
    out.append("}")
    return "\n".join(out) + "\n"


def _signal_edges(machines: Sequence[Machine]) -> list[str]:
    """Signals as dashed edges from the emitting state to the root of the port they open."""
    roots = {f"{m.protocol}/{m.port}": f"m{i}s{m.root}" for i, m in enumerate(machines)}
    out = []
    for i, m in enumerate(machines):
        for sid in sorted(m.states):
            for sig in m.states[sid].signals:
                if not isinstance(sig, dict):
                    continue
                opens = str(sig.get("opens", "?"))
                target = roots.get(opens)
                if target is None:  # the opened port's machine is not shown: a plain node
                    target = f'"port {dot_escape(opens)}"'
                    out.append(f"  {target} [shape=ellipse];")
                label = dot_escape(f"signal: opens {opens}{_drawn(sig)} for {sig.get('for', '?')}s")
                out.append(f'  m{i}s{sid} -> {target} [style=dashed, color=red, label="{label}"];')
    return out


def render_json(machines: Sequence[Machine]) -> str:
    """One machine: exactly its model file; several: a JSON array of model objects."""
    if len(machines) == 1:
        return dumps(machines[0])
    import json

    return json.dumps([machine_to_json(m) for m in machines], indent=1, sort_keys=True) + "\n"
