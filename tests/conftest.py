"""Shared fixtures: where the team's shared data lives, and skip helpers.

Tests that need ../shared (the public capture corpus) or real software must
skip cleanly when it is absent: a user's fresh clone has neither.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_DIR = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
CORPORA_DIR = SHARED_DIR / "corpora"
CAPTURES_DIR = REPO_DIR / "tests" / "data" / "captures"


def require_binaries(*names: str) -> None:
    """Skip the calling test unless every named program is on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


def require_root() -> None:
    """Skip unless root: the lab binds privileged ports, creates users and runs tcpdump."""
    if os.geteuid() != 0:
        pytest.skip("needs root (privileged ports, useradd, tcpdump)")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared next to the repository (skips when absent)."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"{SHARED_DIR} is absent")
    return SHARED_DIR


@pytest.fixture(scope="session")
def corpora_dir(shared_dir: Path) -> Path:
    """../shared/corpora, the public capture corpus (skips when absent)."""
    if not CORPORA_DIR.is_dir():
        pytest.skip(f"{CORPORA_DIR} is absent")
    return CORPORA_DIR


@pytest.fixture(scope="session")
def captures_dir() -> Path:
    """The small lab captures committed under tests/data/captures."""
    return CAPTURES_DIR


@pytest.fixture(scope="session")
def lab_addr() -> str:
    """Loopback address the lab's real servers bind to (the emulator uses 127.0.0.1)."""
    return os.environ.get("SCRIPTGEN_LAB_ADDR", "127.0.0.2")
