"""What a message looks like, not what it says (shared by learner and proxy).

Answers of one kind of request differ in values (a counter, a name, an id)
but keep their form; answers of different requests lumped into one
transition (a stored value, a miss, an error) differ in form. The proxy
doubts a weakly learned transition whose answers have several shapes; the
learner lets two requests just past the clustering cut join when their
answers have one shape. Nothing here knows a protocol.
"""

from __future__ import annotations

import re

SHAPE_BYTES = 256  # bytes of each message that decide its shape
# Byte classes: letters and digits (words, numbers, names), other non-printable
# bytes; tab, CR, LF, space and punctuation stay themselves.
_WORD, _BINARY = b"\x01", b"\x02"
_CLASSES = bytes(
    _WORD[0] if b < 128 and chr(b).isalnum()
    else b if 0x20 <= b < 0x7F or b in (9, 10, 13)
    else _BINARY[0]
    for b in range(256)
)  # fmt: skip
_RUNS = re.compile(rb"([\x01\x02])\1+")


def shape(message: bytes) -> bytes:
    """Runs of letters and digits, and runs of other binary bytes, collapsed to
    one class byte each; punctuation, spaces and line ends kept (first
    ``SHAPE_BYTES`` bytes)."""
    return _RUNS.sub(rb"\1", message[:SHAPE_BYTES].translate(_CLASSES))
