"""Vocabulary maps between the demo tokenizers: exact entries, both modes, special tokens, cache."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

import stages.align.vocab_map as vocab_map_module
from stages.align.edit_distance import nearest_by_edit_distance
from stages.align.offsets import align_rows_by_offsets
from stages.align.token_text import byte_level_alphabet
from stages.align.vocab_map import (
    _map_special_tokens,
    build_vocab_map,
    edit_distance_candidates,
    load_or_build_vocab_map,
    vocab_map_dir,
)
from stages.tokenization import tokenize_with_ends, tokenizer_fingerprint
from tests.stages.conftest import GEMMA, QWEN, SMOLLM2


def mapped(tokenizers, vocab_map: np.ndarray, teacher_name: str, token: str) -> str | None:
    teacher_id = tokenizers[teacher_name].convert_tokens_to_ids(token)
    student_id = int(vocab_map[teacher_id])
    return None if student_id < 0 else tokenizers[SMOLLM2].convert_ids_to_tokens(student_id)


def test_byte_level_alphabet_is_gpt2s():
    alphabet = byte_level_alphabet()
    assert len(alphabet) == 256 and sorted(alphabet.values()) == list(range(256))
    assert alphabet["Ġ"] == 0x20 and alphabet["Ċ"] == 0x0A and alphabet["ĉ"] == 0x09 and alphabet["A"] == 0x41


def test_token_tables_resolve_markers(demo_tokenizers, demo_token_tables):
    smollm2, gemma = demo_token_tables[SMOLLM2], demo_token_tables[GEMMA]
    assert (smollm2.scheme, gemma.scheme) == ("byte_level", "sentencepiece")
    token_id = demo_tokenizers[SMOLLM2].convert_tokens_to_ids
    assert smollm2.pieces[token_id("ĊĊĠĠĠ")] == b"\n\n   " and smollm2.pieces[token_id("ð")] == b"\xf0"
    gemma_id = demo_tokenizers[GEMMA].convert_tokens_to_ids
    assert gemma.pieces[gemma_id("▁▁▁▁")] == b"    " and gemma.pieces[gemma_id("<0xF0>")] == b"\xf0"
    assert gemma.pieces[gemma_id("\n\n")] == b"\n\n"  # an added, non-special token
    assert gemma.pieces[gemma_id("<bos>")] is None and gemma.special[gemma_id("<bos>")]
    # A byte-fallback byte and a byte-level byte give the same (surrogate-escaped) text.
    assert gemma.texts[gemma_id("<0xF0>")] == smollm2.texts[token_id("ð")]


@pytest.mark.parametrize("mode", ["prefix", "edit_distance"])
def test_same_tokenizer_gives_the_identity_map(demo_tokenizers, mode):
    smollm2 = demo_tokenizers[SMOLLM2]
    assert build_vocab_map(smollm2, smollm2, mode=mode).tolist() == list(range(49152))
    # Also without the fingerprint shortcut: a copy with one more token maps the rest to itself.
    teacher = copy.deepcopy(smollm2)
    teacher.add_tokens(["polyfuse-extra"])
    result = build_vocab_map(teacher, smollm2, mode=mode)
    assert result[:49152].tolist() == list(range(49152))


def test_newlines_indentation_digits_gemma_to_smollm2(demo_tokenizers, demo_token_tables, demo_vocab_maps):
    prefix = demo_vocab_maps[GEMMA, "prefix"]
    # prefix: the token SmolLM2 emits first when the text goes on ("\n\n" + "Next" is `Ċ` `Ċ`
    # `Next` for SmolLM2; four spaces before a word are `ĠĠĠ` + `Ġword`).
    expected = {
        "\n": "Ċ", "\n\n": "Ċ", "\n\n\n": "ĊĊ", "▁▁▁▁": "ĠĠĠ", "▁▁": "Ġ", "▁": "Ġ", "\t": "ĉ",
        "<0x0D>": "č", "▁the": "Ġthe", "▁café": "ĠcafÃ©", "return": "return",
        **{digit: digit for digit in "0123456789"},
    }  # fmt: skip
    assert {token: mapped(demo_tokenizers, prefix, GEMMA, token) for token in expected} == expected
    # edit_distance: the same text exactly, once the markers are resolved.
    exact = {
        "\n": "Ċ",
        "\n\n": "ĊĊ",
        "\n\n\n": "ĊĊĊ",
        "▁▁▁▁": "ĠĠĠĠ",
        "▁▁": "ĠĠ",
        "\t": "ĉ",
        "<0x0D>": "č",
        "7": "7",
    }
    gemma_ids = demo_tokenizers[GEMMA].convert_tokens_to_ids(list(exact))
    texts = [demo_token_tables[GEMMA].texts[i] for i in gemma_ids]
    student_ids = nearest_by_edit_distance(texts, edit_distance_candidates(demo_token_tables[SMOLLM2]))
    assert demo_tokenizers[SMOLLM2].convert_ids_to_tokens(student_ids.tolist()) == list(exact.values())


def test_prefix_map_predicts_the_student_token_in_context(demo_tokenizers, demo_vocab_maps):
    """At every aligned row of these texts the mapped teacher next token is the student's."""
    texts = [
        "Para one.\n\nPara two.\nLine three\n\n\nEnd: 2024, 12345 and 1000000.",
        "a = 1;    b = 22\nc = 333  # two spaces\n\tindented with a tab\r\nwindows line",
    ]
    student = demo_tokenizers[SMOLLM2]
    for name in (GEMMA, QWEN):
        vocab_map = demo_vocab_maps[name, "prefix"]
        for text in texts:
            s = tokenize_with_ends(student, text, add_special_tokens=True, max_tokens=None)
            t = tokenize_with_ends(demo_tokenizers[name], text, add_special_tokens=True, max_tokens=None)
            rows = align_rows_by_offsets(t.ends, s.ends)
            assert len(rows.student_rows) >= 0.8 * rows.n_student_rows
            got = vocab_map[t.ids[rows.teacher_rows + 1]]
            assert student.convert_ids_to_tokens(got.tolist()) == student.convert_ids_to_tokens(
                s.ids[rows.student_rows + 1].tolist()
            ), (name, text)


