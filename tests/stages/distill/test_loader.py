"""The streaming loader on real fake-backend caches: order, rank split, resume state, the tensors
it hands the losses and teacher absence (the cache checks before it: tests/pipeline/test_cache_check.py)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from data_schemas.teacher_shard import decode_table, read_teacher_shard
from pipeline.distillation import StreamInputs, build_stream
from stages.align.spans import common_boundaries
from stages.distill.batch import FusionBatch
from stages.distill.loader import FusionStream, present_span_logliks, teacher_features


def stream_of(world, inputs: StreamInputs, **kwargs) -> FusionStream:
    rank, world_size = kwargs.pop("rank", 0), kwargs.pop("world_size", 1)
    config = world.config_for(Path("unused"), **kwargs)
    return build_stream(config, inputs, rank=rank, world_size=world_size)


def take(stream: FusionStream, n: int, workers: int = 0) -> list[FusionBatch]:
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == n:
            return batches
    raise AssertionError("the stream ended")


def all_train_ids(inputs: StreamInputs) -> list[str]:
    return [
        sid
        for s in inputs.corpus_shards
        for sid in pq.read_table(s.path, columns=["sample_id"])["sample_id"].to_pylist()
    ]


def test_order_does_not_depend_on_workers_and_resumes_from_one_integer(world, stream_inputs) -> None:
    stream = stream_of(world, stream_inputs)
    serial = [b.sample_ids for b in take(stream, 7)]
    assert [b.sample_ids for b in take(stream, 7, workers=2)] == serial
    state = stream.state_dict(batches_consumed=3)
    assert state["batches"] == 3 and set(state) == {
        "batches",
        "micro_batch_size",
        "rank",
        "world_size",
        "samples_per_epoch",
    }
    resumed = stream_of(world, stream_inputs)
    resumed.load_state_dict(state)
    assert [b.sample_ids for b in take(resumed, 4, workers=2)] == serial[3:]


def test_resume_state_from_another_setup_is_refused(world, stream_inputs) -> None:
    state = stream_of(world, stream_inputs).state_dict(5)
    other = stream_of(world, stream_inputs, micro_batch_size=3)
    with pytest.raises(ValueError, match="micro_batch_size=2.*same corpus, batch size"):
        other.load_state_dict(state)


def test_ranks_split_the_epoch_with_no_sample_twice_and_none_lost(world, stream_inputs) -> None:
    ids = all_train_ids(stream_inputs)
    seen = []
    for rank in (0, 1):
        stream = stream_of(world, stream_inputs, rank=rank, world_size=2, micro_batch_size=1)
        seen.extend(batch.sample_ids[0] for batch in take(stream, stream.samples_per_epoch))
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))


def test_later_epochs_permute_shards_and_still_cover_every_sample(world, stream_inputs) -> None:
    stream = stream_of(world, stream_inputs, micro_batch_size=1)
    n = stream.samples_per_epoch
    ids = [b.sample_ids[0] for b in take(stream, 2 * n)]
    assert sorted(ids[:n]) == sorted(ids[n:]) and ids[:n] != ids[n:]


def test_batch_holds_exactly_the_tensors_the_losses_take(world, stream_inputs) -> None:
    batch = take(stream_of(world, stream_inputs), 1)[0]
    b, t = batch.input_ids.shape
    k_teachers, top_k = len(stream_inputs.teachers), world.config.extract.top_k
    assert batch.support_ids.shape == (b, k_teachers, t, top_k) and batch.support_ids.dtype == torch.int64
    assert (
        batch.support_probs.shape == (b, k_teachers, t, top_k) and batch.support_probs.dtype == torch.float32
    )
    assert batch.available.shape == (b, k_teachers, t) and batch.available.dtype == torch.bool
    assert batch.scores.shape == batch.present.shape == (b, k_teachers)
    assert batch.features.shape == (b, k_teachers, 1) and torch.equal(batch.features[..., 0], batch.scores)
    lengths = batch.attention_mask.sum(1)
    for row, n in enumerate(lengths.tolist()):
        # Row j predicts token j+1: the last real token and the padding have no target.
        assert batch.loss_mask[row].tolist() == [True] * (n - 1) + [False] * (t - n + 1)
        assert not batch.available[row, :, n - 1 :].any()
    probs = batch.support_probs.sum(-1)
    torch.testing.assert_close(probs[batch.available], torch.ones_like(probs[batch.available]))
    assert (probs[~batch.available] == 0).all()
    assert batch.support_ids.max() < 49152  # student vocabulary


def test_same_tokenizer_teacher_aligns_everywhere_with_its_own_ids(world, stream_inputs) -> None:
    """smol shares the student's tokenizer: every row aligned, ids mapped to themselves."""
    stream = stream_of(world, stream_inputs, micro_batch_size=1)
    batch = take(stream, 1)[0]
    sample_id = batch.sample_ids[0]
    shard = stream_inputs.teachers[0].shards[stream.shards[0].name]
    row = next(r for r in decode_table(read_teacher_shard(shard)) if r.sample_id == sample_id)
    n = int(batch.attention_mask.sum())
    assert int(batch.aligned_rows[0]) == n - 1 == int(batch.student_rows)
    # The student stops at max_seq_tokens, the teacher at extract.max_tokens: a common prefix.
    assert batch.input_ids[0, :n].tolist() == row.token_ids[:n].tolist()
    # The top-1 of the teacher row is the top-1 of the aligned target (duplicates merged only).
    assert batch.support_ids[0, 0, : n - 1, 0].tolist() == row.topk_ids[: n - 1, 0].tolist()
    assert batch.scores[0, 0].item() == pytest.approx(math.exp(-row.ce), rel=1e-6)


