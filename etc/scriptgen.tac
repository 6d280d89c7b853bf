"""Example: embed the emulator in your own Twisted application.

    SCRIPTGEN_CONFIG=etc/scriptgen.ini twistd -ny etc/scriptgen.tac

Any Twisted application can do the same: build a Config with load_config (or
construct it directly) and attach make_service(config) to its service tree.
"""

import os
import sys

from twisted.application import service

from scriptgen.emulate import ConfigError, StartupError, load_config, make_service

application = service.Application("scriptgen")
try:
    config = load_config(os.environ.get("SCRIPTGEN_CONFIG", "etc/scriptgen.ini"))
    make_service(config).setServiceParent(application)
except (ConfigError, StartupError) as e:
    sys.stderr.write(f"scriptgen: {e}\n")
    raise SystemExit(1) from None
