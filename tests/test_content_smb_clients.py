"""Real SMB clients against the emulator: the id the client checks, dependencies on and off.

Samba's SMB2 client (smbclient, rpcclient on 445) requires the answer to its
second session setup to carry the session id the server chose in the first
(it sends that id back in the request). Measured in
benchmarks/smb_id_checks.py and docs/content-dependencies.md. These tests
need root, smbd, smbclient, tcpdump and twistd; they use 127.0.6.1
(emulator) and 127.0.6.2 (real smbd).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.content_smb_logins import capture, completed, draw, play_runs
from benchmarks.lsass_like import train
from benchmarks.smb_id_checks import DIALOGS, FIELDS, perturb, play
from benchmarks.smb_id_checks import capture as capture_dialog
from tests.conftest import require_binaries, require_root

pytestmark = pytest.mark.integration
NEEDS = ("smbd", "smbclient", "tcpdump", "twistd")


def test_mixed_logins_complete_only_with_dependencies(tmp_path: Path) -> None:
    """One command (ls), the logins a scanner tries (guest, anonymous, unknown user):
    with dependencies new runs complete; without, the runs whose second session-setup
    template carries another session id than the first stop after request 3."""
    require_root()
    require_binaries(*NEEDS)
    logins = ["guest", "anonymous", "unknown"]
    train_runs = draw("smbclient", logins, 36, seed=5)
    test_runs = capture(train_runs, draw("smbclient", logins, 9, seed=1005), tmp_path / "t.pcap")
    assert [r.status for r in test_runs] == [0] * 9, "the real server must serve every run"
    train(tmp_path / "t.pcap", tmp_path / "models")

    on = play_runs(tmp_path / "models", tmp_path / "on", test_runs, deps=True)
    off = play_runs(tmp_path / "models", tmp_path / "off", test_runs, deps=False)

    assert sum(completed(r, o) for r, o in zip(test_runs, on, strict=True)) >= 8, on
    failed = [o for r, o in zip(test_runs, off, strict=True) if not completed(r, o)]
    assert len(failed) >= 3, off  # at least one login kind (3 runs) fails without
    assert {o.requests for o in failed} == {3}, failed
    assert any("NT_STATUS_INVALID_NETWORK_RESPONSE" in o.error for o in failed), failed


def test_smbclient_checks_the_session_id_but_not_the_tree_id(tmp_path: Path) -> None:
    """A single login: templates agree, so the model completes without dependencies;
    a changed session id in the answers after the first session setup stops the
    client after request 3, a changed tree id does not."""
    require_root()
    require_binaries(*NEEDS)
    dialog = DIALOGS["smbclient445"]
    assert capture_dialog(dialog, 12, tmp_path / "t.pcap") == [0] * 12
    train(tmp_path / "t.pcap", tmp_path / "models")
    model_file = next((tmp_path / "models").glob("*.json"))

    learned = play(tmp_path / "models", tmp_path / "emu", dialog, False, 1)[0]
    assert learned.status == 0, learned
    outcomes = {}
    for field in FIELDS:
        if field.name not in ("smb2.session_id", "smb2.tree_id"):
            continue
        model = json.loads(model_file.read_text())
        assert perturb(model, field) > 0
        pdir = tmp_path / field.name
        shutil.rmtree(pdir, ignore_errors=True)
        pdir.mkdir()
        (pdir / model_file.name).write_text(json.dumps(model))
        outcomes[field.name] = play(pdir, tmp_path / "emu", dialog, False, 1)[0]
    assert outcomes["smb2.session_id"].status != 0
    assert outcomes["smb2.session_id"].requests == 3
    assert "NT_STATUS_INVALID_NETWORK_RESPONSE" in outcomes["smb2.session_id"].error
    assert outcomes["smb2.tree_id"].status == 0, outcomes["smb2.tree_id"]
