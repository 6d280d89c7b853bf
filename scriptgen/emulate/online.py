"""Learning the recorded dialogs while the emulator keeps serving.

Why a worker process: region analysis is CPU-bound Python and numpy; on the
reactor thread it would stall every connection, and in a thread it would
still hold the GIL for long stretches. A one-process ``ProcessPoolExecutor``
(spawned, not forked: the parent runs a reactor and threads) runs the
ordinary trainer (``scriptgen.learn.trainer.train``: update + refinement on
the existing models, atomic save); a reactor thread only waits for the
result. The model reload path then swaps the new files in.

One batch at a time (the trainer reads and writes the model directory).
A batch that fails is retried file by file; a file that still fails is
moved to ``failed/`` so it cannot block the queue forever.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from scriptgen.emulate.recorder import Spool

log = Logger(namespace="scriptgen")

Key = tuple[str, int]
_Sig = tuple[str, int, int, str]  # protocol, port, state, pattern json


def _transitions(model_dir: Path) -> dict[_Sig, dict[str, Any]]:
    import json

    from scriptgen.model import load_model_dir

    out: dict[_Sig, dict[str, Any]] = {}
    for (proto, port), machine in load_model_dir(model_dir).items():
        for state in machine.states.values():
            for t in state.transitions:
                sig = (proto, port, state.id, json.dumps(t.pattern.to_json(), sort_keys=True))
                out[sig] = {
                    "port": f"{proto}/{port}",
                    "state": state.id,
                    "target": t.target,
                    "pattern": t.pattern.describe(),
                    "regex": t.pattern.compiled.pattern.decode("latin-1"),
                    "fixed_bytes": t.pattern.specificity,
                }
    return out


def learn_files(model_dir: str, paths: list[str]) -> dict[str, Any]:
    """Worker entry: update + refine the models with the recordings; what is new.

    Returns the new transitions (patterns usable as signatures) and per
    port counts. Raises what the trainer raises (TraceError, ModelError).
    """
    from scriptgen.learn.trainer import train

    directory = Path(model_dir)
    before = _transitions(directory) if directory.is_dir() else {}
    report = train(paths, directory)
    after = _transitions(directory)
    new = [after[k] for k in sorted(set(after) - set(before))]
    ports = [
        {"port": f"{p.protocol}/{p.port}", "states": p.states, "transitions": p.transitions,
         "bucketed": p.bucketed, "conversations": p.used}
        for p in report.ports
    ]  # fmt: skip
    return {"new": new, "ports": ports}


class OnlineLearner:
    """Queues pending recordings and learns them one batch at a time off the reactor."""

    def __init__(
        self,
        model_dir: Path,
        spool: Spool,
        emit: Callable[..., None],
        defer_to_thread: Callable[..., Any],
        reload: Callable[[], Any],
        worker: Callable[[str, list[str]], dict[str, Any]] | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.spool = spool
        self.emit = emit
        self.defer_to_thread = defer_to_thread
        self.reload = reload
        self.worker = worker  # None: the trainer in a worker process
        self.queue: list[Path] = []
        self.busy = False
        self.batches = 0  # finished batches (tests wait on it)
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, paths: list[Path]) -> None:
        for p in paths:
            if p not in self.queue:
                self.queue.append(p)
        self._next()

    def _next(self) -> None:
        if self.busy or not self.queue:
            return
        self.busy = True
        batch, self.queue = self.queue, []
        d = self.defer_to_thread(self._learn, batch)
        d.addCallback(self._learned, batch)
        d.addErrback(self._broken, batch)
        d.addBoth(self._done)

    def _learn(self, batch: list[Path]) -> tuple[dict[str, Any] | None, list[tuple[Path, str]]]:
        """Thread: the whole batch; when it fails, file by file (a bad file alone fails)."""
        files = [str(p) for p in batch if p.exists()]
        if not files:
            return None, []
        try:
            return self._run(files), []
        except Exception as e:  # noqa: BLE001 -- the worker's failure is reported, not raised
            if len(files) == 1:
                return None, [(Path(files[0]), _problem(e))]
        merged: dict[str, Any] = {"new": [], "ports": []}
        bad: list[tuple[Path, str]] = []
        for f in files:
            try:
                result = self._run([f])
            except Exception as e:  # noqa: BLE001
                bad.append((Path(f), _problem(e)))
                continue
            merged["new"] += result["new"]
            # each run reports the ports it touched: keep every port, latest counts
            by_port = {p["port"]: p for p in merged["ports"] + result["ports"]}
            merged["ports"] = [by_port[k] for k in sorted(by_port)]
        return merged, bad

    def _run(self, files: list[str]) -> dict[str, Any]:
        if self.worker is not None:
            return self.worker(str(self.model_dir), files)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool.submit(learn_files, str(self.model_dir), files).result()

    def _learned(
        self, result: tuple[dict[str, Any] | None, list[tuple[Path, str]]], batch: list[Path]
    ) -> None:
        report, bad = result
        failed = {p for p, _ in bad}
        for path, problem in bad:
            self.emit("scriptgen.proxy.learn_failed", file=path.name, error=problem)
            self._settle(path, learned=False)
        if report is None:
            return
        done = [p for p in batch if p not in failed and p.exists()]
        for p in done:
            self._settle(p, learned=True)
        self.emit(
            "scriptgen.proxy.learned",
            files=[p.name for p in done],
            new_transitions=len(report["new"]),
            ports=report["ports"],
        )
        for t in report["new"]:
            self.emit("scriptgen.proxy.signature", **t)
        self.reload()

    def _settle(self, path: Path, learned: bool) -> None:
        try:
            self.spool.settle(path, learned)
        except OSError as e:
            log.warn("scriptgen: cannot move {path}: {e}", path=str(path), e=str(e))

    def _broken(self, failure: Any, batch: list[Path]) -> None:
        """Unexpected (the thread itself failed): keep the files pending for the next start."""
        self.emit(
            "scriptgen.proxy.learn_failed",
            files=[p.name for p in batch],
            error=failure.getErrorMessage(),
        )

    def _done(self, _: Any) -> None:
        self.busy = False
        self.batches += 1
        self._next()

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _problem(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"[:500]
