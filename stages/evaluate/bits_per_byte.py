"""Held-out bits per byte of a causal LM, per domain: tokenizer-neutral, so models with different
tokenizers compare on the same text.

`polyfuse evaluate` gets each sample's log-likelihood from lm-evaluation-harness's
``loglikelihood_rolling`` (harness.py); ``score_texts`` here is the hand-written oracle the tests
hold lm-eval to, and the baseline of bench/eval_bench.py. Both follow one convention, lm-eval's:

- the text is encoded *without* special tokens, ids t₀ … tₙ₋₁, and every token is predicted:
  t₀ from the prefix token (the tokenizer's BOS, else its EOS), tᵢ from the prefix and t₀ … tᵢ₋₁;
  so every UTF-8 byte of the text is predicted, and a sample's bytes are those of its whole text;
- a text longer than ``max_tokens`` is scored in lm-eval's disjoint rolling windows, never
  truncated: the first window predicts t₀ … t_{M−1} from ``[prefix] + t₀ … t_{M−2}`` (M =
  max_tokens); each next window predicts the next min(M, rest) tokens from the M tokens that end
  just before its last one (`rolling_windows`), so every token is predicted exactly once.

A sample's bits per byte = Σ NLL (nats) / ln 2 / UTF-8 bytes. A domain's is the byte-weighted
mean over its samples, with the standard error of unit_score.py, documents as the independent
observations (`domain_bits_per_byte`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerFast

from stages.evaluate.token_logprobs import sequence_logprobs
from stages.evaluate.unit_score import UnitScore


@dataclass(frozen=True)
class ScoredText:
    """One sample's negative log-likelihood and the bytes it covers."""

    nats: float
    """Σ −log p(token) over every token of the text."""
    n_bytes: int
    """UTF-8 bytes of the text."""
    n_tokens: int = 0
    """Tokens of the text (0 where not counted: lm-eval does not report them)."""
    windowed: bool = False
    """Longer than max_tokens: scored in more than one rolling window."""

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.n_bytes if self.n_bytes else math.nan


def prefix_token_id(tokenizer: PreTrainedTokenizerFast) -> int:
    """The token the first text token is predicted from: BOS, else EOS (lm-eval's rule)."""
    if tokenizer.bos_token_id is not None:
        return tokenizer.bos_token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to predict the first token from")
    return tokenizer.eos_token_id


def rolling_windows(n_tokens: int, max_tokens: int) -> list[tuple[int, int]]:
    """(end, n_predicted) per window over ``seq = [prefix] + ids`` (len n_tokens + 1): the window
    feeds ``seq[max(0, end − max_tokens) : end]`` and scores its last n_predicted next-token
    predictions, i.e. ``seq[end − n_predicted + 1 : end + 1]``."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if n_tokens == 0:
        return []
    first = min(max_tokens, n_tokens)
    windows, predicted = [(first, first)], first
    while predicted < n_tokens:
        width = min(max_tokens, n_tokens - predicted)
        predicted += width
        windows.append((predicted, width))
    return windows


def score_texts(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    *,
    max_tokens: int = 1024,
    batch_tokens: int = 4096,
) -> list[ScoredText]:
    """NLL of each whole text by the convention of the module docstring; fp32 log-softmax."""
    prefix = prefix_token_id(tokenizer)
    encoded = [[prefix, *tokenizer.encode(text, add_special_tokens=False)] for text in texts]
    # One row per window: (text, tokens predicted, the window's tokens with the one it predicts last).
    rows = [
        (i, width, seq[max(0, end - max_tokens) : end + 1])
        for i, seq in enumerate(encoded)
        for end, width in rolling_windows(len(seq) - 1, max_tokens)
    ]
    logprobs = sequence_logprobs(model, [r[2] for r in rows], batch_tokens=batch_tokens)
    nats = [0.0] * len(texts)
    for (i, width, _), lp in zip(rows, logprobs, strict=True):
        nats[i] -= float(lp[-width:].sum(dtype="float64"))
    return [
        ScoredText(
            nats=nats[i],
            n_bytes=len(text.encode("utf-8")),
            n_tokens=len(encoded[i]) - 1,
            windowed=len(encoded[i]) - 1 > max_tokens,
        )
        for i, text in enumerate(texts)
    ]


def domain_bits_per_byte(
    domains: Sequence[str], documents: Sequence[str], scored: Sequence[ScoredText]
) -> dict[str, UnitScore]:
    """``bpb/<domain>`` scores: bits and bytes summed per document, then the ratio estimate.

    domains, documents: per sample, its domain and the id of its document (the observation).
    """
    per_domain: dict[str, dict[str, list[float]]] = {}
    for domain, doc, s in zip(domains, documents, scored, strict=True):
        if s.n_bytes == 0:
            continue
        bits_bytes = per_domain.setdefault(domain, {}).setdefault(doc, [0.0, 0.0])
        bits_bytes[0] += s.nats / math.log(2)
        bits_bytes[1] += s.n_bytes
    return {
        f"bpb/{domain}": UnitScore.from_observations(
            f"bpb/{domain}", "bpb", False, {doc: (b, n) for doc, (b, n) in docs.items()}
        )
        for domain, docs in sorted(per_domain.items())
    }
