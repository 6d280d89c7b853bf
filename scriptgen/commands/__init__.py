"""Sub-commands of the ``scriptgen`` CLI; each module has ``register(subparsers)``."""

from __future__ import annotations

from collections.abc import Callable

COMMANDS: list[Callable] = []

try:  # each command module is owned by one stage; import them in data-flow order
    from scriptgen.commands import conversations

    COMMANDS.append(conversations.register)
except ImportError:  # pragma: no cover - during bootstrap only
    pass

from scriptgen.commands import show, train  # noqa: E402 - learn stage: train, then show

COMMANDS.extend([train.register, show.register])
