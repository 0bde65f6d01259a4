"""The seam between extraction and a teacher model: one method, token ids in, top-k out.

Every backend answers the same question for a batch of token sequences: for each row i (tokens
≤ i seen), what are the k most likely next tokens under the full softmax, their logprobs, and the
logprob of the token that actually comes next; and, where the backend sees the full softmax and
was given the tokenizer's space mask, log σ: the log of the probability that token i+1 starts a
new word (``stages/align/token_text.space_mask``). A sequence of n tokens has n − 1 rows; the
last token has no next token and no row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class TopkRows:
    """A teacher's next-token distributions over one sample.

    topk_ids: [n − 1, k] int32, row i = the k most likely ids of token i+1, by logprob descending.
    topk_logprobs: [n − 1, k] float32, their log-softmax over the full vocabulary (sorted descending).
    target_logprobs: [n − 1] float32, log-softmax of the actual token i+1 (from the full softmax,
        whether or not it is in the top-k): −mean of it is the sample's cross-entropy.
    """

    topk_ids: np.ndarray
    topk_logprobs: np.ndarray
    target_logprobs: np.ndarray
    drawn_ids: np.ndarray | None = None
    """[n − 1, N] int32 tokens drawn from the full softmax of each row (stages/extract/draws.py),
    when the backend was asked for N > 0 draws; else None."""
    space_logprobs: np.ndarray | None = None
    """[n − 1] float32 log σ ≤ 0: log of the full softmax's mass on the space mask's ids, when
    the backend was given a space mask and sees the full softmax; else None (vLLM)."""

    @property
    def n_rows(self) -> int:
        return len(self.target_logprobs)

    def select(self, start: int, stop: int) -> TopkRows:
        """Rows ``start:stop`` (one sample's rows out of a batch's)."""
        drawn, space = self.drawn_ids, self.space_logprobs
        return TopkRows(
            self.topk_ids[start:stop],
            self.topk_logprobs[start:stop],
            self.target_logprobs[start:stop],
            None if drawn is None else drawn[start:stop],
            None if space is None else space[start:stop],
        )

    @classmethod
    def empty(cls, top_k: int, draws: int = 0, space: bool = False) -> TopkRows:
        """The rows of a sample with fewer than two tokens: none (with an empty σ when ``space``)."""
        drawn = np.zeros((0, draws), np.int32) if draws else None
        return cls(
            np.zeros((0, top_k), np.int32),
            np.zeros((0, top_k), np.float32),
            np.zeros(0, np.float32),
            drawn,
            np.zeros(0, np.float32) if space else None,
        )


@runtime_checkable
class TeacherBackend(Protocol):
    """A loaded teacher model that scores token sequences.

    Implementations load their model in ``__init__`` (after checking their arguments, so a bad
    value fails before a model is read) and free it in ``close``.
    """

    name: str
    """``transformers``, ``vllm`` or ``fake``."""
    version: str
    """Version of the library doing the work (recorded in the manifest)."""
    logprobs_mode: str
    """What the logprobs are: ``raw_logprobs`` = log-softmax of the unprocessed logits."""
    batch_tokens: int
    """Tokens per call the backend runs well with; extraction hands it batches of about this size."""

    def topk_logprobs(self, token_ids: Sequence[np.ndarray]) -> list[TopkRows]:
        """Top-k rows of each sequence (``token_ids[b]``: [n_b] int32), in the input order."""
        ...

    def close(self) -> None:
        """Release the model (memory, worker processes)."""
        ...


def check_top_k(top_k: int, maximum: int, backend: str, fix: str) -> None:
    """``ValueError`` unless 1 ≤ top_k ≤ the backend's maximum."""
    if not 1 <= top_k <= maximum:
        raise ValueError(
            f"top_k must be between 1 and the {backend} backend's maximum ({maximum}), got {top_k}: {fix}"
        )


def check_max_tokens(max_tokens: int, model_positions: int | None, backend: str, extra: int = 0) -> None:
    """``ValueError`` unless ``max_tokens`` (+ ``extra`` positions the backend needs beyond the
    prompt) fits the model's position range (``max_position_embeddings``; None: unknown)."""
    if model_positions is not None and max_tokens + extra > model_positions:
        raise ValueError(
            f"extract.max_tokens must be at most {model_positions - extra} for this model with the {backend} "
            f"backend (max_position_embeddings {model_positions}"
            f"{f', plus {extra} generated position' if extra else ''}), got {max_tokens}: lower extract.max_tokens"
        )


def fit_space_mask(space_mask: np.ndarray, size: int) -> np.ndarray:
    """The tokenizer's space mask cut or padded (with False: ids no token emits) to the model's
    ``size`` output ids."""
    fitted = np.zeros(size, dtype=bool)
    known = min(size, len(space_mask))
    fitted[:known] = np.asarray(space_mask, bool)[:known]
    return fitted
