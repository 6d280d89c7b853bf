"""The learned model: per-(protocol, port) state machines and their JSON form.

Shared by ``scriptgen.learn`` (which writes models) and
``scriptgen.emulate`` (which walks them); it knows nothing of alignment and
nothing of Twisted.
"""

from scriptgen.model.machine import End, Machine, State, Suffix, Transition, Turn
from scriptgen.model.pattern import Pattern, Region
from scriptgen.model.store import (
    ModelError,
    load_machine,
    load_model_dir,
    model_files,
    save_machine,
)

__all__ = [
    "End",
    "Machine",
    "ModelError",
    "Pattern",
    "Region",
    "State",
    "Suffix",
    "Transition",
    "Turn",
    "load_machine",
    "load_model_dir",
    "model_files",
    "save_machine",
]
