"""The unit of work of stage one: one corpus shard × one teacher → one teacher shard.

    read the corpus shard → tokenise each text (offsets, truncation at max_tokens) →
    score length-sorted groups of samples with the backend → per-sample scores →
    encode + write the shard atomically → write its entry file

The shard carries σ (log P(next token starts a word), ``data_schemas/teacher_shard.py``) exactly
when the backend returns it (transformers and fake, opened with the tokenizer's space mask).

It takes flat arguments and never looks at ranks or manifests: ``pipeline/extraction.py`` decides
which units run where and publishes the manifest. Its output depends only on its inputs (the
grouping of samples is a function of the shard), so a rerun after a crash rewrites the same bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_schemas.atomic import remove_stale_tmp
from data_schemas.corpus_shard import CORPUS_SCHEMA
from data_schemas.manifest import ENTRY_SUFFIX, ShardEntry, write_entry
from data_schemas.parquet_io import read_shard
from data_schemas.teacher_shard import SAMPLED_LAYOUT, TeacherSample, empirical_logprobs, write_teacher_shard
from stages.extract.backends.base import TeacherBackend, TopkRows
from stages.extract.draws import count_draws
from stages.extract.scores import predicted_span_bytes, sample_scores
from stages.extract.settings import ExtractSettings
from stages.tokenization import TokenizedText, tokenize_many_with_ends

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardResult:
    entry: ShardEntry
    samples: int
    tokens: int
    truncated: int


def tokenize_shard(
    corpus_shard: Path, tokenizer: object, *, add_special_tokens: bool, max_tokens: int
) -> tuple[list[str], list[str], list[TokenizedText]]:
    """(sample_ids, texts, tokenisations) of a corpus shard as a teacher sees it."""
    table = read_shard(corpus_shard, CORPUS_SCHEMA, columns=["sample_id", "text"])
    sample_ids = table.column("sample_id").to_pylist()
    texts = table.column("text").to_pylist()
    tokenized = tokenize_many_with_ends(
        tokenizer, texts, add_special_tokens=add_special_tokens, max_tokens=max_tokens
    )
    return sample_ids, texts, tokenized


def sample_groups(lengths: list[int], group_tokens: int) -> list[list[int]]:
    """Sample indices, longest first, cut into consecutive groups of about ``group_tokens`` tokens."""
    groups: list[list[int]] = [[]]
    total = 0
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if groups[-1] and total + lengths[i] > group_tokens:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += lengths[i]
    return [g for g in groups if g]


def remove_stale_files(shard_path: Path) -> None:
    """Delete temporary files a killed writer of this shard left (shard or entry ``*.tmp``).

    Only this unit's own names, and only those whose writer is gone: another process may be
    writing this very shard (two runs over one cache) or another shard of the directory.
    """
    remove_stale_tmp(shard_path.parent, f"{shard_path.name}.*.tmp")


def check_finite(rows: TopkRows, *, teacher: str, sample_id: str, shard: Path) -> None:
    space_nan = rows.space_logprobs is not None and np.isnan(rows.space_logprobs).any()
    if space_nan or not (np.isfinite(rows.topk_logprobs).all() and np.isfinite(rows.target_logprobs).all()):
        raise ValueError(
            f"teacher {teacher} produced NaN/inf logprobs for sample {sample_id} of {shard}: nothing "
            "was written; check the model folder and try extract.dtype=float32"
        )


def extract_shard(
    corpus_shard: Path,
    out_path: Path,
    backend: TeacherBackend,
    tokenizer: object,
    *,
    teacher: str,
    top_k: int,
    max_tokens: int,
    add_special_tokens: bool,
    layout: str,
    draws: int = ExtractSettings.draws,
    on_samples: Callable[[int], None] | None = None,
) -> ShardResult:
    """Extract one teacher shard (see the module docstring); ``on_samples(n)`` after each group.

    ``layout`` ``sampled`` stores the ``draws`` tokens per row the backend drew (it must have been
    opened with the same ``draws``) instead of the top-k."""
    if (layout == SAMPLED_LAYOUT) != (draws > 0):
        raise ValueError(f"layout {layout!r} and draws={draws} disagree: the sampled layout needs draws > 0")
    remove_stale_files(out_path)
    sample_ids, texts, tokenized = tokenize_shard(
        corpus_shard, tokenizer, add_special_tokens=add_special_tokens, max_tokens=max_tokens
    )
    rows: list[TopkRows | None] = [None] * len(texts)
    for group in sample_groups([len(t.ids) for t in tokenized], backend.batch_tokens):
        for i, result in zip(group, backend.topk_logprobs([tokenized[i].ids for i in group]), strict=True):
            check_finite(result, teacher=teacher, sample_id=sample_ids[i], shard=corpus_shard)
            rows[i] = result
        if on_samples is not None:
            on_samples(len(group))
    samples = []
    for sample_id, text, tok, result in zip(sample_ids, texts, tokenized, rows, strict=True):
        assert result is not None and result.n_rows == max(len(tok.ids) - 1, 0)
        scores = sample_scores(result, predicted_span_bytes(text, tok.ends))
        support_ids, support_logprobs, draw_counts = result.topk_ids, result.topk_logprobs, None
        if layout == SAMPLED_LAYOUT:  # the drawn tokens replace the top-k (the scores keep it)
            assert result.drawn_ids is not None, "a sampled shard needs a backend opened with draws"
            support_ids, draw_counts = count_draws(result.drawn_ids)
            support_logprobs = empirical_logprobs(draw_counts)
        samples.append(
            TeacherSample(
                sample_id=sample_id,
                token_ids=tok.ids,
                token_ends=tok.ends,
                topk_ids=support_ids,
                topk_logprobs=support_logprobs,
                target_logprobs=result.target_logprobs,
                draw_counts=draw_counts,
                space_logprobs=result.space_logprobs,
                ce=scores.ce,
                bits_per_byte=scores.bits_per_byte,
                topk_mass=scores.topk_mass,
                entropy_topk=scores.entropy_topk,
                truncated=tok.truncated,
            )
        )
    width = draws if layout == SAMPLED_LAYOUT else top_k
    entry = write_teacher_shard(samples, out_path, layout=layout, top_k=width)
    write_entry(out_path.parent, entry)  # last: the shard counts as done only from here on
    logger.debug(
        "%s: %s written (%d tokens), entry %s%s", teacher, out_path, entry.tokens, entry.name, ENTRY_SUFFIX
    )
    return ShardResult(entry, len(samples), entry.tokens, sum(t.truncated for t in tokenized))
