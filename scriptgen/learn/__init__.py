"""Learning: conversations → per-(protocol, port) state machines (update, refinement, consolidation).

Nothing here imports Twisted: learning runs in its own process or thread.
The trainer (and through it numpy/scipy) is imported on first use, so that
``scriptgen`` commands that only read models start fast.
"""

from typing import Any

from scriptgen.learn.consolidate import consolidate
from scriptgen.learn.dialog import Dialog, DialogStats, group_dialogs, to_dialog
from scriptgen.learn.phases import Learner, LearnOptions, StepReport, replay

_TRAINER_NAMES = ("TrainOptions", "TrainReport", "learn_machine", "train")

__all__ = [
    "Dialog",
    "DialogStats",
    "LearnOptions",
    "Learner",
    "StepReport",
    "TrainOptions",
    "TrainReport",
    "consolidate",
    "group_dialogs",
    "learn_machine",
    "replay",
    "to_dialog",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _TRAINER_NAMES:
        from scriptgen.learn import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
