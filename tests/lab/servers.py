"""Real servers for the lab: vsftpd, redis-server, dnsmasq, smbd.

Each is a :class:`~tests.lab.daemon.Daemon` context manager bound to a
loopback address (127.0.0.2 by default) and a port given by the caller.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from tests.lab import hostsetup as setup
from tests.lab.daemon import DEFAULT_ADDR, Daemon, LabError, render_template, wait_tcp

# Files every server that serves files publishes; the variety generator draws
# existing paths from here and non-existing ones elsewhere.
PUBLIC_FILES: dict[str, bytes] = {
    "readme.txt": b"scriptgen lab\nThis server is a test fixture.\n",
    "notes.txt": b"line one\nline two\nline three\n",
    "data.bin": bytes(range(256)) * 4,
    "pub/report.csv": b"id,name,value\n1,alpha,10\n2,beta,20\n3,gamma,30\n",
    "pub/empty.dat": b"",
    "docs/guide.txt": b"Chapter 1\n" + b"All work and no play. " * 40 + b"\n",
    "docs/old/archive.txt": b"archived\n",
    "images/logo.txt": b"<logo>\n",
}
PUBLIC_DIRS = ("pub", "docs", "docs/old", "images", "upload")


def populate(root: Path, owner: str | None = None) -> None:
    """Write :data:`PUBLIC_FILES` under ``root`` (optionally chown to ``owner``)."""
    for d in PUBLIC_DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    for rel, data in PUBLIC_FILES.items():
        (root / rel).write_bytes(data)
    if owner is not None:
        pw = pwd.getpwnam(owner)
        for path in [root, *root.rglob("*")]:
            os.chown(path, pw.pw_uid, pw.pw_gid)


class FtpServer(Daemon):
    """vsftpd: anonymous root with files, plus local user ``ftpuser`` (may upload)."""

    name = "vsftpd"

    def __init__(
        self,
        addr: str = DEFAULT_ADDR,
        port: int = 21,
        pasv_range: tuple[int, int] = (40000, 40049),
        banner: str = "scriptgen lab FTP",
    ) -> None:
        super().__init__(addr, port)
        self.pasv_range = pasv_range
        self.banner = banner

    def prepare(self, tmp: Path) -> None:
        setup.ensure_unix_user(setup.FTP_USER, setup.FTP_PASSWORD)
        chroot = setup.ensure_dir("/var/run/vsftpd/empty")
        anon = tmp / "anon"
        populate(anon)
        home = tmp / "home"
        populate(home, owner=setup.FTP_USER)
        conf = render_template(
            "vsftpd.conf",
            {
                "addr": self.addr,
                "port": self.port,
                "anon_root": anon,
                "local_root": home,
                "pasv_min": self.pasv_range[0],
                "pasv_max": self.pasv_range[1],
                "secure_chroot_dir": chroot,
                "tmp": tmp,
                "banner": self.banner,
            },
        )
        (tmp / "vsftpd.conf").write_text(conf)

    def command(self, tmp: Path) -> list[str]:
        return ["vsftpd", str(tmp / "vsftpd.conf")]


class RedisServer(Daemon):
    """redis-server without persistence."""

    name = "redis"

    def __init__(self, addr: str = DEFAULT_ADDR, port: int = 6379) -> None:
        super().__init__(addr, port)

    def prepare(self, tmp: Path) -> None:
        conf = render_template("redis.conf", {"addr": self.addr, "port": self.port, "tmp": tmp})
        (tmp / "redis.conf").write_text(conf)

    def command(self, tmp: Path) -> list[str]:
        return ["redis-server", str(tmp / "redis.conf")]


class DnsServer(Daemon):
    """dnsmasq answering for ``lab.test`` over UDP and TCP (records in conf/dnsmasq.conf)."""

    name = "dnsmasq"

    def __init__(self, addr: str = DEFAULT_ADDR, port: int = 53) -> None:
        super().__init__(addr, port)

    def prepare(self, tmp: Path) -> None:
        conf = render_template("dnsmasq.conf", {"addr": self.addr, "port": self.port})
        (tmp / "dnsmasq.conf").write_text(conf)

    def command(self, tmp: Path) -> list[str]:
        return [
            "dnsmasq",
            "--keep-in-foreground",
            "--log-facility=-",
            f"--conf-file={tmp / 'dnsmasq.conf'}",
        ]

    def wait_ready(self) -> None:
        # dnsmasq opens its UDP and TCP sockets together; TCP is the one we can probe.
        wait_tcp(self.addr, self.port, self.start_timeout, self.proc)


class SambaServer(Daemon):
    """smbd with SMB1 (NT1) allowed, NetBIOS session service on 139, SMB2/3 on 445.

    A guest ``[public]`` share holds :data:`PUBLIC_FILES`; ``smbuser`` /
    ``smbpass`` is a real account for authenticated runs.
    """

    name = "smbd"
    start_timeout = 30.0

    def __init__(
        self,
        addr: str = DEFAULT_ADDR,
        port: int = 445,
        netbios_port: int = 139,
        netbios_name: str = "LABSRV",
    ) -> None:
        super().__init__(addr, port)
        self.netbios_port = netbios_port
        self.netbios_name = netbios_name

    @property
    def ports(self) -> list[int]:
        return [p for p in (self.port, self.netbios_port) if p]

    def conf_path(self) -> Path:
        if self.tmp is None:
            raise LabError("smbd is not running")
        return self.tmp / "smb.conf"

    def prepare(self, tmp: Path) -> None:
        for d in ("lock", "state", "cache", "run", "private", "binddns", "ncalrpc", "log"):
            (tmp / d).mkdir()
        (tmp / "private").chmod(0o700)
        share = tmp / "share"
        populate(share)
        conf = render_template(
            "smb.conf",
            {
                "addr": self.addr,
                "smb_ports": " ".join(str(p) for p in self.ports),
                "netbios_name": self.netbios_name,
                "tmp": tmp,
                "share": share,
            },
        )
        (tmp / "smb.conf").write_text(conf)
        setup.ensure_unix_user(setup.SMB_USER, setup.SMB_PASSWORD)
        pw = f"{setup.SMB_PASSWORD}\n{setup.SMB_PASSWORD}\n"
        subprocess.run(
            ["smbpasswd", "-c", str(tmp / "smb.conf"), "-s", "-a", setup.SMB_USER],
            input=pw,
            text=True,
            check=True,
            capture_output=True,
        )

    def command(self, tmp: Path) -> list[str]:
        return ["smbd", "-F", "--no-process-group", "--debug-stdout", "-s", str(tmp / "smb.conf")]

    def wait_ready(self) -> None:
        for port in self.ports:
            wait_tcp(self.addr, port, self.start_timeout, self.proc)

    def ports_in_use(self) -> list[int]:
        return self.ports


def have(binary: str) -> bool:
    """Whether a lab binary is installed (for skip decisions)."""
    return shutil.which(binary) is not None
