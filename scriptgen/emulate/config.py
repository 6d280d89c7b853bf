"""The emulator's configuration: an ini file parsed into frozen, typed dataclasses.

Every key is validated at start-up so a typo or a bad value stops the service
with one line naming the file, the section and the key, instead of a traceback
or a surprise at the first connection. Unknown sections and keys are errors
too: a misspelt limit silently falling back to its default is how a honeypot
ends up unbounded.
"""

from __future__ import annotations

import configparser
import ipaddress
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UNMATCHED_POLICIES = ("silent", "close")
GATE_MECHANISMS = ("auto", "nftables", "fallback")  # see scriptgen.emulate.gate


class ConfigError(Exception):
    """A config file cannot be used; the message is one complete line."""


@dataclass(frozen=True, slots=True)
class PortSpec:
    """Serve the machine learned on ``learned`` on port ``served`` (0: any free port)."""

    protocol: str
    learned: int
    served: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.protocol, self.learned)

    def __str__(self) -> str:
        if self.learned == self.served:
            return f"{self.protocol}/{self.learned}"
        return f"{self.protocol}/{self.learned}={self.served}"


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Proxying unmatched dialogs to pool hosts (scriptgen.emulate.proxy, docs/proxy.md)."""

    enabled: bool = False
    pool: tuple[str, ...] = ()
    expiry: float = 300.0
    spool: Path = Path("var/proxy")  # recordings: pending, learned, failed
    connect_timeout: float = 5.0
    host_backoff: float = 10.0  # a host that refused or timed out: skipped so long (0: off)
    host_backoff_max: float = 600.0  # ... doubled at each failure in a row, up to this
    replay_quiet: float = 0.5  # host quiet this long: its replayed answer is complete
    replay_timeout: float = 30.0  # connecting plus replaying one connection, at most
    replay_similarity: float = 0.3  # replayed answer vs emulated answer, at least
    replay_mismatch: str = "relay"  # answers differ: relay anyway (noted) or close
    max_relayed: int = 200  # connections handed to pool hosts at once (all sources)
    max_relayed_per_source: int = 20
    source_buffer_bytes: int = 1024 * 1024  # transcript bytes kept per source for a replay
    buffer_bytes: int = 64 * 1024 * 1024  # transcript bytes kept for all sources
    record_bytes: int = 64 * 1024 * 1024  # largest recording (pcap) per source allocation
    keep_learned_bytes: int = 256 * 1024 * 1024  # spool learned/: oldest deleted beyond
    keep_learned_files: int = 10000  # ... or beyond this many files
    learn: bool = True  # learn recordings online (off: keep them pending)
    doubt_samples: int = 8  # a matched transition with fewer, answers of several shapes: proxied
    relearn_bytes: int = 4 * 1024 * 1024  # recordings relearned with each batch (0: off)
    min_cluster_size: int = 0  # region analysis of online learning (0: trainer default)
    micro_min_count: int = 0  # likewise (0: trainer default)
    distance_threshold: float = 0.0  # likewise (0: trainer default)


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on everything a client can grow (see etc/scriptgen.ini.dist)."""

    max_connections: int = 1000
    max_connections_per_source: int = 20
    max_buffer_bytes: int = 65536
    idle_timeout: float = 120.0
    request_timeout: float = 30.0
    request_quiet: float = 2.0  # client silent on an incomplete request: judge it (0: off)
    session_timeout: float = 600.0
    max_sources: int = 10000
    unmatched_per_source: int = 8
    unmatched_bytes: int = 16 * 1024 * 1024
    match_timeout: float = 0.05  # regex seconds per evaluation and per request (matching.Budget)
    event_queue: int = 10000
    event_queue_bytes: int = 16 * 1024 * 1024
    log_payload_bytes: int = 4096
    udp_answer_rate: int = 16384  # bytes/s sent to one UDP source address (0: unlimited)
    udp_answer_burst: int = 65536  # ... of which this many at once


@dataclass(frozen=True, slots=True)
class Config:
    model_dir: Path = Path("var/models")
    listen: str = "127.0.0.1"
    ports: tuple[PortSpec, ...] | None = None  # None: "auto" (every model in model_dir)
    events: Path | None = Path("var/log/scriptgen.json")  # None: no event log
    reload_interval: float = 5.0
    request_settle: float = 0.2
    on_unmatched: str = "silent"
    content_dependencies: bool = True  # patch answers from live requests (off: as learned)
    backoff: bool = True  # an unmatched request is read at the states the session passed
    backoff_alike: bool = True  # ... and where the same requests led elsewhere
    gate_mechanism: str = "auto"  # how ports waiting for a signal are kept closed
    gate_table: str = "scriptgen"  # nftables table owned by this emulator
    gate_hold: float = 2.0  # longest wait of a signalling answer for nft
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    limits: Limits = field(default_factory=Limits)
    source: str = "<defaults>"


# --- value parsers: each returns the typed value or raises ValueError(problem) ---


def _number(text: str, *, minimum: float = 0.0, integer: bool = False) -> Any:
    try:
        value: float | int = int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"not {kind}: {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    if value < minimum:
        raise ValueError(f"must be at least {minimum:g}: {text!r}")
    return value


def _int(minimum: int) -> Callable[[str], int]:
    return lambda text: _number(text, minimum=minimum, integer=True)


def _float(minimum: float) -> Callable[[str], float]:
    return lambda text: _number(text, minimum=minimum)


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"not a boolean (true/false): {text!r}")