def test_teacher_beyond_its_max_shards_is_absent_and_gemma_aligns_partly(world, stream_inputs) -> None:
    stream = stream_of(world, stream_inputs, micro_batch_size=6)
    batches = take(stream, 3)  # shards 0, 1, 2 (6 samples each)
    assert batches[0].present[:, 1].all() and batches[1].present[:, 1].all()
    assert not batches[2].present[:, 1].any() and not batches[2].available[:, 1].any()
    assert batches[2].scores[:, 1].eq(0).all() and batches[2].present[:, 0].all()
    rate = batches[0].aligned_rows[1].item() / batches[0].student_rows.item()
    assert 0.3 < rate < 1.0  # different tokenizer: aligned where both cut at the same character


def test_dtw_aligner_streams_the_offsets_targets_where_it_takes_the_same_rows(world, stream_inputs) -> None:
    """`distill.aligner=dtw` end to end: the pipeline gives each teacher its token texts, the loader
    aligns by DTW, and the batches keep the targets contract. smol (the student's tokenizer) gets
    every row offsets give it, with the same targets; gemma gets fewer (hard pairs only)."""
    from pipeline.distillation import resolve_stream_inputs

    dtw_inputs = resolve_stream_inputs(world.config_for(Path("unused"), aligner="dtw"), checksums=False)
    assert all(t.token_texts is not None for t in dtw_inputs.teachers)
    assert all(t.token_texts is None for t in stream_inputs.teachers)
    offsets = take(stream_of(world, stream_inputs, micro_batch_size=6), 1)[0]
    dtw = take(stream_of(world, dtw_inputs, micro_batch_size=6, aligner="dtw"), 1)[0]
    assert dtw.sample_ids == offsets.sample_ids and torch.equal(dtw.input_ids, offsets.input_ids)
    sums = dtw.support_probs.sum(-1) + dtw.rest_mass
    torch.testing.assert_close(sums[dtw.available], torch.ones_like(sums[dtw.available]))
    assert (sums[~dtw.available] == 0).all()
    smol = offsets.available[:, 0]
    assert dtw.available[:, 0][smol].all()
    assert torch.equal(dtw.support_ids[:, 0][smol], offsets.support_ids[:, 0][smol])
    assert torch.equal(dtw.support_probs[:, 0][smol], offsets.support_probs[:, 0][smol])
    assert 0 < dtw.aligned_rows[1] < offsets.aligned_rows[1]


def test_all_features_are_the_shards_four_scores_mapped_into_0_1(world, stream_inputs) -> None:
    stream = stream_of(world, stream_inputs, micro_batch_size=6, gate_features="all")
    batch = take(stream, 1)[0]  # corpus shard 0, which both teachers cover
    assert batch.features.shape == (6, 2, 4) and batch.features.dtype == torch.float32
    assert torch.equal(batch.scores, batch.features[..., 0])  # min_ce / avg_ce still rank by exp(−ce)
    assert batch.present.all()
    columns = ["sample_id", "ce", "bits_per_byte", "topk_mass", "entropy_topk"]
    for k, teacher in enumerate(stream_inputs.teachers):
        shard = teacher.shards[stream.shards[0].name]
        stored = {r["sample_id"]: r for r in pq.read_table(shard, columns=columns).to_pylist()}
        for b, sample_id in enumerate(batch.sample_ids):
            r = stored[sample_id]
            by_hand = [
                math.exp(-r["ce"]),
                2 ** -r["bits_per_byte"],
                r["topk_mass"],
                math.exp(-r["entropy_topk"]),
            ]
            assert batch.features[b, k].tolist() == pytest.approx(by_hand, rel=1e-6)
    assert ((batch.features > 0) & (batch.features <= 1)).all()


