"""The space mask (the ids whose mass is ALM's σ) on the real tokenizers of the three demo
teachers: byte-level BPE markers (`Ġ`, `Ċ`, `ĉ`), SentencePiece `▁` and byte tokens resolved."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.align.token_text import build_token_table, space_mask
from stages.tokenization import load_tokenizer

TOKENIZERS = Path(__file__).resolve().parents[3] / "models" / "tokenizers"

# (tokenizer folder, vocabulary strings that start a word, strings that do not)
CASES = [
    (
        "smollm2-135m-instruct",
        ["Ġdef", "ĊĠĠĠ", "Ċ", "ĉ", "Ġ", "<|endoftext|>", "<|im_start|>"],
        ["def", "the", "č", "("],
    ),
    ("gemma-3-270m", ["▁the", "▁", "<0x0A>", "<0x09>", "<bos>", "<eos>"], ["the", "def", "Ġ", "<0x0D>"]),
    ("qwen2.5-coder-1.5b-instruct", ["Ġdef", "Ċ", "ĉ", "<|endoftext|>"], ["def", "the", "č"]),
]


@pytest.mark.parametrize(("name", "starts", "inside"), CASES, ids=[c[0] for c in CASES])
def test_space_mask_on_the_real_tokenizers(name: str, starts: list[str], inside: list[str]) -> None:
    tokenizer = load_tokenizer(TOKENIZERS / name)
    table = build_token_table(tokenizer)
    mask = space_mask(table)
    vocab = tokenizer.get_vocab()
    assert len(mask) == len(table.texts)
    assert [s for s in starts if not mask[vocab[s]]] == []
    assert [s for s in inside if mask[vocab[s]]] == []
    assert mask[table.special].all()  # every special token counts as a word start
    texts = [t for t, m in zip(table.texts, mask, strict=True) if m and t]
    assert all(t[0] in " \t\n" for t in texts)
    # Sized to a model head wider than the tokenizer: the extra ids emit nothing.
    wide = space_mask(table, len(table.texts) + 7)
    assert (wide[: len(mask)] == mask).all() and not wide[len(mask) :].any()
    assert (space_mask(table, 100) == mask[:100]).all()
