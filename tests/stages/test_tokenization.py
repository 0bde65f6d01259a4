"""stages/tokenization.py on the real demo tokenizers: loading, fingerprints, covered-text ends."""

from __future__ import annotations

import copy
import unicodedata

import numpy as np
import pytest

from stages.align.token_text import build_token_table
from stages.tokenization import (
    covered_ends,
    load_tokenizer,
    tokenize_many_with_ends,
    tokenize_with_ends,
    tokenizer_fingerprint,
)
from tests.stages.conftest import GEMMA, QWEN, SMOLLM2, corpus_like_texts

ALL = (SMOLLM2, GEMMA, QWEN)


def tokens_and_ends(tokenizer, text: str, add_special_tokens: bool = True) -> list[tuple[str, int]]:
    tokenized = tokenize_with_ends(tokenizer, text, add_special_tokens=add_special_tokens, max_tokens=None)
    return list(zip(tokenizer.convert_ids_to_tokens(tokenized.ids.tolist()), tokenized.ends.tolist()))


def byte_truth_ends(tokenizer, text: str) -> list[int]:
    """Ends from first principles: the bytes each token emits, summed, read at char boundaries.

    A token whose running byte count lands on a character boundary ends there; one that stops
    inside a character takes the end of the next token that lands on a boundary.
    """
    ids = tokenize_with_ends(tokenizer, text, add_special_tokens=True, max_tokens=None).ids.tolist()
    pieces = [build_token_table_cached(tokenizer).pieces[i] or b"" for i in ids]
    assert b"".join(pieces) == text.encode(), "the tokens must emit exactly the text's bytes"
    char_at_byte = {0: 0}
    running = 0
    for index, char in enumerate(text):
        running += len(char.encode())
        char_at_byte[running] = index + 1
    ends, following = [0] * len(ids), len(text)
    running_bytes = np.cumsum([len(p) for p in pieces])
    for t in reversed(range(len(ids))):
        following = char_at_byte.get(int(running_bytes[t]), following)
        ends[t] = following
    return ends


_tables: dict[int, object] = {}


def build_token_table_cached(tokenizer):
    if id(tokenizer) not in _tables:
        _tables[id(tokenizer)] = build_token_table(tokenizer)
    return _tables[id(tokenizer)]


def test_load_tokenizer_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"no tokenizer files.*make setup"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "NoSuchTokenizer"}')
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("name", ALL)
def test_ids_match_the_transformers_call(demo_tokenizers, name):
    tokenizer = demo_tokenizers[name]
    texts = corpus_like_texts(files=1)
    for special in (True, False):
        batch = tokenize_many_with_ends(tokenizer, texts, add_special_tokens=special, max_tokens=None)
        for text, tokenized in zip(texts, batch, strict=True):
            assert tokenized.ids.tolist() == tokenizer(text, add_special_tokens=special)["input_ids"]
            assert tokenized.ids.dtype == np.int32 and tokenized.ends.dtype == np.int32
            assert np.all(np.diff(tokenized.ends) >= 0) and tokenized.ends[-1] == len(text)


@pytest.mark.parametrize("name", ALL)
def test_ends_match_the_bytes_each_token_emits(demo_tokenizers, name):
    # NFC text: Qwen normalises to NFC, so only there do its tokens emit the text's own bytes.
    tokenizer = demo_tokenizers[name]
    for text in corpus_like_texts():
        text = unicodedata.normalize("NFC", text)
        expected = byte_truth_ends(tokenizer, text)
        got = tokenize_with_ends(tokenizer, text, add_special_tokens=True, max_tokens=None).ends.tolist()
        assert got == expected


def test_smollm2_byte_level_conventions(demo_tokenizers):
    smollm2 = demo_tokenizers[SMOLLM2]
    # Leading space inside the word token; the emoji split in two pieces that share its end.
    assert tokens_and_ends(smollm2, "  hi 😀 café") == [
        ("Ġ", 1), ("Ġhi", 4), ("ĠðŁĺ", 6), ("Ģ", 6), ("ĠcafÃ©", 11),
    ]  # fmt: skip
    # Blank line + indentation go into one token; digits are single tokens.
    assert tokens_and_ends(smollm2, "):\n\n    return x12\n") == [
        ("):", 2), ("ĊĊĠĠĠ", 7), ("Ġreturn", 14), ("Ġx", 16), ("1", 17), ("2", 18), ("Ċ", 19),
    ]  # fmt: skip
    # A decomposed accent is two bytes split over two tokens; "e" itself stays a boundary.
    assert tokens_and_ends(smollm2, " e\u0301") == [("Ġe", 2), ("Ì", 3), ("ģ", 3)]