def test_spans_come_with_two_teachers_under_either_objective(world, stream_inputs) -> None:
    fusion = take(stream_of(world, stream_inputs, micro_batch_size=6), 3)
    likelihood_stream = stream_of(world, stream_inputs, micro_batch_size=6, gate_objective="likelihood")
    likelihood = take(likelihood_stream, 3)
    # Two teachers: the spans feed the gate diagnostics under `fusion` too; the batches are equal.
    assert fusion[0].span_loglik.shape[:2] == (6, 2) and fusion[0].span_loglik.shape[2] > 0
    for a, b in zip(fusion, likelihood, strict=True):
        assert a.sample_ids == b.sample_ids and torch.equal(a.features, b.features)
        assert torch.equal(a.bits_per_byte, b.bits_per_byte)
        assert torch.equal(a.span_loglik, b.span_loglik) and torch.equal(a.span_bytes, b.span_bytes)
    assert (fusion[0].span_bytes > 0).all()
    for index, batch in ((0, likelihood[0]), (2, likelihood[2])):  # both teachers; gemma absent
        shard_name = likelihood_stream.shards[index].name
        rows = []
        for teacher in stream_inputs.teachers:
            path = teacher.shards.get(shard_name)
            rows.append({r.sample_id: r for r in decode_table(read_teacher_shard(path))} if path else {})
        assert batch.span_loglik.dtype == torch.float32 and batch.span_mask.dtype == torch.bool
        for b, sample_id in enumerate(batch.sample_ids):
            present = [rows[k].get(sample_id) if batch.present[b, k] else None for k in range(2)]
            used = [r for r in present if r is not None]
            boundaries = common_boundaries([r.token_ends for r in used], [r.truncated for r in used])
            spans = int(batch.span_mask[b].sum())
            assert spans == len(boundaries) - 1 > 0 and batch.span_mask[b, :spans].all()
            for k, row in enumerate(present):
                if row is None:
                    assert (batch.span_loglik[b, k] == 0).all() and batch.bits_per_byte[b, k] == math.inf
                    continue
                assert batch.bits_per_byte[b, k].item() == pytest.approx(row.bits_per_byte, rel=1e-6)
                # Σ over spans = the teacher's target logprobs over the tokens the spans cover.
                ends = row.token_ends[1:]
                covered = (ends > boundaries[0]) & (ends <= boundaries[-1])
                assert batch.span_loglik[b, k, :spans].double().sum().item() == pytest.approx(
                    float(row.target_logprobs[covered].astype(np.float64).sum()), rel=1e-5, abs=1e-3
                )
    assert likelihood[0].present.all() and not likelihood[2].present[:, 1].any()


def test_present_span_logliks_ignore_absent_teachers(world) -> None:
    row = _any_teacher_row(world)
    # A two-byte character at every offset: the spans' bytes are twice the characters they cover.
    text = "é" * int(row.token_ends.max())
    alone, covered = present_span_logliks([row, None], text)
    assert alone.shape[0] == 2 and (alone[1] == 0).all()
    # One teacher: its own token ends are the boundaries; the spans add up to its tokens after the
    # first boundary (a cut tokenisation drops its last end).
    boundaries = common_boundaries([row.token_ends], [row.truncated])
    assert alone.shape[1] == len(boundaries) - 1
    assert covered == 2 * int(boundaries[-1] - boundaries[0])
    nothing, no_bytes = present_span_logliks([None, None], text)
    assert nothing.shape == (2, 0) and no_bytes == 0


def test_non_finite_score_makes_the_teacher_absent(world) -> None:
    row = dataclasses.replace(_any_teacher_row(world), ce=float("nan"))
    assert np.isnan(teacher_features(row, "exp_neg_ce")).all()
    assert teacher_features(dataclasses.replace(row, ce=0.0), "exp_neg_ce").tolist() == [1.0]
    assert teacher_features(dataclasses.replace(row, bits_per_byte=1.0), "bits_per_byte").tolist() == [0.5]
    # One non-finite stored score makes the whole teacher absent under `all`, not one feature.
    assert np.isnan(teacher_features(dataclasses.replace(row, ce=1.0, topk_mass=float("nan")), "all")).all()


def _any_teacher_row(world):
    from pipeline.distillation import resolve_stream_inputs  # noqa: F401  (world built)

    shard = next((world.root / "cache" / "teachers").rglob("shard-00000.parquet"))
    return decode_table(read_teacher_shard(shard))[0]


def test_too_few_shards_for_the_ranks_is_refused(world, stream_inputs) -> None:
    with pytest.raises(ValueError, match="fewer than the 8 ranks"):
        stream_of(world, stream_inputs, rank=7, world_size=8)


def test_vocab_map_of_same_tokenizer_is_identity(stream_inputs) -> None:
    smol = stream_inputs.teachers[0].vocab_map
    assert (smol == np.arange(len(smol))).mean() > 0.99


def test_manifest_header_records_the_corpus(stream_inputs) -> None:
    cache = stream_inputs.teachers[0].shards[stream_inputs.corpus_shards[0].name].parent
    header = json.loads((cache / "manifest.json").read_text())["header"]
    assert header["corpus_key"] == stream_inputs.corpus_key
