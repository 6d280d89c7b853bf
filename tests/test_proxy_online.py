"""OnlineLearner's batch handling, with a stand-in worker (the real trainer
runs in the proxy integration tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer

from scriptgen.emulate.online import OnlineLearner


class _Spool:
    def __init__(self) -> None:
        self.settled: list[tuple[str, bool]] = []

    def settle(self, path: Path, learned: bool) -> Path:
        self.settled.append((path.name, learned))
        return path

    def prune(self, spared: Any) -> None:
        self.pruned = getattr(self, "pruned", 0) + 1


def _worker(model_dir: str, files: list[str]) -> dict[str, Any]:
    """Fails on any batch holding bad.pcap; each good file touches its own port."""
    names = [Path(f).name for f in files]
    if "bad.pcap" in names:
        raise ValueError("bad.pcap: not a capture")
    ports = [{"port": f"tcp/{1000 + i}", "states": 2} for i, n in enumerate(sorted(names))]
    if names == ["b.pcap"]:
        ports = [{"port": "tcp/2000", "states": 3}]
    return {"new": [{"pattern": n} for n in names], "ports": ports}


def test_a_bad_file_fails_alone_and_every_port_of_the_others_is_reported(tmp_path):
    files = []
    for name in ("a.pcap", "bad.pcap", "b.pcap"):
        (tmp_path / name).write_bytes(b"x")
        files.append(tmp_path / name)
    events: list[tuple[str, dict[str, Any]]] = []
    spool = _Spool()
    reloads = []
    learner = OnlineLearner(
        tmp_path,
        spool,  # type: ignore[arg-type]
        lambda eventid, **kw: events.append((eventid, kw)),
        lambda f, *a: defer.maybeDeferred(f, *a),
        lambda: reloads.append(1),
        worker=_worker,
    )
    learner.submit(files)
    assert sorted(spool.settled) == [("a.pcap", True), ("b.pcap", True), ("bad.pcap", False)]
    failed = [kw for e, kw in events if e == "scriptgen.proxy.learn_failed"]
    assert [f["file"] for f in failed] == ["bad.pcap"] and "not a capture" in failed[0]["error"]
    (learned,) = [kw for e, kw in events if e == "scriptgen.proxy.learned"]
    assert learned["files"] == ["a.pcap", "b.pcap"]
    # a.pcap's run touched tcp/1000, b.pcap's tcp/2000: both are reported
    assert [p["port"] for p in learned["ports"]] == ["tcp/1000", "tcp/2000"]
    assert learned["new_transitions"] == 2
    assert len([e for e, _ in events if e == "scriptgen.proxy.signature"]) == 2
    assert reloads == [1]
    assert spool.pruned == 1  # learned/ is pruned after the batch


def test_region_keys_of_the_proxy_section_reach_the_learner_options(tmp_path: Path) -> None:
    """[proxy] distance_threshold (like min_cluster_size, micro_min_count) sets region
    analysis of online learning; 0 keeps the trainer's default; out of range is refused."""
    import pytest

    from scriptgen.emulate.config import ConfigError, load_config
    from scriptgen.emulate.online import _options, region_overrides
    from scriptgen.learn.regions import RegionOptions

    assert region_overrides(0, 0, 0.0) == {} and _options(region_overrides(0, 0)).region is None
    assert _options({}, b"k" * 16).sample_salt == b"k" * 16  # the spool's secret travels
    opts = _options(region_overrides(0, 2, 0.4))
    assert opts.region == RegionOptions(micro_min_count=2, distance_threshold=0.4)
    ini = tmp_path / "s.ini"
    ini.write_text(f"[scriptgen]\nmodel_dir = {tmp_path}\n[proxy]\ndistance_threshold = 0.4\n")
    assert load_config(ini).proxy.distance_threshold == 0.4
    ini.write_text(f"[scriptgen]\nmodel_dir = {tmp_path}\n[proxy]\ndistance_threshold = 1.5\n")
    with pytest.raises(ConfigError, match="distance_threshold"):
        load_config(ini)
