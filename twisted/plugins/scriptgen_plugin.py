"""twistd plugin: ``twistd -n scriptgen --config etc/scriptgen.ini``.

Kept tiny and import-light: twistd imports every plugin module just to list
them, so the emulator itself is imported only when this plugin is used.
A bad config or model ends start-up with one line on stderr (exit status 1),
never a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [
        ["config", "c", "etc/scriptgen.ini", "Emulator configuration file (ini)."],
    ]


@implementer(IServiceMaker, IPlugin)
class ScriptgenServiceMaker:
    tapname = "scriptgen"
    description = "Emulate network services from state machines learned from captures."
    options = Options

    def makeService(self, options: Options) -> Any:  # noqa: N802
        from scriptgen.emulate import ConfigError, StartupError, load_config, make_service

        try:
            service = make_service(load_config(options["config"]))
            service.exit_if_nothing_bound = True
            return service
        except (ConfigError, StartupError) as e:
            sys.stderr.write(f"scriptgen: {e}\n")
            sys.stderr.flush()
            raise SystemExit(1) from None


serviceMaker = ScriptgenServiceMaker()
