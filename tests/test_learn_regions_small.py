"""Region analysis of small clusters: fixed widths learned from a handful of requests."""

from __future__ import annotations

import random

from scriptgen.learn.regions import RegionOptions, analyse

OPTIONS = RegionOptions(distance_threshold=0.95, micro_max_depth=0)


def requests(n: int, seed: int) -> list[bytes]:
    """``n`` requests: a 4-byte id, then a 16-letter name, between fixed words."""
    rng = random.Random(seed)
    letters = b"abcdefghijklmnopqrstuvwxyz"
    return [
        b"OPEN id="
        + rng.randbytes(4)
        + b" name="
        + bytes(rng.choice(letters) for _ in range(16))
        + b" mode=read\r\n"
        for _ in range(n)
    ]


def widths(n: int) -> list[tuple[int, int]]:
    samples = requests(n, seed=n)
    (cluster,) = analyse(samples, OPTIONS)
    assert sorted(cluster.members) == list(range(n))
    return [(r.min_len, r.max_len) for r in cluster.pattern.regions if not r.is_fixed]


def test_a_wide_field_of_equal_lengths_in_few_requests_is_generalised() -> None:
    """Three 16-letter names say little about the next name's length; the next
    request with a 20-letter name must still match."""
    found = widths(3)
    assert (4, 4) in found  # a narrow fixed-width field (an id) stays exact
    assert (8, 32) in found  # 16 widened as a variable width would be (length_slack 1)
    (cluster,) = analyse(requests(3, seed=3), OPTIONS)
    assert cluster.pattern.fullmatch(
        b"OPEN id=\x00\x01\x02\x03 name=" + b"x" * 20 + b" mode=read\r\n"
    )


def test_a_wide_field_of_equal_lengths_in_many_requests_stays_exact() -> None:
    """From 2 x min_cluster_size requests on, an equal width is taken as the format's."""
    found = widths(2 * OPTIONS.min_cluster_size)
    assert (4, 4) in found
    assert (16, 16) in found


def test_a_wide_field_before_a_short_id_keeps_its_width() -> None:
    """A 2-byte id after the wide field must stay at a fixed offset (content
    inference finds the ids a server echoes by offset), so nothing before it widens."""
    rng = random.Random(5)
    samples = [b"HDR" + rng.randbytes(16) + b"ID" + rng.randbytes(2) + b"END" for _ in range(3)]
    (cluster,) = analyse(samples, OPTIONS)
    found = [(r.min_len, r.max_len) for r in cluster.pattern.regions if not r.is_fixed]
    assert found == [(16, 16), (2, 2)]
