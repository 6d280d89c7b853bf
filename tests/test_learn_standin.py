"""A tiny stand-in for region analysis, for the learner's unit tests.

It groups requests by their first ``key_len`` bytes and describes each group
as common prefix (fixed) + varying middle (mutating) + common suffix
(fixed); groups smaller than ``min_size`` are dropped, as the real analysis
drops small clusters. The learner must not care which analysis it gets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from scriptgen.model import Pattern, Region


@dataclass(frozen=True)
class StandinCluster:
    pattern: Pattern
    members: tuple[int, ...]


def _common_prefix(items: Sequence[bytes]) -> int:
    return len(os.path.commonprefix(list(items)))


def standin_pattern(samples: Sequence[bytes]) -> Pattern:
    pre = _common_prefix(samples)
    rest = [s[pre:] for s in samples]
    suf = _common_prefix([r[::-1] for r in rest])
    mids = [r[: len(r) - suf] for r in rest]
    regions = []
    if pre:
        regions.append(Region(samples[0][:pre]))
    lo, hi = min(map(len, mids)), max(map(len, mids))
    if hi:
        regions.append(Region.mutating(lo, hi))
    if suf:
        regions.append(Region(rest[0][len(rest[0]) - suf :]))
    return Pattern(tuple(regions))


@dataclass(frozen=True)
class Standin:
    """Picklable (module-level class), so it also runs in worker processes."""

    key_len: int = 4
    min_size: int = 3

    def __call__(
        self, samples: Sequence[bytes], answers: Sequence[bytes | None] | None = None
    ) -> list[StandinCluster]:
        groups: dict[bytes, list[int]] = {}
        for i, s in enumerate(samples):
            groups.setdefault(s[: self.key_len], []).append(i)
        out = []
        for members in groups.values():
            if len(members) >= self.min_size:
                pat = standin_pattern([samples[i] for i in members])
                out.append(StandinCluster(pat, tuple(members)))
        return out


def make_standin(key_len: int = 4, min_size: int = 3) -> Standin:
    return Standin(key_len, min_size)


def test_standin_patterns_match_their_members():
    analyse = make_standin()
    samples = [b"USER a\r\n", b"USER bob\r\n", b"USER carol\r\n", b"QUIT\r\n"]
    clusters = analyse(samples)
    assert len(clusters) == 1
    c = clusters[0]
    assert c.members == (0, 1, 2)
    assert all(c.pattern.fullmatch(samples[i]) for i in c.members)
    assert c.pattern.fullmatch(b"QUIT\r\n") is None
