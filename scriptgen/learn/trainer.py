"""Training: captures → dialogs per (protocol, port) → update, refine, consolidate → model files.

Deterministic by construction: conversations are sorted before learning,
every container written is sorted, and provenance holds only facts derived
from the captures (names, sha256, counts) and the options -- no clock. The
same captures and options give byte-identical files, whatever ``jobs`` is.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scriptgen import __version__
from scriptgen.learn.answersplit import (
    drop_incomplete_exceptions,
    inherit_dependencies,
    split_by_answer,
)
from scriptgen.learn.consolidate import consolidate
from scriptgen.learn.content import infer_dependencies
from scriptgen.learn.dialog import Dialog, DialogStats, group_dialogs
from scriptgen.learn.phases import Analyser, Learner, LearnOptions, StepReport
from scriptgen.learn.sessions import SessionOptions, SessionRecorder, SessionReport
from scriptgen.learn.sessions import apply as apply_signals
from scriptgen.learn.sessions import infer as infer_sessions
from scriptgen.model import Machine, load_model_dir, save_machine
from scriptgen.model.store import machine_from_json, machine_to_json
from scriptgen.trace.errors import TraceStats
from scriptgen.trace.types import Conversation

Key = tuple[str, int]
# progress(stage, done, total, detail): stage is "read", "learn" or "refine"; total may be None.
Progress = Callable[[str, int, "int | None", str], None]


@dataclass(frozen=True)
class TrainOptions:
    """Everything that changes what is learned; written into each model."""

    learn: LearnOptions = field(default_factory=LearnOptions)
    region: Any = None  # scriptgen.learn.regions.RegionOptions; None: its defaults
    include_midstream: bool = False  # learn from connections whose start was not captured
    max_turns: int = 512  # requests per dialog learned (deeper ones are cut)
    sessions: SessionOptions = field(default_factory=SessionOptions)  # session dependencies
    # Secret key of the full-bucket sample hash (phases._sample_key); not written into
    # models. Empty offline (training is deterministic); the proxy's online learning
    # passes its spool's secret, since there the dialogs come from attackers.
    sample_salt: bytes = field(default=b"", repr=False)

    def region_options(self) -> Any:
        if self.region is not None:
            return self.region
        from scriptgen.learn.regions import RegionOptions

        return RegionOptions()

    def to_json(self) -> dict[str, Any]:
        return {
            "learn": self.learn.to_json(),
            "region": self.region_options().to_json(),
            "include_midstream": self.include_midstream,
            "max_turns": self.max_turns,
            "sessions": self.sessions.to_json(),
        }


@dataclass
class PortReport:
    """Summary line of one machine after training."""

    protocol: str
    port: int
    states: int
    transitions: int
    bucketed: int
    used: int  # conversations learned in this run
    ignored: int  # conversations of this port that carried no dialog
    iterations: int
    dropped: int  # suffixes dropped because a bucket was full (cumulative)
    saved: bool = True  # False: nothing to learn, no model file written
    verbatim: int = 0  # transitions that are one recorded request (of ``transitions``)


@dataclass
class TrainReport:
    ports: list[PortReport] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    captures: list[dict[str, str]] = field(default_factory=list)
    sessions: SessionReport = field(default_factory=SessionReport)
    # (capture path, its damage reports) for each capture with damaged packets:
    # what was learned from it is partial, and the user must be told.
    damaged: list[tuple[str, TraceStats]] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_analyser(region_options: Any) -> Analyser:
    """Region analysis with its options bound (imported late: it pulls numpy/scipy)."""
    from scriptgen.learn.regions import analyse

    def run(samples: Sequence[bytes], answers: Sequence[bytes | None]) -> Sequence[Any]:
        return analyse(samples, region_options, answers)

    return run


def learn_machine(
    machine: Machine,
    dialogs: Sequence[Dialog],
    options: TrainOptions,
    analyser: Analyser | None = None,
    on_step: Callable[[StepReport], None] | None = None,
) -> int:
    """Update ``machine`` with ``dialogs``, refine until stable, split transitions whose
    answers a region's value predicts (scriptgen.learn.answersplit), consolidate, infer
    the content dependencies (from these dialogs: past ones are not kept); returns the
    step count."""
    learner = Learner(
        machine,
        analyser or default_analyser(options.region_options()),
        options.learn,
        options.sample_salt,
    )
    learner.add(dialogs)
    steps = learner.refine(on_step)
    consolidate(machine)
    infer_dependencies(machine, dialogs)
    # Requests alike, answers not: split on the region that predicts the answer. The
    # generic states keep the dependencies inferred from all their samples above (no
    # dialog reaches them now); split states prove their own or inherit the parent's.
    parents = split_by_answer(machine, dialogs, exceptions=options.learn.verbatim)
    if parents:
        consolidate(machine)
        infer_dependencies(machine, dialogs)
        inherit_dependencies(machine, parents)
        drop_incomplete_exceptions(machine, parents)
    return len(steps)


def _learn_json(
    machine_json: dict[str, Any],
    dialogs: list[Dialog],
    options: TrainOptions,
    analyser: Analyser | None,
) -> tuple[dict[str, Any], int]:
    """Worker-process entry: machines travel as JSON (plain data, same result as in-process)."""
    machine = machine_from_json(machine_json)
    steps = learn_machine(machine, dialogs, options, analyser)
    return machine_to_json(machine), steps


def _read_sources(
    sources: Iterable[Conversation | str | os.PathLike[str]],
    progress: Progress | None,
    captures: list[dict[str, str]],
    seen_by: dict[Key, set[int]],
    damaged: list[tuple[str, TraceStats]],
) -> Iterable[Conversation]:
    """Conversations of every source; capture files are hashed and remembered per port,
    and those with damaged packets are listed in ``damaged``."""
    items = list(sources)
    files = [s for s in items if not isinstance(s, Conversation)]
    done = 0
    for item in items:
        if isinstance(item, Conversation):
            yield item
            continue
        from scriptgen.trace import read_conversations  # the trace stage; TraceError propagates

        path = Path(item)
        captures.append({"file": path.name, "sha256": sha256_file(path)})
        index = len(captures) - 1
        if progress:
            progress("read", done, len(files), path.name)
        stats = TraceStats()
        for n, conv in enumerate(read_conversations(path, stats=stats), start=1):
            seen_by.setdefault((conv.protocol, conv.server.port), set()).add(index)
            if progress and n % 256 == 0:
                progress("read", done, len(files), f"{path.name}: {n} conversations")
            yield conv
        if stats.damaged:
            damaged.append((os.fspath(item), stats))
        done += 1
        if progress:
            progress("read", done, len(files), path.name)


def _merge_provenance(
    machine: Machine,
    captures: list[dict[str, str]],
    used: int,
    ignored: Counter[str],
    options: TrainOptions,
) -> None:
    prov = machine.provenance
    known = {(c["file"], c["sha256"]) for c in prov.get("captures", [])}
    known.update((c["file"], c["sha256"]) for c in captures)
    prov["captures"] = [{"file": f, "sha256": h} for f, h in sorted(known)]
    counts = prov.setdefault("counts", {})
    counts["conversations"] = int(counts.get("conversations", 0)) + used
    old_ignored = Counter({str(k): int(v) for k, v in counts.get("ignored", {}).items()})
    old_ignored.update(ignored)
    counts["ignored"] = dict(sorted(old_ignored.items()))
    counts["trainings"] = int(counts.get("trainings", 0)) + 1
    prov["scriptgen"] = __version__
    machine.options = options.to_json()


def train(
    sources: Iterable[Conversation | str | os.PathLike[str]],
    model_dir: str | os.PathLike[str],
    options: TrainOptions | None = None,
    *,
    ports: Iterable[int] | None = None,
    protocol: str | None = None,
    jobs: int = 1,
    progress: Progress | None = None,
    analyser: Analyser | None = None,
) -> TrainReport:
    """Learn from captures (or conversations) into ``model_dir``, updating the machines there.

    The existing models are loaded first (a damaged one raises ModelError
    before anything is written); a capture that cannot be read raises
    TraceError before anything is written.
    """
    options = options or TrainOptions()
    existing = load_model_dir(model_dir)
    report = TrainReport()
    seen_by: dict[Key, set[int]] = {}
    stats = DialogStats()
    # Session inference sees every conversation of every port, refused and
    # unanswered attempts included (the dialogs leave those out).
    recorder = SessionRecorder(options.sessions)
    groups = group_dialogs(
        recorder.tee(_read_sources(sources, progress, report.captures, seen_by, report.damaged)),
        ports=ports,
        protocol=protocol,
        include_midstream=options.include_midstream,
        max_turns=options.max_turns,
        stats=stats,
    )
    # A port seen only with refused/empty connections gets no model (serving it
    # would open a port the real host kept closed), but it is reported.
    keys = sorted(set(groups) | (set(stats.ignored) & set(existing)))
    machines = {k: existing.get(k) or Machine(k[0], k[1]) for k in keys}
    steps = _learn_all(machines, groups, options, jobs, progress, analyser)
    report.sessions = infer_sessions(recorder.contacts, machines, options.sessions)
    report.sessions.dropped = recorder.dropped
    apply_signals(report.sessions.findings, machines)
    for key in sorted(set(stats.ignored) - set(keys)):
        report.ports.append(
            PortReport(key[0], key[1], 0, 0, 0, 0, stats.ignored_total(key), 0, 0, saved=False)
        )
    for key in keys:
        machine = machines[key]
        caps = [report.captures[i] for i in sorted(seen_by.get(key, ()))]
        _merge_provenance(
            machine, caps, stats.used[key], stats.ignored.get(key, Counter()), options
        )
        report.files.append(save_machine(machine, model_dir))
        c = machine.counts()
        report.ports.append(
            PortReport(
                key[0],
                key[1],
                c["states"],
                c["transitions"],
                c["bucketed"],
                stats.used[key],
                stats.ignored_total(key),
                steps.get(key, 0),
                sum(s.dropped for s in machine.states.values()),
                verbatim=c["verbatim"],
            )
        )
    report.ports.sort(key=lambda p: (p.protocol, p.port))
    return report


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork when this process runs one thread (fast; callers need no ``__main__``
    guard); otherwise forkserver, so workers never inherit other threads' locks
    (a progress bar's monitor, a reactor), at the price of importing afresh."""
    if threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver")


