import random

import pytest

from stages.prepare.chunking import chunk_document


def _random_document(rng: random.Random) -> str:
    words = ["alpha", "β-test", "x" * rng.randint(1, 30), "naïve", "def", "🙂", "1234"]
    parts = []
    for _ in range(rng.randint(1, 400)):
        parts.append(rng.choice(words))
        parts.append(rng.choice([" ", " ", "  ", "\n", "\n\n", "\t", " \n \n"]))
    return "".join(parts)


@pytest.mark.parametrize("max_chars", [16, 64, 300])
def test_chunks_reassemble_and_respect_the_limit(max_chars: int) -> None:
    rng = random.Random(max_chars)
    for _ in range(200):
        doc = _random_document(rng)
        chunks = chunk_document(doc, max_chars)
        assert "".join(c.text for c in chunks) == doc
        assert all(doc[c.start : c.start + len(c.text)] == c.text for c in chunks)
        for c in chunks:
            assert len(c.text) <= max_chars
            # Only a cut inside a word longer than max_chars is flagged, and only then may a
            # chunk end in the middle of a word.
            end = c.start + len(c.text)
            if end < len(doc) and not c.split_word:
                assert doc[end - 1].isspace() or doc[end].isspace()


def test_prefers_paragraph_then_line_boundaries() -> None:
    doc = "a" * 30 + " " + "b" * 30 + "\n\n" + "c" * 10
    chunks = chunk_document(doc, 70)
    assert [c.text for c in chunks] == ["a" * 30 + " " + "b" * 30 + "\n\n", "c" * 10]
    doc = "one two three\nfour five six seven"
    assert [c.text for c in chunk_document(doc, 24)] == ["one two three\n", "four five six seven"]


def test_long_word_is_split_and_flagged() -> None:
    doc = "short " + "w" * 25 + " end"
    chunks = chunk_document(doc, 10)
    assert "".join(c.text for c in chunks) == doc
    flagged = [c for c in chunks if c.split_word]
    assert flagged and all(set(c.text) == {"w"} and len(c.text) == 10 for c in flagged)
    assert not chunk_document("a b c", 10)[0].split_word


def test_short_document_is_one_chunk_and_empty_gives_none() -> None:
    assert [c.text for c in chunk_document("hello world", 2000)] == ["hello world"]
    assert chunk_document("", 100) == []
