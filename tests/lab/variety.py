"""Varied client runs per protocol, drawn from a seeded ``random.Random``.

A :class:`ClientRun` is data (which client, which arguments) that can be
executed against any (addr, port): the same draw can be played against the
real server to record and against the emulator to compare. Draws mix
successes and failures (existing and missing paths, good and bad logins,
known and unknown names) the way a scanner or a user would.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.lab import clients
from tests.lab import hostsetup as setup
from tests.lab.clients import ClientResult
from tests.lab.servers import PUBLIC_DIRS, PUBLIC_FILES

WORDS = (
    "alpha", "bravo", "cedar", "delta", "ember", "fjord", "gamma", "harbor", "iris",
    "jasper", "kilo", "lumen", "maple", "nadir", "onyx", "pixel", "quartz", "raven",
    "sierra", "tango", "umber", "vortex", "willow", "xenon", "yonder", "zephyr",
)  # fmt: skip


@dataclass(frozen=True)
class ClientRun:
    """One client invocation: ``clients.<client>(addr, port, **kwargs)``."""

    protocol: str
    client: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def execute(
        self, addr: str, port: int, timeout: float = clients.DEFAULT_TIMEOUT
    ) -> ClientResult:
        func: Callable[..., ClientResult] = getattr(clients, self.client)
        return func(addr, port, timeout=timeout, **self.kwargs)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.client}({args})"


def _word(rng: random.Random) -> str:
    return rng.choice(WORDS)


def _name(rng: random.Random, ext: str = "") -> str:
    return f"{_word(rng)}{rng.randint(0, 999)}{ext}"


def _existing_file(rng: random.Random) -> str:
    return rng.choice(sorted(PUBLIC_FILES))


def _missing_path(rng: random.Random) -> str:
    base = rng.choice(("", "pub/", "docs/", "nope/"))
    return base + _name(rng, rng.choice((".txt", ".bin", "", ".zip")))


# -- FTP ---------------------------------------------------------------------
def _ftp_login(rng: random.Random) -> tuple[str, str]:
    r = rng.random()
    if r < 0.45:
        return "anonymous", f"{_word(rng)}@example.org"
    if r < 0.85:
        return setup.FTP_USER, setup.FTP_PASSWORD
    if r < 0.93:
        return setup.FTP_USER, _word(rng)  # wrong password: 530
    return _word(rng), _word(rng)  # no such user: 530


def draw_ftp(rng: random.Random) -> ClientRun:
    """curl (list/retr/upload) or the ftp client (a short scripted session)."""
    user, password = _ftp_login(rng)
    if rng.random() < 0.5:
        op = rng.choice(("list", "list", "retr", "retr", "missing", "upload"))
        kw: dict[str, Any] = {"user": user, "password": password}
        if op == "list":
            kw["path"] = "/" + rng.choice(("", *[d + "/" for d in PUBLIC_DIRS]))
        elif op == "retr":
            kw["path"] = "/" + _existing_file(rng)
        elif op == "missing":
            kw["path"] = "/" + _missing_path(rng) + rng.choice(("", "/"))
        else:
            kw["path"] = f"/upload/{_name(rng, '.txt')}"
            kw["upload"] = (
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) + "\n"
            ).encode()
        return ClientRun("ftp", "curl_ftp", kw)
    cmds: list[str] = []
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(
            (
                "pwd",
                "ls",
                "ls_dir",
                "cd",
                "cd_missing",
                "get",
                "get_missing",
                "size",
                "syst",
                "mkdir",
            )
        )
        if op == "ls_dir":
            cmds.append(f"ls {rng.choice(PUBLIC_DIRS)}")
        elif op == "cd":
            cmds.append(f"cd {rng.choice(PUBLIC_DIRS)}")
        elif op == "cd_missing":
            cmds.append(f"cd {_name(rng)}")
        elif op == "get":
            cmds.append(f"get {_existing_file(rng)} -")
        elif op == "get_missing":
            cmds.append(f"get {_missing_path(rng)} -")
        elif op == "size":
            cmds.append(f"size {rng.choice((_existing_file(rng), _missing_path(rng)))}")
        elif op == "mkdir":
            cmds.append(f"mkdir upload/{_name(rng)}")
        else:
            cmds.append("ls" if op == "ls" else op)
    return ClientRun("ftp", "ftp_cli", {"commands": cmds, "user": user, "password": password})


# -- Redis -------------------------------------------------------------------
def _redis_command(rng: random.Random) -> list[str]:
    key = f"{_word(rng)}:{rng.randint(0, 50)}"
    value = rng.choice((_word(rng), str(rng.randint(0, 100000)), f"{_word(rng)} {_word(rng)}"))
    return rng.choice(
        (
            ["PING"],
            ["PING", _word(rng)],
            ["ECHO", value],
            ["SET", key, value],
            ["SET", key, value, "EX", str(rng.randint(10, 1000))],
            ["GET", key],
            ["GET", f"missing:{_name(rng)}"],
            ["DEL", key],
            ["EXISTS", key],
            ["INCR", f"counter:{_word(rng)}"],
            ["INCRBY", f"counter:{_word(rng)}", str(rng.randint(1, 99))],
            ["APPEND", key, value],
            ["STRLEN", key],
            ["LPUSH", f"list:{_word(rng)}", value],
            ["LRANGE", f"list:{_word(rng)}", "0", "-1"],
            ["HSET", f"hash:{_word(rng)}", _word(rng), value],
            ["HGET", f"hash:{_word(rng)}", _word(rng)],
            ["HGETALL", f"hash:{_word(rng)}"],
            ["SADD", f"set:{_word(rng)}", _word(rng)],
            ["SMEMBERS", f"set:{_word(rng)}"],
            ["TYPE", key],
            ["TTL", key],
            ["EXPIRE", key, str(rng.randint(10, 1000))],
            ["KEYS", f"{_word(rng)}:*"],
            ["DBSIZE"],
            ["MSET", key, value, f"{_word(rng)}:{rng.randint(0, 50)}", _word(rng)],
            ["MGET", key, f"{_word(rng)}:{rng.randint(0, 50)}"],
            ["GET"],  # wrong number of arguments
            [rng.choice(("FOO", "HELLOWORLD", "GETX")), _word(rng)],  # unknown command
        )
    )


def draw_redis(rng: random.Random) -> ClientRun:
    """redis-cli with one command, sometimes repeated (-r) on the same connection.

    No multi-command stdin runs: they make redis-cli fetch COMMAND DOCS (~170 kB).
    """
    kw: dict[str, Any] = {"commands": [_redis_command(rng)]}
    if rng.random() < 0.25:
        kw["repeat"] = rng.randint(2, 4)
    return ClientRun("redis", "redis_cli", kw)


# -- DNS ---------------------------------------------------------------------
DNS_NAMES = ("www", "ftp", "mail", "ns1", "files", "db", "web", "docs", "info")
DNS_TYPES = ("A", "A", "A", "AAAA", "MX", "TXT", "CNAME", "SOA", "NS", "ANY")


def _dns_question(rng: random.Random) -> tuple[str, str]:
    r = rng.random()
    if r < 0.55:
        return f"{rng.choice(DNS_NAMES)}.lab.test", rng.choice(DNS_TYPES)
    if r < 0.65:
        return "lab.test", rng.choice(("MX", "TXT", "SOA", "NS", "A"))
    if r < 0.72:
        return rng.choice(("_ftp._tcp.lab.test", "_smb._tcp.lab.test")), "SRV"
    if r < 0.78:
        return rng.choice(("192.0.2.10", f"192.0.2.{rng.randint(1, 254)}")), "PTR"
    if r < 0.92:
        return f"{_name(rng)}.lab.test", rng.choice(DNS_TYPES)  # NXDOMAIN
    return f"{_word(rng)}.example.{rng.choice(('com', 'net', 'org'))}", "A"  # not ours


def draw_dns(rng: random.Random) -> ClientRun:
    """dig: one question, UDP mostly, TCP (+tcp) sometimes, a few option variants."""
    name, rtype = _dns_question(rng)
    options = rng.choice(((), (), (), ("+norecurse",), ("+noedns",), ("+dnssec",)))
    tcp = rng.random() < 0.3
    return ClientRun(
        "dns", "dig", {"name": name, "rtype": rtype, "tcp": tcp, "options": list(options)}
    )


# -- SMB ---------------------------------------------------------------------
def _smb_login(rng: random.Random) -> dict[str, Any]:
    r = rng.random()
    if r < 0.45:
        return {"user": None}  # guest
    if r < 0.6:
        return {"user": ""}  # anonymous
    if r < 0.85:
        return {"user": setup.SMB_USER, "password": setup.SMB_PASSWORD}
    if r < 0.93:
        return {"user": setup.SMB_USER, "password": _word(rng)}  # logon failure
    return {"user": _word(rng), "password": _word(rng)}  # unknown: mapped to guest


def _smb_command(rng: random.Random) -> str:
    op = rng.choice(("ls", "ls", "ls_dir", "get", "get", "get_missing", "cd_missing", "allinfo"))
    if op == "ls_dir":
        return f"ls {rng.choice(PUBLIC_DIRS)}\\*"
    if op == "get":
        return f"get {_existing_file(rng).replace('/', chr(92))} /dev/null"
    if op == "get_missing":
        return f"get {_missing_path(rng).replace('/', chr(92))} /dev/null"
    if op == "cd_missing":
        return f"cd {_name(rng)}; ls"
    if op == "allinfo":
        return f"allinfo {_existing_file(rng).replace('/', chr(92))}"
    return "ls"


def _draw_smb(rng: random.Random, protocol: str) -> ClientRun:
    kw = _smb_login(rng)
    if rng.random() < 0.2:
        return ClientRun(protocol, "smbclient", {"share": None, "command": None, **kw})
    share = "public" if rng.random() < 0.9 else rng.choice(("nosuch", "IPC$", _word(rng)))
    return ClientRun(protocol, "smbclient", {"share": share, "command": _smb_command(rng), **kw})


def draw_smb139(rng: random.Random) -> ClientRun:
    """smbclient with SMB1 (NT1) over the NetBIOS session service."""
    return _draw_smb(rng, "smb139")


def draw_smb445(rng: random.Random) -> ClientRun:
    """smbclient with the default (SMB2/3) dialects on 445."""
    return _draw_smb(rng, "smb445")


def draw_lsarpc139(rng: random.Random) -> ClientRun:
    """rpcclient over \\pipe\\lsarpc (SMB1 on 139): lsaquery and name/SID lookups."""
    names = [
        rng.choice(("root", "nobody", setup.SMB_USER, _word(rng), "Administrator"))
        for _ in range(rng.randint(1, 3))
    ]
    cmds = rng.choice(
        (
            ["lsaquery"],
            ["lsaquery", f"lookupnames {' '.join(names)}"],
            [f"lookupnames {' '.join(names)}"],
            ["lookupsids S-1-5-32-544"],
            [f"lookupsids S-1-5-32-{rng.choice((544, 545, 546, 547, 548))}", "lsaquery"],
            ["dsroledominfo"],
            ["getusername"],
        )
    )
    kw: dict[str, Any] = {"commands": "; ".join(cmds)}
    if rng.random() < 0.25:
        kw.update(user=setup.SMB_USER, password=setup.SMB_PASSWORD)
    return ClientRun("lsarpc139", "rpcclient", kw)


DRAWERS: dict[str, Callable[[random.Random], ClientRun]] = {
    "ftp": draw_ftp,
    "redis": draw_redis,
    "dns": draw_dns,
    "smb139": draw_smb139,
    "smb445": draw_smb445,
    "lsarpc139": draw_lsarpc139,
}


def draw_runs(protocol: str, n: int, seed: int | random.Random) -> list[ClientRun]:
    """``n`` runs for ``protocol``; the same seed gives the same runs."""
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    return [DRAWERS[protocol](rng) for _ in range(n)]