PARALLEL_MIN_DIALOGS = 16  # smaller ports are learned in-process: a worker costs more


def _learn_all(
    machines: dict[Key, Machine],
    groups: dict[Key, list[Dialog]],
    options: TrainOptions,
    jobs: int,
    progress: Progress | None,
    analyser: Analyser | None,
) -> dict[Key, int]:
    """Learn every port; with jobs > 1 the big ports go to different processes.

    The result does not depend on where a port was learned (same function,
    machines travel as JSON). A custom ``analyser`` must then be picklable (a
    module-level function or an instance of a module-level class).
    """
    keys = sorted(groups)
    steps: dict[Key, int] = {}
    done = 0
    if progress:
        progress("learn", 0, len(keys), "")
    big = [k for k in keys if len(groups[k]) >= PARALLEL_MIN_DIALOGS]
    if jobs <= 1 or len(big) <= 1:
        big = []
    small = [k for k in keys if k not in big]
    for key in small:

        def on_step(r: StepReport, key: Key = key) -> None:
            if progress:
                progress("refine", r.iteration, None, f"{key[0]}/{key[1]}: {r.bucketed} bucketed")

        steps[key] = learn_machine(machines[key], groups[key], options, analyser, on_step)
        done += 1
        if progress:
            progress("learn", done, len(keys), f"{key[0]}/{key[1]}")
    if not big:
        return steps
    context = _pool_context()
    with ProcessPoolExecutor(max_workers=min(jobs, len(big)), mp_context=context) as pool:
        futures = {
            key: pool.submit(
                _learn_json, machine_to_json(machines[key]), groups[key], options, analyser
            )
            for key in big
        }
        for key in big:
            machine_json, steps[key] = futures[key].result()
            machines[key] = machine_from_json(machine_json)
            done += 1
            if progress:
                progress("learn", done, len(keys), f"{key[0]}/{key[1]}")
    return steps
