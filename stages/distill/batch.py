"""One training sample as the loader's workers build it, and the micro-batch the model takes.

Index convention (losses.py): row j predicts token j+1. A sample of n student tokens has n − 1
rows; `AlignedTargets` arrays of the align stage are already `[n − 1, k]`, so collation only pads
them to the batch's longest sample T (rows n − 1 … T − 1 stay unavailable). The spans of the
`likelihood` gate objective and the gate diagnostics (stages/align/spans.py) are padded the same
way, to the batch's most spans S. Under the `chunk` objective the spans are the chunks
(stages/align/chunks.py: boundaries of the student and every present teacher), so the gate and the
chunk loss read the same ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from stages.align.chunks import Chunks
from stages.align.sample import AlignedTargets


@dataclass(frozen=True)
class AlignedSample:
    """A corpus sample tokenised by the student with every teacher's targets at its rows."""

    sample_id: str
    input_ids: np.ndarray
    """[n] int32 student token ids (n ≥ 1)."""
    teachers: tuple[AlignedTargets | None, ...]
    """Per teacher, its targets at the student's rows, or None where it has no data for this
    sample (a teacher that covers only the first shards, or a non-finite score)."""
    features: np.ndarray
    """[K, F] float32 per-teacher gate features, higher is better; 0 where absent. Column 0 is the
    teacher's score (exp(−ce) by default), the one the fixed rules min_ce / avg_ce rank by."""
    bits_per_byte: np.ndarray | None = None
    """[K] float32 each teacher's bits per byte on the sample (what min_bpb / avg_bpb rank by), +inf
    where absent or not finite; None: unknown (+inf for every teacher)."""
    span_loglik: np.ndarray | None = None
    """[K, S] float32 each teacher's log-likelihood of the sample's S common-boundary spans (the
    `likelihood` gate objective, gate diagnostics), 0 where absent; None: not computed (S = 0)."""
    span_bytes: int = 0
    """UTF-8 bytes of the text the spans cover (0 without spans)."""
    chunks: Chunks | None = None
    """Under the `chunk` objective: the sample's chunks (then `span_loglik` holds their teacher
    log-likelihoods, one row per teacher, and `span_bytes` their bytes); None otherwise."""
    present_rows: tuple[int, ...] = ()
    """With `chunks`: the teacher index of each row of `chunks`' `[K', C]` arrays."""


