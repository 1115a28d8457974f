"""Which characters the output stream can show: Unicode when its encoding has them, else ASCII."""

from __future__ import annotations

from typing import TextIO


def _encodes(stream: TextIO, characters: str) -> bool:
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        characters.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def symbols(stream: TextIO) -> dict[str, str]:
    """`arrow` (→ or ->) and `unicode` ("yes" when box-drawing characters can be drawn, else "")."""
    if not _encodes(stream, "→│└─"):
        return {"arrow": "->", "unicode": ""}
    return {"arrow": "→", "unicode": "yes"}


def check_marks(stream: TextIO) -> dict[str, str]:
    """Doctor's marks for `ok`, `fail` and `warn`."""
    if not _encodes(stream, "✓✗!"):
        return {"ok": "[ok]  ", "fail": "[FAIL]", "warn": "[warn]"}
    return {"ok": "✓", "fail": "✗", "warn": "!"}
