"""Session inference on the committed lab captures: no signal where there is no dependency.

Each capture holds 50 runs of one protocol from one source (tests/data/captures):
the service port is always open, so it must never be gated. In ftp.pcap the
passive data ports come from a 50-port range, so each data port is seen a few
times at most: whatever is found there must be a data port opened from port
21, never port 21 itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scriptgen.learn import train

CAPTURES = Path(__file__).resolve().parent / "data" / "captures"


@pytest.mark.parametrize("name", ["redis", "dns", "smb139", "lsarpc139", "ftp"])
def test_no_signal_without_a_dependency(name: str, tmp_path: Path) -> None:
    pcap = CAPTURES / f"{name}.pcap"
    if not pcap.exists():
        pytest.skip(f"{pcap} is absent")
    report = train([pcap], tmp_path).sessions
    assert report.contacts >= 50
    # The service port was accepted from the first run on, with no cause: never gated.
    assert any("without a cause" in r.reason for r in report.rejections)
    if name != "ftp":
        assert report.findings == []
    for f in report.findings:
        assert f.key == ("tcp", 21) and f.target != ("tcp", 21) and f.mode == "announced"
