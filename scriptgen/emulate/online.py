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
_Sig = tuple[str, int, str, str]  # protocol, port, patterns to the state, pattern json


def _transitions(model_dir: Path) -> dict[_Sig, dict[str, Any]]:
    """Every transition, keyed by where it is (a digest of the patterns leading to its
    state: spelled out, a deep chain of long verbatim requests costs depth^2 x their
    size) and its pattern: state ids are not stable when a model is learned again
    from its base."""
    import hashlib
    import json
    from collections import deque

    from scriptgen.model import load_model_dir

    out: dict[_Sig, dict[str, Any]] = {}
    for (proto, port), machine in load_model_dir(model_dir).items():
        paths: dict[int, str] = {machine.root: ""}
        todo = deque([machine.root])
        while todo:  # breadth first: each state's shortest path, in transition order
            state = machine.states[todo.popleft()]
            for t in state.transitions:
                pattern = json.dumps(t.pattern.to_json(), sort_keys=True)
                sig = (proto, port, paths[state.id], pattern)
                out.setdefault(sig, {
                    "port": f"{proto}/{port}",
                    "state": state.id,
                    "target": t.target,
                    "pattern": t.pattern.describe(),
                    "regex": t.pattern.source.decode("latin-1"),  # not compiled: slow
                    "fixed_bytes": t.pattern.specificity,
                })  # fmt: skip
                if t.target not in paths and t.target in machine.states:
                    step = (paths[state.id] + "\n" + pattern).encode()
                    paths[t.target] = hashlib.sha256(step).hexdigest()
                    todo.append(t.target)
    return out


def _options(region: dict[str, Any] | None, salt: bytes = b"") -> Any:
    """Training options of online learning: region overrides and the spool's salt."""
    from scriptgen.learn.regions import RegionOptions
    from scriptgen.learn.trainer import TrainOptions

    return TrainOptions(region=RegionOptions(**region) if region else None, sample_salt=salt)


def _report(before: dict[_Sig, dict[str, Any]], after: dict[_Sig, dict[str, Any]],
            report: Any) -> dict[str, Any]:  # fmt: skip
    new = [after[k] for k in sorted(set(after) - set(before))]
    ports = [
        {"port": f"{p.protocol}/{p.port}", "states": p.states, "transitions": p.transitions,
         "bucketed": p.bucketed, "conversations": p.used}
        for p in report.ports
    ]  # fmt: skip
    return {"new": new, "ports": ports}


def learn_files(
    model_dir: str, paths: list[str], region: dict[str, Any] | None = None, salt: bytes = b""
) -> dict[str, Any]:
    """Worker entry: update + refine the models with the recordings; what is new.

    ``region`` overrides region-analysis options (``[proxy] min_cluster_size``
    ...): a relayed dialog is what the real server said, so fewer samples can
    be enough to believe it. Returns the new transitions (patterns usable as
    signatures) and per port counts. Raises what the trainer raises
    (TraceError, ModelError).
    """
    from scriptgen.learn.trainer import train

    directory = Path(model_dir)
    before = _transitions(directory) if directory.is_dir() else {}
    report = train(paths, directory, _options(region, salt))
    return _report(before, _transitions(directory), report)


RELEARN_DIR = "relearn"  # in the spool: the base models and the history of relearning
HISTORY = "history.json"  # in the relearn directory: recordings since the base, files written


def relearn_files(
    model_dir: str,
    paths: list[str],
    base_dir: str,
    budget: int,
    region: dict[str, Any] | None = None,
    salt: bytes = b"",
) -> dict[str, Any]:
    """Worker entry: ``_relearn``; when it fails and the batch alone can be learned,
    a recording of the history is what fails (it became unreadable: a damaged
    disk, a trainer that now refuses it) and would fail every later batch, so
    every new recording would end in failed/: the models as they are become
    the base instead. A batch that fails alone fails (the history is kept)."""
    try:
        return _relearn(model_dir, paths, base_dir, budget, region, False, salt)
    except Exception:
        if not _read_history(Path(base_dir))["recordings"] or not _learnable(
            model_dir, paths, base_dir, region, salt
        ):
            raise
    return _relearn(model_dir, paths, base_dir, budget, region, True, salt)


def _learnable(
    model_dir: str,
    paths: list[str],
    base_dir: str,
    region: dict[str, Any] | None,
    salt: bytes = b"",
) -> bool:
    """Whether the batch alone can be learned on the current models (a scratch copy)."""
    import shutil
    import tempfile

    from scriptgen.learn.trainer import train
    from scriptgen.model.store import model_files

    with tempfile.TemporaryDirectory(prefix=".relearn-", dir=base_dir) as tmp:
        for f in model_files(model_dir):
            shutil.copyfile(f, Path(tmp) / f.name)
        try:
            train(paths, tmp, _options(region, salt))
        except Exception:  # noqa: BLE001 -- the answer is the question asked
            return False
    return True


