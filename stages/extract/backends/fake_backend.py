"""A model-free backend for fast tests: deterministic top-k rows with the real contract.

Values depend only on (teacher name, the sequence's token ids, position), like a real model's
depend on its weights and the tokens, so identical samples get identical rows in any batch, any
process and any rank. The actual next token is put into the top-k on about half of the rows, with
the same logprob there as in ``target_logprobs``, as a real backend's would be.

Its full distribution is the top-k plus the rest of the mass spread evenly over the other V − k
ids; σ (given a space mask) is that distribution's mass on the mask: the masked top-k entries'
probabilities plus the rest's share of the masked ids outside the top-k.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import numpy as np

from stages.extract.backends.base import TopkRows, check_top_k, fit_space_mask
from stages.extract.draws import row_uniforms
from stages.extract.settings import ExtractSettings

FAKE_VERSION = "1"


class FakeBackend:
    """Deterministic pseudo-model over a vocabulary of ``vocab_size`` ids."""

    name = "fake"
    version = FAKE_VERSION
    logprobs_mode = "raw_logprobs"
    batch_tokens = 1 << 16
    seconds_per_call = 0.0
    """Sleep per ``topk_logprobs`` call: lets crash tests kill a run in the middle of a shard."""

    def __init__(
        self,
        teacher: str,
        *,
        top_k: int,
        vocab_size: int,
        draws: int = ExtractSettings.draws,
        space_mask: np.ndarray | None = None,
    ) -> None:
        check_top_k(top_k, vocab_size, self.name, "lower extract.top_k")
        self.teacher = teacher
        self.top_k = top_k
        self.vocab_size = vocab_size
        self.draws = draws
        """N > 0: also draw N tokens per row, from the top-k's mass and uniformly for the rest."""
        self.space_mask = None if space_mask is None else fit_space_mask(space_mask, vocab_size)
        """[V] bool ids that start a word (``token_text.space_mask``); None: no σ."""

    def topk_logprobs(self, token_ids: Sequence[np.ndarray]) -> list[TopkRows]:
        if self.seconds_per_call:
            time.sleep(self.seconds_per_call)
        return [self._rows(np.asarray(ids, np.int32)) for ids in token_ids]

    def _rows(self, ids: np.ndarray) -> TopkRows:
        n_rows, k = len(ids) - 1, self.top_k
        if n_rows < 1:
            return TopkRows.empty(k, self.draws, space=self.space_mask is not None)
        seed = hashlib.sha256(self.teacher.encode() + b"\0" + ids.tobytes()).digest()
        rng = np.random.default_rng(int.from_bytes(seed[:8], "little"))
        # k consecutive ids from a random start: distinct, and frequent enough to compress.
        topk_ids = (
            (rng.integers(0, self.vocab_size, n_rows)[:, None] + np.arange(k)) % self.vocab_size
        ).astype(np.int32)
        # Sorted descending; normalised so that the top-k leave 5–95 % of the mass to the rest.
        raw = -np.cumsum(rng.exponential(0.7, (n_rows, k)), axis=1)
        rest = np.log(rng.uniform(0.05, 0.95, n_rows))
        log_mass = np.logaddexp.reduce(raw, axis=1)
        topk_logprobs = (raw - log_mass[:, None] + np.log1p(-np.exp(rest))[:, None]).astype(np.float32)
        targets = ids[1:]
        slot = rng.integers(0, k, n_rows)
        place = (rng.random(n_rows) < 0.5) & ~(topk_ids == targets[:, None]).any(axis=1)
        topk_ids[place, slot[place]] = targets[place]
        hit = topk_ids == targets[:, None]
        below = topk_logprobs[:, -1] - rng.exponential(2.0, n_rows).astype(np.float32)
        target_logprobs = np.where(
            hit.any(axis=1), topk_logprobs[np.arange(n_rows), hit.argmax(axis=1)], below
        )
        drawn = None
        if self.draws:
            # The fake's full distribution: the top-k, and the rest of the mass uniform over V.
            u = row_uniforms(ids, self.draws)
            cdf = np.cumsum(np.exp(topk_logprobs.astype(np.float64)), axis=1)
            slot = (u[:, :, None] >= cdf[:, None, :]).sum(axis=2)  # [rows, N], k = in the rest
            rest_ids = rng.integers(0, self.vocab_size, (n_rows, self.draws))
            picked = np.take_along_axis(topk_ids, np.minimum(slot, k - 1), axis=1)
            drawn = np.where(slot < k, picked, rest_ids).astype(np.int32)
        space = None if self.space_mask is None else self._space_logprobs(topk_ids, topk_logprobs)
        return TopkRows(topk_ids, topk_logprobs, target_logprobs.astype(np.float32), drawn, space)

    def _space_logprobs(self, topk_ids: np.ndarray, topk_logprobs: np.ndarray) -> np.ndarray:
        """[rows] log σ of the fake's full distribution (module docstring)."""
        assert self.space_mask is not None
        probs = np.exp(topk_logprobs.astype(np.float64))
        in_mask = self.space_mask[topk_ids]
        rest = np.clip(1.0 - probs.sum(axis=1), 0.0, 1.0)
        share = (self.space_mask.sum() - in_mask.sum(axis=1)) / max(self.vocab_size - self.top_k, 1)
        sigma = (probs * in_mask).sum(axis=1) + rest * share
        with np.errstate(divide="ignore"):
            return np.minimum(np.log(sigma), 0.0).astype(np.float32)

    def close(self) -> None:
        pass
