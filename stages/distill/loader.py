"""The streaming loader of distill: corpus train shards joined by `sample_id` with every teacher's
shards, tokenised by the student and aligned to it, in padded micro-batches.

**Order.** A rank owns the corpus shards `[rank::world_size]` and reads their samples as one
endless stream: epoch 0 in shard order, later epochs with the shard order permuted (seeded by
seed, epoch and rank). Micro-batch n is stream positions [n·B, (n+1)·B). Of the W DataLoader
workers, worker w builds batches start + w, start + w + W, … and PyTorch takes one batch from each
worker in turn, so the trainer receives batches 0, 1, 2, … whatever the number of workers. The loader's whole state is therefore one
integer, the batches the trainer consumed (`state_dict`), with the settings that fix the order
beside it for a check on resume.

**Teachers.** A teacher's cache is checked before anything else (pipeline/cache_check.py); a
teacher extracted over only the first shards, or with a NaN score for a sample, is absent for
those samples, never replaced by a made-up target.

**Gate objective.** Each sample carries every present teacher's bits per byte (what min_bpb /
avg_bpb rank by, whatever the gate features) and, with two or more teachers or under
`gate_objective: likelihood`, each present teacher's log-likelihood of the spans between the
offsets where all present teachers have a token boundary (stages/align/spans.py): what the
likelihood objective trains the gate on and what the gate diagnostics (gate_diagnostics.py) of
every run's log measure it by. With one teacher and the fusion objective the span tensors have
S = 0.

Workers build batches in numpy (alignment is vectorised, stages/align); the trainer never waits
on them in practice (bench/distill_bench.py measures the margin).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from torch.utils.data import IterableDataset, get_worker_info

from data_schemas.corpus_shard import CORPUS_SCHEMA
from data_schemas.parquet_io import check_schema
from data_schemas.teacher_shard import TeacherSample, decode_table, read_teacher_shard
from stages.align.chunks import ChunkTeacher, chunk_sample
from stages.align.dtw import align_rows_by_dtw
from stages.align.offsets import RowAlignment, align_rows_by_offsets, same_next_token
from stages.align.sample import AlignedTargets, align_sample, no_targets
from stages.align.spans import common_boundaries, span_logliks
from stages.align.token_text import build_token_table
from stages.distill.batch import AlignedSample, FusionBatch, collate_samples
from stages.distill.settings import Aligner, GateFeatures, GateObjective, Objective, Target
from stages.tokenization import load_tokenizer, tokenize_many_with_ends

logger = logging.getLogger(__name__)

GATE_FEATURES: dict[GateFeatures, tuple[str, ...]] = {
    "exp_neg_ce": ("exp_neg_ce",),
    "bits_per_byte": ("bits_per_byte",),
    "all": ("exp_neg_ce", "bits_per_byte", "topk_mass", "exp_neg_entropy_topk"),
}
"""`distill.gate_features` → the features the gate reads per teacher, in order. The first is the
teacher's score for the sample, the one the fixed rules (min_ce, avg_ce) rank by."""

# Each maps one stored per-sample score (stages/extract/scores.py) into [0, 1], higher is better,
# so that an absent teacher's 0 input is the worst value of every feature.
_FEATURE_VALUES = {
    # the mean per-token probability (FuseLLM's score, docs/design.md §6)
    "exp_neg_ce": lambda s: math.exp(-s.ce),
    # the mean per-byte probability: tokenizer-neutral
    "bits_per_byte": lambda s: 2.0 ** (-s.bits_per_byte),
    # the share of the next-token mass the stored top-k hold: how much of the target is kept
    "topk_mass": lambda s: s.topk_mass,
    # the teacher's confidence: 1 for a one-hot top-k, 1/k for a flat one
    "exp_neg_entropy_topk": lambda s: math.exp(-s.entropy_topk),
}


@dataclass(frozen=True)
class CorpusShard:
    """One corpus train shard: its file, its name in the corpus manifest, its sample count."""

    name: str
    path: Path
    rows: int


@dataclass(frozen=True)
class TeacherSource:
    """A checked teacher cache, ready for the workers (pipeline/distillation.py builds it)."""

    name: str
    shards: dict[str, Path]
    """Corpus shard name → teacher shard file; corpus shards the teacher does not cover are absent."""
    vocab_map: np.ndarray
    """[V_teacher] int32 teacher id → student id, −1 unmapped (stages/align/vocab_map.py)."""
    token_texts: tuple[str, ...] | None = None
    """[V_teacher] the text each teacher id emits (`token_text.TokenTable.texts`), which the DTW
    aligner compares; None under `distill.aligner=offsets`, which needs only the shards' ends."""


