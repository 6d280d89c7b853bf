"""The served models, and replacing them without a restart.

Why off the reactor thread: parsing and compiling a large model takes long
enough to stall every connection, so scanning the directory, reading,
validating and building indexes all run in a worker thread; only the final
swap (replacing one dict reference) runs on the reactor thread. Connections
already in progress keep the machine they started with. A file that fails to
load leaves the previous machine of that (protocol, port) serving and is
reported as ``scriptgen.model.error`` naming the file and the problem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from scriptgen.emulate.eventlog import EventLog
from scriptgen.emulate.matching import MATCH_TIMEOUT, CompiledMachine
from scriptgen.model import ModelError, load_machine, model_files
from scriptgen.model.store import FILE_RE

log = Logger(namespace="scriptgen")

FileSig = tuple[int, int, int]  # (mtime_ns, size, inode)


@dataclass(frozen=True, slots=True)
class Loaded:
    path: Path
    key: tuple[str, int]
    machine: CompiledMachine | None  # None: failed, see error
    error: str = ""


def scan(model_dir: Path) -> dict[Path, FileSig]:
    """Signature of every model file: changes when a file is replaced or edited."""
    sigs: dict[Path, FileSig] = {}
    for path in model_files(model_dir):
        try:
            st = path.stat()
        except OSError:
            continue
        sigs[path] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return sigs


def load_one(path: Path, match_timeout: float = MATCH_TIMEOUT) -> Loaded:
    """Load, check and index one model file; never raises."""
    m = FILE_RE.match(path.name)
    key = (m[1], int(m[2])) if m else ("?", 0)
    try:
        machine = load_machine(path)
        if machine.key != key:
            raise ModelError(f"{path}: file name does not match its content ({machine.name})")
        compiled = CompiledMachine.build(machine, str(path), match_timeout)
    except ModelError as e:
        return Loaded(path, key, None, str(e))
    except Exception as e:  # a hostile file must not take the service down
        return Loaded(path, key, None, f"{path}: cannot use model: {type(e).__name__}: {e}")
    return Loaded(path, key, compiled)


def load_changed(
    model_dir: Path, previous: dict[Path, FileSig], match_timeout: float = MATCH_TIMEOUT
) -> tuple[dict[Path, FileSig], list[Loaded]]:
    """Worker-thread half of a reload: the new signatures and the files that changed."""
    sigs = scan(model_dir)
    changed = [p for p, sig in sigs.items() if previous.get(p) != sig]
    return sigs, [load_one(p, match_timeout) for p in changed]


class ModelHolder:
    """The current machine per learned (protocol, port); swapped whole on reload."""

    def __init__(
        self,
        model_dir: Path,
        events: EventLog,
        defer_to_thread: Callable[..., Deferred[Any]],
        served: Callable[[tuple[str, int]], bool] = lambda key: True,
        match_timeout: float = MATCH_TIMEOUT,
    ) -> None:
        self.match_timeout = match_timeout
        self.model_dir = model_dir
        self.events = events
        self.defer_to_thread = defer_to_thread
        self.served = served
        self.machines: dict[tuple[str, int], CompiledMachine] = {}
        self.sigs: dict[Path, FileSig] = {}
        self._busy = False
        self._again = False
        self.reloads = 0  # completed reload passes (tests wait on it)
        # Called on the reactor thread with the keys of machines new to this
        # holder (the service starts serving them when ports = auto).
        self.on_new: Callable[[list[tuple[str, int]]], None] | None = None

    def get(self, key: tuple[str, int]) -> CompiledMachine | None:
        return self.machines.get(key)

    def load_initial(self) -> list[Loaded]:
        """Synchronous first load at start-up (before the reactor runs)."""
        self.sigs, results = load_changed(self.model_dir, {}, self.match_timeout)
        self._apply(results)
        return results

    def reload(self, force: bool = False) -> Deferred[None] | None:
        """Look for changed files (all files when ``force``) and swap them in."""
        if self._busy:
            self._again = True
            return None
        self._busy = True
        previous = {} if force else dict(self.sigs)
        d = self.defer_to_thread(load_changed, self.model_dir, previous, self.match_timeout)
        d.addCallback(self._loaded)
        d.addErrback(self._failed)
        d.addBoth(self._done)
        return d

    def _loaded(self, result: tuple[dict[Path, FileSig], list[Loaded]]) -> None:
        sigs, results = result
        gone = set(self.sigs) - set(sigs)
        for path in sorted(gone):
            log.warn(
                "scriptgen: model file {path} removed; its last model keeps serving", path=path
            )
        self.sigs = sigs
        self._apply(results)

    def _apply(self, results: list[Loaded]) -> None:
        new = dict(self.machines)
        for r in results:
            if r.machine is None:
                self.events.emit("scriptgen.model.error", file=str(r.path), error=r.error)
                log.warn("{error}; the previous model keeps serving", error=r.error)
                continue
            new[r.key] = r.machine
            counts = r.machine.machine.counts()
            self.events.emit(
                "scriptgen.model.loaded",
                file=str(r.path),
                machine=r.machine.machine.name,
                served=self.served(r.key),
                **counts,
            )
        added = sorted(set(new) - set(self.machines))
        self.machines = new  # one reference swap: protocols see old or new, never a mix
        if added and self.on_new is not None:
            self.on_new(added)

    def _failed(self, failure: Any) -> None:
        self.events.emit(
            "scriptgen.model.error", file=str(self.model_dir), error=failure.getErrorMessage()
        )
        log.warn("scriptgen: model reload failed: {e}", e=failure.getErrorMessage())

    def _done(self, _: Any) -> None:
        self._busy = False
        self.reloads += 1
        if self._again:
            self._again = False
            self.reload(force=True)