@dataclass(frozen=True)
class FusionBatch:
    """A padded micro-batch: exactly the tensors fusion.py and losses.py take.

    B samples, T = the longest sample's token count, K teachers, k = the widest top-k, F gate
    features per teacher (`distill.gate_features`: 1, or 4 for `all`).
    """

    sample_ids: tuple[str, ...]
    input_ids: torch.Tensor
    """[B, T] int64, right-padded with 0."""
    attention_mask: torch.Tensor
    """[B, T] int64, 1 on real tokens."""
    loss_mask: torch.Tensor
    """[B, T] bool, true where row j has a real next token (j < n_b − 1)."""
    support_ids: torch.Tensor
    """[B, K, T, k] int64 student-vocab ids of each teacher's top-k (padding: id 0)."""
    support_probs: torch.Tensor
    """[B, K, T, k] float32 target probabilities on the support (padding: 0)."""
    rest_mass: torch.Tensor
    """[B, K, T] float32 target mass outside the support (0 for the renormalised target)."""
    available: torch.Tensor
    """[B, K, T] bool, teacher k has a target at row j of sample b."""
    features: torch.Tensor
    """[B, K, F] float32 per-sample teacher features, the gate's input; 0 where absent."""
    present: torch.Tensor
    """[B, K] bool, teacher k has data for sample b."""
    aligned_rows: torch.Tensor
    """[K] int64, student rows with a teacher row at the same character (log statistic)."""
    student_rows: torch.Tensor
    """int64 scalar, student rows of the batch, n_b − 1 summed (denominator of the rates)."""
    mapped_mass: torch.Tensor
    """[K] float64, Σ over aligned rows of the share of top-k mass mapped to student ids."""
    bits_per_byte: torch.Tensor
    """[B, K] float32 per-sample teacher bits per byte (min_bpb / avg_bpb), whatever the gate
    features; +inf where the teacher is absent."""
    span_loglik: torch.Tensor
    """[B, K, S] float32 ll_bks, teacher k's log-likelihood of span s of sample b (the `likelihood`
    gate objective, gate_objective.py); 0 on padding and absent teachers. S = 0 unless computed."""
    span_mask: torch.Tensor
    """[B, S] bool, true on sample b's real spans."""
    span_bytes: torch.Tensor
    """[B] int64 UTF-8 bytes the spans of sample b cover (the gate diagnostics' bits per byte)."""
    row_chunk: torch.Tensor
    """[B, T] int64 the chunk (span) of row j's next token under the `chunk` objective, −1 outside
    every chunk, on padding and under other objectives."""
    chunk_space: torch.Tensor
    """[B, K, S] float32 log σ_k at each chunk's end (the bias correction), 0 where none applies."""
    chunk_end_row: torch.Tensor
    """[B, S] int64 the student row after each chunk (whose σ the student adds), −1: none."""

    @property
    def scores(self) -> torch.Tensor:
        """[B, K] per-sample teacher scores, `features[..., 0]` (what min_ce / avg_ce rank by)."""
        return self.features[..., 0]

    @property
    def num_tokens(self) -> int:
        """Real (non-pad) student tokens in the batch."""
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> FusionBatch:
        """The batch with every tensor on `device` (statistics stay where they are)."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=True)
            for f in fields(self)
            if f.name not in ("sample_ids", "aligned_rows", "student_rows", "mapped_mass")
        }
        return replace(self, **moved)


def collate_samples(samples: Sequence[AlignedSample], num_teachers: int) -> FusionBatch:
    """Pad `samples` to their longest one and stack them into a `FusionBatch`."""
    if not samples:
        raise ValueError("cannot collate an empty micro-batch")
    batch, length = len(samples), max(len(s.input_ids) for s in samples)
    widths = [t.support_ids.shape[1] for s in samples for t in s.teachers if t is not None]
    top_k = max(widths, default=1)
    num_features = samples[0].features.shape[1]
    num_spans = max((s.span_loglik.shape[1] for s in samples if s.span_loglik is not None), default=0)

    input_ids = np.zeros((batch, length), dtype=np.int64)
    attention_mask = np.zeros((batch, length), dtype=np.int64)
    loss_mask = np.zeros((batch, length), dtype=bool)
    support_ids = np.zeros((batch, num_teachers, length, top_k), dtype=np.int64)
    support_probs = np.zeros((batch, num_teachers, length, top_k), dtype=np.float32)
    rest_mass = np.zeros((batch, num_teachers, length), dtype=np.float32)
    available = np.zeros((batch, num_teachers, length), dtype=bool)
    features = np.zeros((batch, num_teachers, num_features), dtype=np.float32)
    present = np.zeros((batch, num_teachers), dtype=bool)
    bits_per_byte = np.full((batch, num_teachers), np.inf, dtype=np.float32)
    span_loglik = np.zeros((batch, num_teachers, num_spans), dtype=np.float32)
    span_mask = np.zeros((batch, num_spans), dtype=bool)
    span_bytes = np.array([s.span_bytes for s in samples], dtype=np.int64)
    row_chunk = np.full((batch, length), -1, dtype=np.int64)
    chunk_space = np.zeros((batch, num_teachers, num_spans), dtype=np.float32)
    chunk_end_row = np.full((batch, num_spans), -1, dtype=np.int64)
    aligned_rows = np.zeros(num_teachers, dtype=np.int64)
    mapped_mass = np.zeros(num_teachers, dtype=np.float64)
    student_rows = 0
    for b, sample in enumerate(samples):
        if len(sample.teachers) != num_teachers or sample.features.shape != (num_teachers, num_features):
            raise ValueError(
                f"sample {sample.sample_id} has {len(sample.teachers)} teachers and features of shape "
                f"{sample.features.shape}, expected {num_teachers} and {(num_teachers, num_features)}"
            )
        n = len(sample.input_ids)
        input_ids[b, :n] = sample.input_ids
        attention_mask[b, :n] = 1
        loss_mask[b, : n - 1] = True
        student_rows += n - 1
        if sample.span_loglik is not None:
            if sample.span_loglik.shape[0] != num_teachers:
                raise ValueError(
                    f"sample {sample.sample_id} has span log-likelihoods for {sample.span_loglik.shape[0]} "
                    f"teachers, expected {num_teachers}"
                )
            spans = sample.span_loglik.shape[1]
            span_loglik[b, :, :spans] = sample.span_loglik
            span_mask[b, :spans] = True
        if sample.chunks is not None:
            chunks = sample.chunks
            row_chunk[b, : n - 1] = chunks.row_chunk
            chunk_space[b, list(sample.present_rows), : chunks.count] = chunks.teacher_space
            chunk_end_row[b, : chunks.count] = chunks.end_row
        for k, targets in enumerate(sample.teachers):
            if targets is None:
                continue
            assert targets.n_rows == n - 1, "aligned targets must have one row per student row"
            width = targets.support_ids.shape[1]
            support_ids[b, k, : n - 1, :width] = targets.support_ids
            support_probs[b, k, : n - 1, :width] = targets.support_probs
            rest_mass[b, k, : n - 1] = targets.rest_mass
            available[b, k, : n - 1] = targets.available
            features[b, k] = sample.features[k]
            present[b, k] = True
            if sample.bits_per_byte is not None and np.isfinite(sample.bits_per_byte[k]):
                bits_per_byte[b, k] = sample.bits_per_byte[k]
            aligned_rows[k] += targets.n_aligned
            mapped_mass[k] += targets.mapped_mass
    return FusionBatch(
        sample_ids=tuple(s.sample_id for s in samples),
        input_ids=torch.from_numpy(input_ids),
        attention_mask=torch.from_numpy(attention_mask),
        loss_mask=torch.from_numpy(loss_mask),
        support_ids=torch.from_numpy(support_ids),
        support_probs=torch.from_numpy(support_probs),
        rest_mass=torch.from_numpy(rest_mass),
        available=torch.from_numpy(available),
        features=torch.from_numpy(features),
        present=torch.from_numpy(present),
        aligned_rows=torch.from_numpy(aligned_rows),
        student_rows=torch.tensor(student_rows, dtype=torch.int64),
        mapped_mass=torch.from_numpy(mapped_mass),
        bits_per_byte=torch.from_numpy(bits_per_byte),
        span_loglik=torch.from_numpy(span_loglik),
        span_mask=torch.from_numpy(span_mask),
        span_bytes=torch.from_numpy(span_bytes),
        row_chunk=torch.from_numpy(row_chunk),
        chunk_space=torch.from_numpy(chunk_space),
        chunk_end_row=torch.from_numpy(chunk_end_row),
    )