def _relearn(
    model_dir: str,
    paths: list[str],
    base_dir: str,
    budget: int,
    region: dict[str, Any] | None,
    fresh: bool,
    salt: bytes = b"",
) -> dict[str, Any]:
    """Learn the base model *and every recording learned online so far*
    at once, then install the result in ``model_dir``; what is new.

    Why: learning recordings one batch at a time sees only that batch's
    dialogs in the passes that compare dialogs with each other -- answer
    splitting (a region value that predicts the answer needs two requests
    with that value), content dependencies -- so commands that were lumped
    together early stay lumped. Learning base + history + new is what one
    training on all of it gives, and learning a recording twice is harmless.

    ``base_dir`` holds the models as they were before the recordings listed
    in its history file. A model file in ``model_dir`` that differs from what
    this function last wrote there (changed by someone else, or a first run),
    or a recording of the history that is gone, starts a new base from the
    current files (``fresh``: in any case). Recordings beyond ``budget``
    bytes in all are folded into the base, oldest first (learned
    incrementally into it), so the cost of one batch stays bounded; the
    history says so before the batch is learned (a batch that fails must not
    fold them again).
    A recording in the history and in the batch (pending again after a crash
    before the spool moved it) is learned once.
    """
    import shutil
    import tempfile

    from scriptgen.learn.trainer import sha256_file, train
    from scriptgen.model.store import model_files

    directory, base = Path(model_dir), Path(base_dir)
    base.mkdir(parents=True, exist_ok=True)
    history = _read_history(base)
    current = {f.name: sha256_file(f) for f in model_files(directory)} if directory.is_dir() else {}
    spool = base.parent
    missing = any(_find(spool, n) is None for n in history["recordings"])
    # A first run, someone else changed the models, or a recording of the history
    # is gone (an analyst cleaned learned/): what the models know is kept, as base.
    if fresh or current != history["written"] or missing:
        for f in model_files(base):
            f.unlink()
        for f in model_files(directory) if directory.is_dir() else []:
            shutil.copyfile(f, base / f.name)
        history = {"recordings": [], "written": current}
    for stale in base.glob(".relearn-*"):  # a batch that crashed left its scratch copy
        shutil.rmtree(stale, ignore_errors=True)
    batch = {Path(p).name for p in paths}  # pending again after a crash: learned once
    names = list(history["recordings"])
    older = [str(_find(spool, n)) for n in names if n not in batch]
    names = [n for n in names if n not in batch]
    options = _options(region, salt)
    sizes = [_size(f) for f in older]
    total = sum(sizes) + sum(_size(f) for f in paths)
    folded = 0
    while folded < len(older) and total > budget:
        train([older[folded]], base, options)  # folded into the base for good
        total -= sizes[folded]
        folded += 1
    if folded:  # said now: a batch that fails below must not fold them again next time
        older, names = older[folded:], names[folded:]
        _write_history(base, {"recordings": names, "written": history["written"]})
    before = _transitions(directory) if directory.is_dir() else {}
    with tempfile.TemporaryDirectory(prefix=".relearn-", dir=base) as tmp:
        for f in model_files(base):
            shutil.copyfile(f, Path(tmp) / f.name)
        report = train(older + paths, tmp, options)
        written = {}
        for f in model_files(tmp):
            written[f.name] = sha256_file(_install(f, directory))
    names += [Path(p).name for p in paths if Path(p).name not in names]
    _write_history(base, {"recordings": names, "written": {**current, **written}})
    return _report(before, _transitions(directory), report)


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def _find(spool: Path, name: str) -> Path | None:
    """A recording of the history, pending (top) or learned (``learned/``)."""
    for where in (spool / "learned" / name, spool / name):
        if where.is_file():
            return where
    return None


def _install(model: Path, directory: Path) -> Path:
    """Put a model file into ``directory`` atomically (save_machine: temp file, fsync,
    rename); the same bytes, since a model's serialisation is deterministic."""
    from scriptgen.model import save_machine
    from scriptgen.model.store import load_machine

    return save_machine(load_machine(model), directory)


def _read_history(base: Path) -> dict[str, Any]:
    import json

    try:
        obj = json.loads((base / HISTORY).read_text())
        recordings = [str(n) for n in obj["recordings"] if "/" not in str(n)]
        written = {str(k): str(v) for k, v in obj["written"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {"recordings": [], "written": {"?": "no history"}}  # forces a new base
    return {"recordings": recordings, "written": written}


def _write_history(base: Path, history: dict[str, Any]) -> None:
    import json
    import os

    tmp = base / (HISTORY + ".tmp")
    tmp.write_text(json.dumps(history, sort_keys=True))
    os.replace(tmp, base / HISTORY)


def region_overrides(
    min_cluster_size: int, micro_min_count: int, distance_threshold: float = 0.0
) -> dict[str, int | float]:
    """The ``[proxy]`` learning keys as region options (0: the trainer's default)."""
    out: dict[str, int | float] = {}
    if min_cluster_size:
        out["min_cluster_size"] = min_cluster_size
    if micro_min_count:
        out["micro_min_count"] = micro_min_count
    if distance_threshold:
        out["distance_threshold"] = distance_threshold
    return out


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
        region: dict[str, Any] | None = None,
        relearn_bytes: int = 0,
        salt: bytes = b"",
    ) -> None:
        self.model_dir = model_dir
        self.spool = spool
        self.emit = emit
        self.defer_to_thread = defer_to_thread
        self.reload = reload
        self.worker = worker  # None: the trainer in a worker process
        self.region = dict(region or {})  # region-analysis options for online learning
        self.relearn_bytes = relearn_bytes  # 0: batch by batch; else recordings relearned
        self.salt = salt  # the spool's secret: keys the learner's full-bucket sample
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
        if self.relearn_bytes > 0:
            base = str(self.spool.root / RELEARN_DIR)
            future = self._pool.submit(
                relearn_files,
                str(self.model_dir), files, base, self.relearn_bytes, self.region, self.salt,
            )  # fmt: skip
        else:
            future = self._pool.submit(
                learn_files, str(self.model_dir), files, self.region, self.salt
            )
        return future.result()

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
        self.spool.prune(self._relearning)
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

    def _relearning(self) -> set[str]:
        """Recordings the next relearning batch reads (kept by ``Spool.prune``)."""
        if self.relearn_bytes <= 0:
            return set()
        return set(_read_history(self.spool.root / RELEARN_DIR)["recordings"])

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