def test_prefix_takes_the_first_student_token(demo_tokenizers, demo_vocab_maps):
    gemma = demo_vocab_maps[GEMMA, "prefix"]
    # " 😀" is "ĠðŁĺ" + "Ģ" for SmolLM2; half a character (byte fallback) takes the longest
    # student byte string that starts it.
    assert mapped(demo_tokenizers, gemma, GEMMA, "▁😀") == "ĠðŁĺ"
    assert mapped(demo_tokenizers, gemma, GEMMA, "<0xF0>") == "ð"
    qwen = demo_vocab_maps[QWEN, "prefix"]
    assert mapped(demo_tokenizers, qwen, QWEN, "ĊĊ") == "Ċ"  # SmolLM2: "\n\nword" = `Ċ` `Ċ` `word`
    assert mapped(demo_tokenizers, qwen, QWEN, "ĠĠĠ") == "ĠĠĠ"
    assert mapped(demo_tokenizers, qwen, QWEN, "ĠðŁĺĢ") == "ĠðŁĺ"


def test_special_tokens_map_by_role_or_identical_string(demo_tokenizers, demo_token_tables, demo_vocab_maps):
    gemma, qwen = demo_vocab_maps[GEMMA, "prefix"], demo_vocab_maps[QWEN, "prefix"]
    assert mapped(demo_tokenizers, gemma, GEMMA, "<eos>") == "<|im_end|>"  # EOS ↔ EOS
    assert mapped(demo_tokenizers, gemma, GEMMA, "<bos>") == demo_tokenizers[SMOLLM2].bos_token
    assert mapped(demo_tokenizers, gemma, GEMMA, "<start_of_turn>") is None
    assert mapped(demo_tokenizers, gemma, GEMMA, "<unused0>") is None
    assert mapped(demo_tokenizers, qwen, QWEN, "<|im_end|>") == "<|im_end|>"
    assert mapped(demo_tokenizers, qwen, QWEN, "<|endoftext|>") == "<|endoftext|>"
    assert mapped(demo_tokenizers, qwen, QWEN, "<|im_start|>") == "<|im_start|>"
    # Nothing else lands on a student special token, in either mode.
    student_specials = [i for i, t in demo_tokenizers[SMOLLM2].added_tokens_decoder.items() if t.special]
    teacher_table = demo_token_tables[GEMMA]
    specials = _map_special_tokens(demo_tokenizers[GEMMA], demo_tokenizers[SMOLLM2], teacher_table)
    assert set(specials) == set(np.flatnonzero(teacher_table.special).tolist())
    ordinary = ~teacher_table.special
    assert not np.isin(gemma[ordinary], student_specials).any()


def test_every_ordinary_token_is_mapped_in_prefix_mode(demo_tokenizers, demo_token_tables, demo_vocab_maps):
    student_bytes = {p for p in demo_token_tables[SMOLLM2].pieces if p}
    for name in (GEMMA, QWEN):
        table = demo_token_tables[name]
        vocab_map = demo_vocab_maps[name, "prefix"]
        assert vocab_map.dtype == np.int32 and len(vocab_map) == len(table.texts)
        assert (vocab_map < len(demo_tokenizers[SMOLLM2])).all()
        unmapped = [table.pieces[i] for i in np.flatnonzero(vocab_map < 0) if table.pieces[i]]
        # Only bytes SmolLM2 cannot emit at all (its vocabulary lacks e.g. 0x04, 0xC0, 0xF5-0xFF).
        assert all(len(piece) == 1 and piece not in student_bytes for piece in unmapped)
        assert len(unmapped) <= 32


