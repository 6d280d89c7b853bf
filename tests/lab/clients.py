"""Run real clients against any (addr, port): curl, ftp, redis-cli, dig, smbclient, rpcclient.

Every function returns a :class:`ClientResult` and never raises on a client
failure (a refused login is data); a hung client is killed after ``timeout``
seconds and reported with status 124, like coreutils' ``timeout``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import NamedTuple

TIMEOUT_STATUS = 124
DEFAULT_TIMEOUT = 20.0


class ClientResult(NamedTuple):
    status: int
    stdout: str
    stderr: str


def run_client(
    argv: Sequence[str], stdin: bytes | None = None, timeout: float = DEFAULT_TIMEOUT
) -> ClientResult:
    """Run one client process; output decoded for display only (errors='replace')."""
    try:
        proc = subprocess.run(
            list(argv),
            input=stdin if stdin is not None else b"",
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        err = (exc.stderr or b"").decode(errors="replace") + f"\n[killed after {timeout}s]"
        return ClientResult(TIMEOUT_STATUS, out, err)
    except FileNotFoundError as exc:
        return ClientResult(127, "", str(exc))
    return ClientResult(
        proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    )


def _host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr


# -- FTP ---------------------------------------------------------------------
def curl_ftp(
    addr: str,
    port: int,
    path: str = "/",
    user: str | None = None,
    password: str = "",
    upload: bytes | None = None,
    active_addr: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> ClientResult:
    """curl over FTP: a path ending in '/' lists it, else RETR; ``upload`` sends STOR (-T -).

    ``active_addr`` switches to active mode (``-P``); the server then connects
    back from an ephemeral port, so capture all of the loopback, not one port.
    """
    argv = ["curl", "-sS", "--max-time", str(timeout), f"ftp://{_host(addr)}:{port}{path}"]
    if user is not None:
        argv += ["--user", f"{user}:{password}"]
    if upload is not None:
        argv += ["-T", "-"]
    if active_addr is not None:
        argv += ["-P", active_addr]
    return run_client(argv, stdin=upload, timeout=timeout + 5)


def ftp_cli(
    addr: str,
    port: int,
    commands: Sequence[str],
    user: str = "anonymous",
    password: str = "lab@example.org",
    timeout: float = DEFAULT_TIMEOUT,
) -> ClientResult:
    """The interactive ``ftp`` client (tnftp) scripted on stdin, passive mode, verbose."""
    script = f"user {user} {password}\n" + "".join(f"{c}\n" for c in commands) + "bye\n"
    argv = ["ftp", "-n", "-p", "-v", addr, str(port)]
    return run_client(argv, stdin=script.encode(), timeout=timeout)


# -- Redis -------------------------------------------------------------------
def redis_cli(
    addr: str,
    port: int,
    commands: Sequence[Sequence[str]],
    repeat: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
) -> ClientResult:
    """redis-cli: one command as arguments (``repeat`` > 1: -r, same connection).

    Several commands go as stdin lines on one connection; redis-cli 7 then
    first sends COMMAND DOCS, whose answer is ~170 kB.
    """
    base = ["redis-cli", "-h", addr, "-p", str(port)]
    if len(commands) == 1:
        rep = ["-r", str(repeat)] if repeat > 1 else []
        return run_client(base + rep + list(commands[0]), timeout=timeout)
    lines = "".join(" ".join(_redis_quote(a) for a in cmd) + "\n" for cmd in commands)
    return run_client(base, stdin=lines.encode(), timeout=timeout)


def _redis_quote(arg: str) -> str:
    if arg and all(c.isalnum() or c in "_-:.*?" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- DNS ---------------------------------------------------------------------
def dig(
    addr: str,
    port: int,
    name: str,
    rtype: str = "A",
    tcp: bool = False,
    options: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> ClientResult:
    """dig one question (``rtype`` 'PTR' with an address does a reverse lookup via -x)."""
    argv = ["dig", f"@{addr}", "-p", str(port), "+tries=1", "+time=3"]
    if tcp:
        argv.append("+tcp")
    argv += list(options)
    argv += ["-x", name] if rtype == "PTR" and name[:1].isdigit() else [name, rtype]
    return run_client(argv, timeout=timeout)


# -- SMB ---------------------------------------------------------------------
def _smb_auth(user: str | None, password: str) -> list[str]:
    if user is None:
        return ["-N"]
    return ["-U", f"{user}%{password}"]


def smb_protocol_options(port: int, nt1: bool | None) -> list[str]:
    """SMB1 options for the NetBIOS port (139) by default, defaults elsewhere."""
    if nt1 is None:
        nt1 = port == 139
    if not nt1:
        return []
    return ["--option=client min protocol=NT1", "--option=client max protocol=NT1"]


def smbclient(
    addr: str,
    port: int,
    share: str | None = "public",
    command: str | None = "ls",
    user: str | None = None,
    password: str = "",
    nt1: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> ClientResult:
    """smbclient: ``share=None`` lists shares (-L), else runs ``command`` (-c) on the share.

    ``user=None`` is a guest session (-N); ``user=''`` is anonymous (-U%).
    """
    argv = ["smbclient", "-p", str(port), *smb_protocol_options(port, nt1)]
    argv += _smb_auth(user, password)
    if share is None:
        argv += ["-L", addr]
    else:
        argv += [f"//{addr}/{share}", "-c", command or "ls"]
    return run_client(argv, timeout=timeout)


def rpcclient(
    addr: str,
    port: int,
    commands: str = "lsaquery; lookupnames root",
    user: str = "",
    password: str = "",
    nt1: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> ClientResult:
    """rpcclient (DCE-RPC over SMB named pipes, e.g. \\pipe\\lsarpc); anonymous by default."""
    argv = ["rpcclient", "-p", str(port), *smb_protocol_options(port, nt1)]
    argv += ["-U", f"{user}%{password}", "-c", commands, addr]
    return run_client(argv, timeout=timeout)
