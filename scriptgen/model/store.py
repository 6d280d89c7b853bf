"""Models on disk: one JSON file per (protocol, port), written atomically.

The format is versioned (``schema``), holds bytes as hex and is written with
sorted keys and one item per line so ``git diff`` of two models is readable.
Loading a damaged, truncated or foreign file raises ``ModelError`` with one
line naming the file and the problem; callers keep serving the last good model.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from scriptgen.model.machine import Machine, State

SCHEMA = "scriptgen.model/1"
FILE_RE = re.compile(r"^(tcp|udp)-(\d{1,5})\.json$")
MAX_MODEL_BYTES = 512 * 1024 * 1024  # refuse absurd files instead of exhausting memory


class ModelError(Exception):
    """A model file cannot be used; the message names the file and the problem."""


def model_path(model_dir: str | os.PathLike[str], protocol: str, port: int) -> Path:
    return Path(model_dir) / f"{protocol}-{port}.json"


def machine_to_json(machine: Machine) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "protocol": machine.protocol,
        "port": machine.port,
        "root": machine.root,
        "provenance": machine.provenance,
        "options": machine.options,
        "states": [machine.states[sid].to_json() for sid in sorted(machine.states)],
    }


def machine_from_json(obj: Any) -> Machine:
    """Build a machine from parsed JSON; raises ValueError/KeyError/TypeError on bad content."""
    if not isinstance(obj, dict):
        raise ValueError("top level is not an object")
    if obj.get("schema") != SCHEMA:
        raise ValueError(f"unknown schema {obj.get('schema')!r} (expected {SCHEMA!r})")
    protocol = obj["protocol"]
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"bad protocol {protocol!r}")
    port = int(obj["port"])
    if not 0 <= port <= 65535:
        raise ValueError(f"bad port {port}")
    states = {}
    for s in obj["states"]:
        state = State.from_json(s)
        if state.id in states:
            raise ValueError(f"duplicate state id {state.id}")
        states[state.id] = state
    root = int(obj.get("root", 0))
    if root not in states:
        raise ValueError(f"root state {root} missing")
    for state in states.values():
        for t in state.transitions:
            if t.target not in states:
                raise ValueError(f"state {state.id} has a transition to missing state {t.target}")
    return Machine(
        protocol=protocol,
        port=port,
        states=states,
        root=root,
        provenance=dict(obj.get("provenance", {})),
        options=dict(obj.get("options", {})),
    )


def dumps(machine: Machine) -> str:
    """Deterministic text: same machine, byte-identical file."""
    return json.dumps(machine_to_json(machine), indent=1, sort_keys=True) + "\n"


def save_machine(machine: Machine, model_dir: str | os.PathLike[str]) -> Path:
    """Write atomically (temp file in the same directory, fsync, rename)."""
    directory = Path(model_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = model_path(directory, machine.protocol, machine.port)
    data = dumps(machine).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes 0600; an emulator running as another user must read it
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_machine(path: str | os.PathLike[str]) -> Machine:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise ModelError(
                f"{path}: model file is {size} bytes, over the {MAX_MODEL_BYTES} limit"
            )
        text = path.read_bytes().decode("utf-8")
        obj = json.loads(text)
    except ModelError:
        raise
    except OSError as e:
        raise ModelError(f"{path}: cannot read model: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ModelError(f"{path}: not a scriptgen model (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ModelError(
            f"{path}: damaged model: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    try:
        return machine_from_json(obj)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
        raise ModelError(f"{path}: not a valid scriptgen model: {what}") from None


def model_files(model_dir: str | os.PathLike[str]) -> list[Path]:
    """The model files of a directory, in (protocol, port) order."""
    directory = Path(model_dir)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if FILE_RE.match(p.name)]
    return sorted(found, key=lambda p: (FILE_RE.match(p.name)[1], int(FILE_RE.match(p.name)[2])))


def load_model_dir(model_dir: str | os.PathLike[str]) -> dict[tuple[str, int], Machine]:
    """Every machine of a directory; the first bad file raises ModelError."""
    machines: dict[tuple[str, int], Machine] = {}
    for path in model_files(model_dir):
        m = load_machine(path)
        expected = FILE_RE.match(path.name)
        if (m.protocol, m.port) != (expected[1], int(expected[2])):
            raise ModelError(f"{path}: file name does not match its content ({m.name})")
        machines[m.key] = m
    return machines
