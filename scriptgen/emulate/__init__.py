"""The emulator: serves learned machines on TCP and UDP ports with Twisted.

``load_config(path)`` parses the ini file; ``make_service(config)`` returns
the service that ``twistd -n scriptgen --config FILE`` runs, for embedding in
other applications (see etc/scriptgen.tac). Nothing here knows how the
machines were learned.
"""

from scriptgen.emulate.config import Config, ConfigError, Limits, PortSpec, ProxyConfig, load_config
from scriptgen.emulate.service import EmulatorService, StartupError, make_service

__all__ = [
    "Config",
    "ConfigError",
    "EmulatorService",
    "Limits",
    "PortSpec",
    "ProxyConfig",
    "StartupError",
    "load_config",
    "make_service",
]
