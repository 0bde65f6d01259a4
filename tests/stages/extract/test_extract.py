"""The unit of work: one corpus shard × one backend → one teacher shard and its entry file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from data_schemas.corpus_shard import CORPUS_SCHEMA
from data_schemas.keys import sha256_file
from data_schemas.parquet_io import write_shard
from data_schemas.teacher_shard import (
    LOGPROB_STEP,
    SPACE_STEP,
    decode_table,
    has_space_logprobs,
    read_teacher_shard,
)
from stages.extract.backends.base import TopkRows
from stages.extract.backends.fake_backend import FakeBackend
from stages.extract.extract import extract_shard
from stages.tokenization import load_tokenizer
from tests.stages.extract.conftest import MAX_TOKENS, SMOLLM2_TOKENIZER, TOP_K


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(SMOLLM2_TOKENIZER)


@pytest.fixture
def corpus_shard(tmp_path: Path, sample_texts: list[str]) -> Path:
    rows = [
        {
            "sample_id": f"d:{i}:0",
            "domain": "d",
            "doc_id": str(i),
            "chunk_index": 0,
            "text": t,
            "split_word": False,
        }
        for i, t in enumerate(sample_texts)
    ]
    path = tmp_path / "corpus" / "train" / "shard-00000.parquet"
    path.parent.mkdir(parents=True)
    write_shard(pa.Table.from_pylist(rows, CORPUS_SCHEMA), path, CORPUS_SCHEMA)
    return path


def run(corpus_shard: Path, out: Path, backend, tokenizer, **kw):
    args = {
        "teacher": "t",
        "top_k": TOP_K,
        "max_tokens": MAX_TOKENS,
        "add_special_tokens": True,
        "layout": "quant",
    }
    return extract_shard(corpus_shard, out, backend, tokenizer, **(args | kw))


def test_shard_holds_the_backend_rows_in_corpus_order(
    tmp_path: Path, corpus_shard: Path, tokenizer, tokenized, space_mask
) -> None:
    backend = FakeBackend("t", top_k=TOP_K, vocab_size=len(tokenizer), space_mask=space_mask)
    seen = []
    out = tmp_path / "teacher" / "shard-00000.parquet"
    result = run(corpus_shard, out, backend, tokenizer, on_samples=seen.append)
    expected = backend.topk_logprobs([t.ids for t in tokenized])
    samples = decode_table(read_teacher_shard(out))
    assert [s.sample_id for s in samples] == [f"d:{i}:0" for i in range(len(tokenized))]
    for sample, tok, rows in zip(samples, tokenized, expected, strict=True):
        np.testing.assert_array_equal(sample.token_ids, tok.ids)
        np.testing.assert_array_equal(sample.token_ends, tok.ends)
        np.testing.assert_array_equal(sample.topk_ids, rows.topk_ids)
        assert np.abs(sample.topk_logprobs - rows.topk_logprobs).max(initial=0) <= LOGPROB_STEP / 2 + 1e-6
        assert np.abs(sample.target_logprobs - rows.target_logprobs).max(initial=0) <= LOGPROB_STEP / 2 + 1e-6
        assert np.abs(sample.space_logprobs - rows.space_logprobs).max(initial=0) <= SPACE_STEP / 2 + 1e-6
        assert sample.truncated == tok.truncated
    # The long sample is truncated and flagged, never dropped.
    assert samples[0].truncated and samples[0].n_tokens == MAX_TOKENS
    assert result.truncated == 1 and result.tokens == sum(len(t.ids) for t in tokenized)
    assert result.samples == len(tokenized) == sum(seen)
    entry = json.loads((out.parent / "shard-00000.parquet.entry.json").read_text())
    assert entry["sha256"] == sha256_file(out) and entry["rows"] == len(tokenized)


def test_nan_logprobs_are_refused_naming_teacher_and_sample(
    tmp_path: Path, corpus_shard: Path, tokenizer
) -> None:
    class NanBackend(FakeBackend):
        def topk_logprobs(self, token_ids):
            rows = super().topk_logprobs(token_ids)
            bad = rows[0]  # the longest sample of the group
            lps = bad.topk_logprobs.copy()
            lps[3, 0] = np.nan
            return [TopkRows(bad.topk_ids, lps, bad.target_logprobs), *rows[1:]]

    out = tmp_path / "teacher" / "shard-00000.parquet"
    with pytest.raises(ValueError, match=r"teacher t produced NaN/inf logprobs for sample d:\d:0"):
        run(corpus_shard, out, NanBackend("t", top_k=TOP_K, vocab_size=len(tokenizer)), tokenizer)
    assert not out.exists() and not list(out.parent.glob("*.entry.json"))


def test_stale_tmp_of_a_killed_writer_is_replaced(tmp_path: Path, corpus_shard: Path, tokenizer) -> None:
    out = tmp_path / "teacher" / "shard-00000.parquet"
    out.parent.mkdir()
    stale = out.with_name(out.name + ".12345.tmp")
    stale.write_bytes(b"half a parquet file")
    other = out.with_name("shard-00001.parquet.777.tmp")  # another unit's (maybe live) writer
    other.write_bytes(b"x")
    run(corpus_shard, out, FakeBackend("t", top_k=TOP_K, vocab_size=len(tokenizer)), tokenizer)
    assert not stale.exists() and other.exists()
    assert len(decode_table(read_teacher_shard(out))) == 5


def test_transformers_extraction_is_byte_deterministic(
    tmp_path: Path, corpus_shard: Path, tokenizer, transformers_backend
) -> None:
    first = run(corpus_shard, tmp_path / "a" / "shard-00000.parquet", transformers_backend, tokenizer)
    second = run(corpus_shard, tmp_path / "b" / "shard-00000.parquet", transformers_backend, tokenizer)
    assert first.entry.sha256 == second.entry.sha256
    assert has_space_logprobs(tmp_path / "a" / "shard-00000.parquet")


def test_a_backend_without_space_logprobs_writes_a_shard_without_them(
    tmp_path: Path, corpus_shard: Path, tokenizer
) -> None:
    """What the vLLM backend returns (no σ) gives a shard without the column, which decodes."""
    out = tmp_path / "teacher" / "shard-00000.parquet"
    run(corpus_shard, out, FakeBackend("t", top_k=TOP_K, vocab_size=len(tokenizer)), tokenizer)
    assert not has_space_logprobs(out)
    assert {s.space_logprobs is None for s in decode_table(read_teacher_shard(out))} == {True}