def test_gemma_sentencepiece_conventions(demo_tokenizers):
    gemma = demo_tokenizers[GEMMA]
    assert tokens_and_ends(gemma, "Hello world") == [("<bos>", 0), ("Hello", 5), ("▁world", 11)]
    assert tokens_and_ends(gemma, "Hello world", add_special_tokens=False) == [("Hello", 5), ("▁world", 11)]
    assert tokens_and_ends(gemma, "):\n\n    return 12\r\n") == [
        ("<bos>", 0), ("):", 2), ("\n\n", 4), ("▁▁▁▁", 8), ("return", 14), ("▁", 15), ("1", 16), ("2", 17),
        ("<0x0D>", 18), ("\n", 19),
    ]  # fmt: skip
    # Byte fallback: a character outside the vocabulary is four byte tokens sharing its end.
    assert tokens_and_ends(gemma, "𝔘x") == [
        ("<bos>", 0), ("<0xF0>", 1), ("<0x9D>", 1), ("<0x94>", 1), ("<0x98>", 1), ("x", 2),
    ]  # fmt: skip


def test_qwen_nfc_merge_gives_the_merged_token_the_whole_span(demo_tokenizers):
    qwen = demo_tokenizers[QWEN]
    # "e" + U+0301 is normalised to "é"; Hugging Face reports the span of "e" only.
    assert tokenizer_offsets(qwen, "x e\u0301 y") == [(0, 1), (1, 3), (4, 6)]
    assert tokens_and_ends(qwen, "x e\u0301 y") == [("x", 1), ("ĠÃ©", 4), ("Ġy", 6)]


def tokenizer_offsets(tokenizer, text: str) -> list[tuple[int, int]]:
    return [tuple(span) for span in tokenizer(text, return_offsets_mapping=True)["offset_mapping"]]


def test_covered_ends_rules():
    text = "ab😀 c"
    # "ab", a piece holding the space-less first half of 😀, the second half, " c".
    assert covered_ends(np.array([0, 2, 2, 3]), np.array([2, 3, 3, 5]), text).tolist() == [2, 3, 3, 5]
    # A piece that finishes one character and starts the next takes the next clean end.
    text = "日本"
    assert covered_ends(np.array([0, 0, 1]), np.array([1, 2, 2]), text).tolist() == [2, 2, 2]
    # Trimmed whitespace (RoBERTa-style offsets) stays with the token after it.
    assert covered_ends(np.array([0, 6]), np.array([5, 11]), "hello world").tolist() == [5, 11]
    # Zero-width special tokens at both ends.
    assert covered_ends(np.array([0, 0, 2]), np.array([0, 2, 2]), "hi").tolist() == [0, 2, 2]


def test_truncation_keeps_the_first_tokens_and_flags_it(demo_tokenizers):
    smollm2 = demo_tokenizers[SMOLLM2]
    full = tokenize_with_ends(smollm2, "😀😀 ab", add_special_tokens=True, max_tokens=None)
    cut = tokenize_with_ends(smollm2, "😀😀 ab", add_special_tokens=True, max_tokens=2)
    assert cut.truncated and not full.truncated
    assert cut.ids.tolist() == full.ids[:2].tolist()
    # Cut inside the first emoji: both pieces still end where the emoji ends.
    assert cut.ends.tolist() == [1, 1]
    assert not tokenize_with_ends(smollm2, "ab", add_special_tokens=True, max_tokens=2).truncated
    with pytest.raises(ValueError, match="max_tokens"):
        tokenize_with_ends(smollm2, "ab", add_special_tokens=True, max_tokens=0)


def test_empty_text(demo_tokenizers):
    assert (
        tokenize_with_ends(demo_tokenizers[SMOLLM2], "", add_special_tokens=True, max_tokens=None).ids.size
        == 0
    )
    gemma = tokenize_with_ends(demo_tokenizers[GEMMA], "", add_special_tokens=True, max_tokens=None)
    assert gemma.ids.tolist() == [2] and gemma.ends.tolist() == [0]


def test_fingerprint_is_deterministic_distinct_and_sensitive(demo_tokenizers):
    fingerprints = {name: tokenizer_fingerprint(demo_tokenizers[name]) for name in ALL}
    assert len(set(fingerprints.values())) == 3
    assert all(len(f) == 64 for f in fingerprints.values())
    again = load_tokenizer(demo_tokenizers.path(SMOLLM2))
    assert tokenizer_fingerprint(again) == fingerprints[SMOLLM2]
    changed = copy.deepcopy(again)
    changed.add_tokens(["polyfuse-new-token"])
    assert tokenizer_fingerprint(changed) != fingerprints[SMOLLM2]