def feature_count(features: GateFeatures) -> int:
    """F, the gate's features per teacher under `distill.gate_features` = `features`."""
    return len(GATE_FEATURES[features])


def teacher_features(sample: TeacherSample, features: GateFeatures) -> np.ndarray:
    """The `[F]` float32 gate features of one teacher on one sample (`GATE_FEATURES[features]`),
    each in [0, 1], higher is better; all NaN if any is not finite (the teacher is then absent).

    `exp_neg_ce`: exp(−ce). `bits_per_byte`: 2^(−bits per byte). `all`: those two, topk_mass
    and exp(−entropy_topk). Element 0 is the teacher's score for the sample.
    """
    names = GATE_FEATURES[features]
    values = np.array([_FEATURE_VALUES[name](sample) for name in names], dtype=np.float32)
    return values if np.isfinite(values).all() else np.full(len(names), np.nan, np.float32)


class FusionStream(IterableDataset):
    """Endless stream of `FusionBatch`es for one rank (see the module docstring for the order).

    Args:
        corpus_shards: every corpus train shard, in corpus order (the rank picks its own).
        teachers: checked teacher caches, in the order of the `[B, K]` columns.
        student_tokenizer: folder of the student's (fast) tokenizer.
        add_special_tokens: whether the student's tokenisation adds BOS/EOS as in training.
        max_seq_tokens: longest student sequence (longer texts are truncated).
        micro_batch_size: samples per yielded batch.
        features: `distill.gate_features` (`GATE_FEATURES` lists what each holds).
        target: `distill.target`, the sparse target kind (stages/align/sample.py): `sampled`
            reads caches of drawn tokens, the others top-k caches.
        gate_objective: `distill.gate_objective`; `likelihood` adds the span log-likelihoods.
        objective: `distill.objective`; `chunk` builds chunks instead of token-level targets;
            `exact_token` keeps the targets of rows whose next token is the same string on both
            sides only (`offsets.same_next_token`; the vocabulary map must be `exact`).
        space_threshold: under `chunk`, merge chunks until every teacher's σ exceeds it and add
            log σ at their ends; None: plain chunks (stages/align/chunks.py).
        aligner: `offsets` (same-character rows) or `dtw` (FuseLLM's MinED DTW over the token
            texts, which needs every teacher's `token_texts`); `align_sample` either way.
        rank, world_size: this process's place in the job.
        seed: seeds the shard order of epochs ≥ 1.
    """

    def __init__(
        self,
        corpus_shards: Sequence[CorpusShard],
        teachers: Sequence[TeacherSource],
        *,
        student_tokenizer: str | Path,
        add_special_tokens: bool,
        max_seq_tokens: int,
        micro_batch_size: int,
        features: GateFeatures,
        target: Target,
        gate_objective: GateObjective,
        aligner: Aligner,
        objective: Objective,
        space_threshold: float | None,
        rank: int,
        world_size: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.num_features = feature_count(features)
        self.target = target
        self.gate_objective = gate_objective
        if (aligner == "dtw" or objective == "exact_token") and any(t.token_texts is None for t in teachers):
            raise ValueError(
                "distill.aligner=dtw and the exact_token objective need every teacher's token_texts "
                "(pipeline/distillation.py)"
            )
        self.aligner = aligner
        self.objective = objective
        self.space_threshold = space_threshold
        own = list(corpus_shards)[rank::world_size]
        if not own:
            raise ValueError(
                f"the corpus has {len(corpus_shards)} train shards, fewer than the {world_size} ranks: "
                "lower corpus.samples_per_shard or run fewer processes"
            )
        self.shards = own
        self.teachers = tuple(teachers)
        self.teacher_names = tuple(t.name for t in teachers)
        self.student_tokenizer = str(student_tokenizer)
        self.add_special_tokens = add_special_tokens
        self.max_seq_tokens = max_seq_tokens
        self.micro_batch_size = micro_batch_size
        self.features = features
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.samples_per_epoch = sum(s.rows for s in own)
        if self.samples_per_epoch == 0:
            raise ValueError(f"rank {rank}'s corpus shards hold no samples: check the corpus")
        self.start_batch = 0
        self._epoch_index: tuple[int, np.ndarray, np.ndarray] = (-1, np.zeros(0), np.zeros(0))

    # -- resumable state: a few integers -------------------------------------------------------
    def state_dict(self, batches_consumed: int) -> dict[str, int]:
        return {
            "batches": batches_consumed,
            "micro_batch_size": self.micro_batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
            "samples_per_epoch": self.samples_per_epoch,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("micro_batch_size", "world_size", "samples_per_epoch"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"--resume: the checkpoint's loader had {key}={state[key]}, this run has "
                    f"{getattr(self, key)}: resume with the same corpus, batch size and number of processes"
                )
        self.start_batch = state["batches"]

    # -- order -----------------------------------------------------------------------------------
    def shard_order(self, epoch: int) -> list[int]:
        """Indices into this rank's shards, in the order epoch `epoch` reads them."""
        if epoch == 0:
            return list(range(len(self.shards)))
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        return rng.permutation(len(self.shards)).tolist()

    def locate(self, position: int) -> tuple[int, int]:
        """(shard index, row) of a position of this rank's stream."""
        epoch, offset = divmod(position, self.samples_per_epoch)
        if self._epoch_index[0] != epoch:  # one epoch's layout at a time: positions come in order
            order = np.asarray(self.shard_order(epoch))
            starts = np.cumsum([0] + [self.shards[i].rows for i in order])
            self._epoch_index = (epoch, order, starts)
        _, order, starts = self._epoch_index
        slot = int(np.searchsorted(starts, offset, side="right")) - 1
        return int(order[slot]), int(offset - starts[slot])

    def batch_positions(self, batch_index: int) -> list[tuple[int, int]]:
        start = batch_index * self.micro_batch_size
        return [self.locate(p) for p in range(start, start + self.micro_batch_size)]

    # -- building batches --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[FusionBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = _ShardReader(self)
        # DataLoader asks worker 0 first, then 1, …: worker w builds start + w, start + w + W, …
        batch_index = self.start_batch + worker
        while True:
            yield self.build_batch(reader, batch_index)
            batch_index += workers

    def build_batch(self, reader: _ShardReader, batch_index: int) -> FusionBatch:
        positions = self.batch_positions(batch_index)
        rows = [reader.row(shard, row) for shard, row in positions]
        tokenized = tokenize_many_with_ends(
            reader.tokenizer,
            [text for _, text, _ in rows],
            add_special_tokens=self.add_special_tokens,
            max_tokens=self.max_seq_tokens,
        )
        samples = []
        for (sample_id, text, teacher_rows), student in zip(rows, tokenized, strict=True):
            targets: list[AlignedTargets | None] = []
            features = np.zeros((len(self.teachers), self.num_features), np.float32)
            for k, (source, teacher) in enumerate(zip(self.teachers, teacher_rows, strict=True)):
                values = teacher_features(teacher, self.features) if teacher is not None else None
                if values is None or not np.isfinite(values).all() or len(student.ids) < 2:
                    targets.append(None)
                    continue
                targets.append(self._targets(reader, source, teacher, student))
                features[k] = values
            # Teachers left out above (no data, non-finite features) are absent here too.
            used = [t if a is not None else None for t, a in zip(teacher_rows, targets, strict=True)]
            bits_per_byte = np.array([np.inf if t is None else t.bits_per_byte for t in used], np.float32)
            chunks, present_rows = None, ()
            if self.objective == "chunk":
                chunks, present_rows = self._chunks(text, student, used)
                span_loglik = np.zeros((len(self.teachers), chunks.count), np.float32)
                span_loglik[list(present_rows)] = chunks.teacher_loglik
                span_bytes = chunks.covered_bytes
            elif self.gate_objective == "likelihood" or len(self.teachers) >= 2:
                span_loglik, span_bytes = present_span_logliks(used, text)
            else:
                span_loglik, span_bytes = None, 0
            samples.append(
                AlignedSample(
                    sample_id,
                    student.ids,
                    tuple(targets),
                    features,
                    bits_per_byte,
                    span_loglik,
                    span_bytes,
                    chunks,
                    present_rows,
                )
            )
        return collate_samples(samples, len(self.teachers))

    def _targets(
        self, reader: _ShardReader, source: TeacherSource, teacher: TeacherSample, student
    ) -> AlignedTargets:
        """One present teacher's token-level targets at the student's rows (none under `chunk`)."""
        if self.objective == "chunk":
            return no_targets(len(student.ids) - 1)
        if (teacher.draw_counts is not None) != (self.target == "sampled"):
            raise RuntimeError(
                f"teacher {source.name}'s cache holds "
                f"{'drawn tokens' if teacher.draw_counts is not None else 'top-k rows'}, but "
                f"distill.target is {self.target}: use the cache extract.draws selects"
            )
        if self.objective == "exact_token":
            alignment = reader.exact_token_alignment(source, teacher, student)
        elif self.aligner == "dtw":
            alignment = reader.dtw_alignment(source, teacher, student.ids)
        else:
            alignment = None  # offsets
        return align_sample(
            student.ends,
            teacher.token_ends,
            teacher.topk_ids,
            teacher.topk_logprobs,
            source.vocab_map,
            # drawn tokens: their empirical distribution, unmapped draws in the rest
            target="residual" if self.target == "sampled" else self.target,
            alignment=alignment,
        )

    def _chunks(self, text: str, student, used: Sequence[TeacherSample | None]):
        """(the sample's chunks over the student and the present teachers, their teacher indices)."""
        present = [(k, t) for k, t in enumerate(used) if t is not None]
        correct = self.space_threshold is not None
        teachers = [
            ChunkTeacher(t.token_ends, t.target_logprobs, t.truncated, t.space_logprobs if correct else None)
            for _, t in present
        ]
        chunks = chunk_sample(text, student.ends, student.truncated, teachers, self.space_threshold)
        return chunks, tuple(k for k, _ in present)


def present_span_logliks(teachers: Sequence[TeacherSample | None], text: str) -> tuple[np.ndarray, int]:
    """(`[K, S]` float32, bytes): each present teacher's log-likelihood of the S spans between the
    offsets where every present teacher has a token boundary (stages/align/spans.py), 0 in the rows
    of absent (None) teachers, S = 0 when no teacher is present; and the UTF-8 bytes of `text`
    (the sample's) those spans cover."""
    present = [(k, t) for k, t in enumerate(teachers) if t is not None]
    boundaries = common_boundaries([t.token_ends for _, t in present], [t.truncated for _, t in present])
    loglik = np.zeros((len(teachers), max(len(boundaries) - 1, 0)), np.float32)
    for k, teacher in present:
        loglik[k] = span_logliks(teacher.token_ends, teacher.target_logprobs, boundaries)
    covered = text[boundaries[0] : boundaries[-1]] if len(boundaries) >= 2 else ""
    return loglik, len(covered.encode("utf-8"))


class _ShardReader:
    """A worker's view of the shards: the current corpus shard and its teacher shards, decoded once."""

    def __init__(self, stream: FusionStream) -> None:
        self.stream = stream
        self.tokenizer = load_tokenizer(stream.student_tokenizer)
        texts = stream.aligner == "dtw" or stream.objective == "exact_token"
        self.student_texts = build_token_table(self.tokenizer).texts if texts else None
        # Per teacher, its texts as an array (exact_token compares the next tokens' strings).
        self.text_arrays = {
            t.name: np.array(t.token_texts, dtype=object)
            for t in stream.teachers
            if t.token_texts is not None
        }
        self.student_text_array = np.array(self.student_texts, dtype=object) if texts else None
        self._index: int | None = None

    def exact_token_alignment(self, source: TeacherSource, teacher: TeacherSample, student) -> RowAlignment:
        """The offset-aligned rows whose next token is the same string on both sides."""
        assert self.student_text_array is not None
        return same_next_token(
            align_rows_by_offsets(teacher.token_ends, student.ends),
            teacher.token_ids,
            student.ids,
            self.text_arrays[source.name],
            self.student_text_array,
        )

    def dtw_alignment(self, source: TeacherSource, teacher: TeacherSample, student_ids: Sequence[int]):
        """FuseLLM's hard DTW alignment of one sample's teacher and student tokens, by their texts."""
        assert source.token_texts is not None and self.student_texts is not None
        return align_rows_by_dtw(
            [source.token_texts[i] for i in teacher.token_ids], [self.student_texts[i] for i in student_ids]
        )

    def row(self, shard: int, row: int) -> tuple[str, str, list[TeacherSample | None]]:
        """(sample_id, text, per-teacher decoded row or None) of one corpus sample."""
        if shard != self._index:
            self._load(shard)
        sample_id = self._ids[row]
        teachers = [rows[row] if rows is not None else None for rows in self._teachers]
        for teacher in teachers:
            if teacher is not None and teacher.sample_id != sample_id:
                raise RuntimeError(
                    f"teacher row {teacher.sample_id!r} sits where corpus sample {sample_id!r} is: the "
                    "teacher cache changed after it was checked; rerun distill"
                )
        return sample_id, self._texts[row], teachers

    def _load(self, shard: int) -> None:
        info = self.stream.shards[shard]
        check_schema(info.path, CORPUS_SCHEMA)
        table = pq.read_table(info.path, columns=["sample_id", "text"])
        self._ids = table.column("sample_id").to_pylist()
        self._texts = table.column("text").to_pylist()
        self._teachers: list[list[TeacherSample] | None] = []
        for source in self.stream.teachers:
            path = source.shards.get(info.name)
            self._teachers.append(decode_table(read_teacher_shard(path)) if path is not None else None)
        self._index = shard