def _mismatch(text: str) -> str:
    value = text.strip().lower()
    if value not in ("relay", "close"):
        raise ValueError(f"must be relay or close: {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _number(text)
    if value > 1:
        raise ValueError(f"must be between 0 and 1: {text!r}")
    return float(value)


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None


def _pool(text: str) -> tuple[str, ...]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    return tuple(_address(t) for t in items)


def _policy(text: str) -> str:
    value = text.strip().lower()
    if value not in UNMATCHED_POLICIES:
        raise ValueError(f"must be one of {', '.join(UNMATCHED_POLICIES)}: {text!r}")
    return value


def _mechanism(text: str) -> str:
    value = text.strip().lower()
    if value not in GATE_MECHANISMS:
        raise ValueError(f"must be one of {', '.join(GATE_MECHANISMS)}: {text!r}")
    return value


def _table(text: str) -> str:
    value = text.strip()
    if not value or len(value) > 32 or not all(c.isalnum() or c == "_" for c in value):
        raise ValueError(f"must be 1-32 letters, digits or '_': {text!r}")
    return value


def _optional_path(text: str) -> Path | None:
    return Path(text.strip()) if text.strip() else None


def _path(text: str) -> Path:
    if not text.strip():
        raise ValueError("must not be empty")
    return Path(text.strip())


def _port_number(text: str, *, allow_zero: bool) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"not a port number: {text!r}") from None
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError(f"port out of range: {text!r}")
    return port


def parse_ports(text: str) -> tuple[PortSpec, ...] | None:
    """``auto`` or ``tcp/139, udp/53, tcp/21=2121`` (learned=served)."""
    if text.strip().lower() == "auto":
        return None
    specs: list[PortSpec] = []
    seen: set[tuple[str, int]] = set()
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        proto, sep, rest = item.partition("/")
        proto = proto.strip().lower()
        if not sep or proto not in ("tcp", "udp"):
            raise ValueError(f"expected tcp/PORT or udp/PORT[=SERVED]: {item!r}")
        learned_text, eq, served_text = rest.partition("=")
        learned = _port_number(learned_text.strip(), allow_zero=False)
        served = _port_number(served_text.strip(), allow_zero=True) if eq else learned
        if served and (proto, served) in seen:
            raise ValueError(f"{proto}/{served} is served twice")
        seen.add((proto, served))
        specs.append(PortSpec(proto, learned, served))
    if not specs:
        raise ValueError("no ports listed (use 'auto' to serve every model)")
    return tuple(specs)


# section -> key -> (parser, Config attribute path)
_SCHEMA: dict[str, dict[str, Callable[[str], Any]]] = {
    "scriptgen": {
        "model_dir": _path,
        "listen": _address,
        "ports": parse_ports,
        "events": _optional_path,
        "reload_interval": _float(0.0),
        "request_settle": _float(0.0),
        "on_unmatched": _policy,
        "gate_mechanism": _mechanism,
        "gate_table": _table,
        "gate_hold": _float(0.01),
        "content_dependencies": _bool,
        "backoff": _bool,
        "backoff_alike": _bool,
    },
    "proxy": {
        "enabled": _bool,
        "pool": _pool,
        "expiry": _float(0.1),
        "spool": _path,
        "connect_timeout": _float(0.01),
        "host_backoff": _float(0.0),
        "host_backoff_max": _float(0.0),
        "replay_quiet": _float(0.01),
        "replay_timeout": _float(0.01),
        "replay_similarity": _fraction,
        "replay_mismatch": _mismatch,
        "max_relayed": _int(1),
        "max_relayed_per_source": _int(1),
        "source_buffer_bytes": _int(0),
        "buffer_bytes": _int(0),
        "record_bytes": _int(1024),
        "keep_learned_bytes": _int(0),
        "keep_learned_files": _int(0),
        "learn": _bool,
        "doubt_samples": _int(0),
        "relearn_bytes": _int(0),
        "min_cluster_size": _int(0),
        "micro_min_count": _int(0),
        "distance_threshold": _fraction,
    },
    "limits": {
        "max_connections": _int(1),
        "max_connections_per_source": _int(1),
        "max_buffer_bytes": _int(1),
        "idle_timeout": _float(0.01),
        "request_timeout": _float(0.01),
        "request_quiet": _float(0.0),
        "session_timeout": _float(0.01),
        "max_sources": _int(1),
        "unmatched_per_source": _int(0),
        "unmatched_bytes": _int(0),
        "match_timeout": _float(0.001),
        "event_queue": _int(1),
        "event_queue_bytes": _int(1024),
        "log_payload_bytes": _int(0),
        "udp_answer_rate": _int(0),
        "udp_answer_burst": _int(1),
    },
}


def _read(path: str | os.PathLike[str]) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";",), strict=True, empty_lines_in_values=False
    )
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path}: not UTF-8 text") from None
    except configparser.Error as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"config {path}: not a valid ini file: {first}") from None
    return parser


def load_config(path: str | os.PathLike[str]) -> Config:
    """Parse and validate; raise ConfigError with one line naming section and key."""
    parser = _read(path)
    values: dict[str, dict[str, Any]] = {s: {} for s in _SCHEMA}
    for section in parser.sections():
        if section not in _SCHEMA:
            raise ConfigError(f"config {path}: [{section}]: unknown section")
        for key, raw in parser.items(section):
            parse = _SCHEMA[section].get(key)
            if parse is None:
                raise ConfigError(f"config {path}: [{section}] {key}: unknown key")
            try:
                values[section][key] = parse(raw)
            except ValueError as e:
                raise ConfigError(f"config {path}: [{section}] {key}: {e}") from None
    proxy = ProxyConfig(**values["proxy"])
    if proxy.enabled and not proxy.pool:
        raise ConfigError(f"config {path}: [proxy] pool: must list hosts when enabled = true")
    limits = Limits(**values["limits"])
    return Config(proxy=proxy, limits=limits, source=str(path), **values["scriptgen"])
