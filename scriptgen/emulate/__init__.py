"""The emulator: serves learned machines on TCP and UDP ports with Twisted.

``load_config(path)`` parses the ini file; ``make_service(config)`` returns
the service that ``twistd -n scriptgen --config FILE`` runs, for embedding in
other applications (see etc/scriptgen.tac). Nothing here knows how the
machines were learned.
"""

from typing import Any

# Imported on first use (PEP 562), so that ``import scriptgen.emulate.events``
# or ``.config`` does not pull in Twisted and the whole service, and
# ``python -m scriptgen.emulate.events`` runs without a double import.
_EXPORTS = {
    "Config": "scriptgen.emulate.config",
    "ConfigError": "scriptgen.emulate.config",
    "Limits": "scriptgen.emulate.config",
    "PortSpec": "scriptgen.emulate.config",
    "ProxyConfig": "scriptgen.emulate.config",
    "load_config": "scriptgen.emulate.config",
    "EmulatorService": "scriptgen.emulate.service",
    "StartupError": "scriptgen.emulate.service",
    "make_service": "scriptgen.emulate.service",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scriptgen.emulate' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


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