def test_edit_distance_is_the_exact_minimum_with_deterministic_ties(demo_token_tables):
    candidates = edit_distance_candidates(demo_token_tables[SMOLLM2])
    rng = random.Random(0)
    queries = rng.sample([t for t in demo_token_tables[GEMMA].texts if t], 400)
    got = nearest_by_edit_distance(queries, candidates)
    by_id = sorted(candidates.items(), key=lambda item: item[1])
    texts, ids = [t for t, _ in by_id], np.array([i for _, i in by_id])
    lengths = np.array([len(t) for t in texts])
    distances = cdist(queries, texts, scorer=Levenshtein.distance, workers=-1)
    for q, query in enumerate(queries):
        best = np.flatnonzero(distances[q] == distances[q].min())
        gaps = np.abs(lengths[best] - len(query))
        assert got[q] == ids[best[gaps == gaps.min()]].min(), query
    shuffled = list(candidates.items())
    rng.shuffle(shuffled)
    assert nearest_by_edit_distance(queries, dict(shuffled)).tolist() == got.tolist()


def test_cache_is_reused_invalidated_and_byte_identical(demo_tokenizers, tmp_path, monkeypatch):
    # SmolLM2 → Qwen: a real two-tokenizer map that builds in seconds (49k teacher tokens).
    teacher, student = demo_tokenizers[SMOLLM2], demo_tokenizers[QWEN]
    first = load_or_build_vocab_map(teacher, student, cache_dir=tmp_path / "a", mode="prefix")
    folder = vocab_map_dir(
        tmp_path / "a", tokenizer_fingerprint(teacher), tokenizer_fingerprint(student), "prefix"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "vocab_map.npy"]
    # A second build, elsewhere, writes the same bytes.
    again = load_or_build_vocab_map(teacher, student, cache_dir=tmp_path / "b", mode="prefix")
    other = next((tmp_path / "b").iterdir())
    assert (other / "vocab_map.npy").read_bytes() == (folder / "vocab_map.npy").read_bytes()
    assert np.array_equal(again, first) and (first >= 0).mean() > 0.99
    # Reuse: the cached map is read back, nothing is built (the time it saves is bench/align_bench's).
    builds = []
    monkeypatch.setattr(vocab_map_module, "_build_vocab_map", lambda *a, **k: builds.append(a) or first)
    loaded = load_or_build_vocab_map(teacher, student, cache_dir=tmp_path / "a", mode="prefix")
    assert builds == [] and np.array_equal(loaded, first)
    # A changed tokenizer has another fingerprint, so another folder and a fresh build.
    changed = copy.deepcopy(teacher)
    changed.add_tokens(["polyfuse-extra"])
    load_or_build_vocab_map(changed, student, cache_dir=tmp_path / "a", mode="prefix")
    assert len(builds) == 1 and len(list((tmp_path / "a").iterdir())) == 2
    # Another mode is another map.
    load_or_build_vocab_map(teacher, student, cache_dir=tmp_path / "a", mode="edit_distance")
    assert len(builds) == 2
    # A damaged map is rebuilt, never trusted.
    damaged = other / "vocab_map.npy"
    damaged.write_bytes(damaged.read_bytes()[:-4] + b"\xff\xff\xff\x7f")
    load_or_build_vocab_map(teacher, student, cache_dir=tmp_path / "b", mode="prefix")
    assert len(builds) == 3


def test_exact_map_takes_only_the_same_string(demo_tokenizers, demo_token_tables):
    qwen, smol = demo_token_tables[QWEN], demo_token_tables[SMOLLM2]
    exact = build_vocab_map(demo_tokenizers[QWEN], demo_tokenizers[SMOLLM2], mode="exact")
    mapped = exact >= 0
    ordinary = ~qwen.special[: len(exact)]
    for teacher_id in np.flatnonzero(mapped & ordinary)[:2000]:
        assert smol.pieces[exact[teacher_id]] == qwen.pieces[teacher_id]
    # `:\n` is one Qwen token and none of SmolLM2's: unmapped, its mass goes to the rest bucket.
    colon_newline = qwen.texts.index(":\n")
    assert exact[colon_newline] == -1 and ":\n" not in smol.texts
    assert smol.texts[exact[qwen.texts.index(" def")]] == " def"
