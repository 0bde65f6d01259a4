"""Cutting documents into chunks of at most ``max_chars`` characters.

Chunks are cut at a paragraph break when one lies in the second half of the window, else at a
line break in the last three quarters, else after the last whitespace; only a single word longer
than ``max_chars`` is cut inside the word (and flagged). Whitespace stays attached to the end of
the chunk before the cut, so concatenating a document's chunks gives the document back exactly.
The rule looks at characters only, so every tokenizer sees the same text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_LINE = re.compile(r"\n\s*")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int
    """Character offset of the chunk in its document."""
    split_word: bool
    """True when the chunk ends inside a word longer than max_chars."""


def _last_cut(window: str, pattern: re.Pattern[str], lo: int) -> int:
    """End offset of the last match of ``pattern`` in ``window`` that ends after ``lo``; 0 if none."""
    cut = 0
    for match in pattern.finditer(window):
        if match.end() > lo:
            cut = match.end()
    return cut


def chunk_document(text: str, max_chars: int) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``max_chars`` characters (see module docstring)."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    chunks = []
    pos = 0
    while pos < len(text):
        if len(text) - pos <= max_chars:
            chunks.append(Chunk(text[pos:], pos, split_word=False))
            break
        # The window includes one character past the limit, so whitespace right after the limit
        # still counts as a boundary; a cut is never later than max_chars.
        window = text[pos : pos + max_chars + 1]
        cut = (
            _last_cut(window, _PARAGRAPH, max_chars // 2)
            or _last_cut(window, _LINE, max_chars // 4)
            or _last_cut(window, _SPACE, 0)
        )
        cut = min(cut, max_chars)
        if cut == 0:  # one word longer than the window: cut inside it
            chunks.append(Chunk(text[pos : pos + max_chars], pos, split_word=True))
            pos += max_chars
            continue
        chunks.append(Chunk(text[pos : pos + cut], pos, split_word=False))
        pos += cut
    return chunks
