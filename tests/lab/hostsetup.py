"""Idempotent host setup the lab needs (so CI only has to install packages)."""

from __future__ import annotations

import pwd
import subprocess
import time
from pathlib import Path

FTP_USER = "ftpuser"
FTP_PASSWORD = "ftppass"
SMB_USER = "smbuser"
SMB_PASSWORD = "smbpass"


def ensure_unix_user(name: str, password: str) -> None:
    """Create a login user with ``password`` unless it exists (needs root).

    Retried, because a teammate's lab may run useradd/chpasswd at the same
    moment (/etc/shadow is locked meanwhile).
    """
    for attempt in range(10):
        try:
            if not _exists(name):
                subprocess.run(
                    ["useradd", "-m", "-s", "/bin/bash", name], check=True, capture_output=True
                )
            subprocess.run(
                ["chpasswd"],
                input=f"{name}:{password}\n",
                text=True,
                check=True,
                capture_output=True,
            )
            return
        except subprocess.CalledProcessError:
            if attempt == 9:
                raise
            time.sleep(0.2 + 0.1 * attempt)


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def ensure_dir(path: str, mode: int = 0o755) -> Path:
    """Create a directory (and parents) if missing; vsftpd needs an empty chroot dir."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    p.chmod(mode)
    return p
