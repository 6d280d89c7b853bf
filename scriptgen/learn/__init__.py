"""Learning: conversations → per-(protocol, port) state machines (update, refinement, consolidation).

Nothing here imports Twisted: learning runs in its own process or thread.
"""

from scriptgen.learn.consolidate import consolidate
from scriptgen.learn.dialog import Dialog, DialogStats, group_dialogs, to_dialog
from scriptgen.learn.phases import Learner, LearnOptions, StepReport, replay
from scriptgen.learn.trainer import TrainOptions, TrainReport, learn_machine, train

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
