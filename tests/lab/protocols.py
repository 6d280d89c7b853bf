"""What the lab knows per protocol: which server, which port, which capture filter."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass

from tests.lab.daemon import Daemon
from tests.lab.servers import DnsServer, FtpServer, RedisServer, SambaServer

FTP_PASV = (40000, 40049)


@dataclass(frozen=True)
class LabProtocol:
    """One capturable dialog: the server to start and the port its clients use."""

    name: str
    port: int
    make_server: Callable[[str, int], Daemon]
    binaries: tuple[str, ...]
    port_ranges: tuple[tuple[int, int], ...] = ()

    def missing_binaries(self) -> list[str]:
        return [b for b in self.binaries if shutil.which(b) is None]


PROTOCOLS: dict[str, LabProtocol] = {
    p.name: p
    for p in (
        LabProtocol(
            "ftp",
            21,
            lambda a, p: FtpServer(a, p, pasv_range=FTP_PASV),
            ("vsftpd", "curl", "ftp"),
            (FTP_PASV,),
        ),
        LabProtocol("redis", 6379, RedisServer, ("redis-server", "redis-cli")),
        LabProtocol("dns", 53, DnsServer, ("dnsmasq", "dig")),
        LabProtocol(
            "smb139",
            139,
            lambda a, p: SambaServer(a, port=0, netbios_port=p),
            ("smbd", "smbclient"),
        ),
        LabProtocol(
            "smb445",
            445,
            lambda a, p: SambaServer(a, port=p, netbios_port=0),
            ("smbd", "smbclient"),
        ),
        LabProtocol(
            "lsarpc139",
            139,
            lambda a, p: SambaServer(a, port=0, netbios_port=p),
            ("smbd", "rpcclient"),
        ),
    )
}
