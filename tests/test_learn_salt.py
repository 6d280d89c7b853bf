"""The full-bucket sample is keyed: online, attackers must not choose what stays.

Offline training keys the sample hash with nothing (deterministic models);
the proxy's online learning keys it with its spool's secret (Spool.salt),
which never reaches a model file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from scriptgen.emulate.recorder import SALT, SALT_BYTES, Spool
from scriptgen.learn.phases import Learner, LearnOptions, _sample_key
from scriptgen.learn.trainer import TrainOptions, train
from scriptgen.model import Machine
from tests.test_learn_phases import dialog
from tests.test_learn_standin import make_standin


def kept(flows, salt: bytes) -> list[bytes]:
    machine = Machine("tcp", 21)
    Learner(machine, make_standin(), LearnOptions(max_bucket=10), salt).add(flows)
    return sorted(s.turns[0].request for s in machine.states[0].bucket)


def unsalted_favourites(flows, n: int) -> list[bytes]:
    """What an attacker who knows the unkeyed hash computes as the suffixes that stay."""
    ranked = sorted(flows, key=lambda d: _sample_key(d.suffix))
    return sorted(d.suffix.turns[0].request for d in ranked[:n])


def test_the_salt_decides_what_stays_and_the_same_salt_keeps_the_same() -> None:
    flows = [dialog([(b"REQ%d" % i, b"")], origin=f"o{i}") for i in range(40)]
    assert kept(flows, b"") == unsalted_favourites(flows, 10)  # offline: computable
    secret = b"s" * 16
    assert kept(flows, secret) == kept(flows[::-1], secret)  # still order-independent
    salted = {tuple(kept(flows, bytes([n]) * 16)) for n in range(4)}
    assert len(salted) > 1  # the key, not the requests, decides


def test_the_spool_secret_is_made_once_private_and_replaced_when_damaged(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first = spool.salt()
    assert len(first) == SALT_BYTES
    assert (tmp_path / "spool" / SALT).stat().st_mode & 0o777 == 0o600
    assert Spool(tmp_path / "spool").salt() == first  # a restart keeps it
    (tmp_path / "spool" / SALT).write_bytes(b"short")
    again = spool.salt()
    assert len(again) == SALT_BYTES and again != first
    assert spool.pending() == []  # not a recording


def test_the_secret_never_reaches_a_model_file(tmp_path: Path) -> None:
    capture = Path(__file__).resolve().parent / "data" / "captures" / "redis.pcap"
    secret = os.urandom(16)
    train([capture], tmp_path, TrainOptions(sample_salt=secret))
    text = "".join(p.read_text() for p in tmp_path.glob("*.json"))
    assert secret.hex() not in text and "sample_salt" not in text
    assert hashlib.sha256(secret).hexdigest() not in text
