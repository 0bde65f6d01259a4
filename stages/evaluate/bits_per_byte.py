"""Held-out bits per byte of a causal LM, per domain: tokenizer-neutral, so models with different
tokenizers compare on the same text.

`polyfuse evaluate` gets each sample's log-likelihood from lm-evaluation-harness's
``loglikelihood_rolling`` (harness.py); the hand-written scorer the tests hold lm-eval to
(tests/stages/evaluate/hand_scorer.py) follows the same convention, lm-eval's:

- the text is encoded *without* special tokens, ids t₀ … tₙ₋₁, and every token is predicted:
  t₀ from the prefix token (the tokenizer's BOS, else its EOS), tᵢ from the prefix and t₀ … tᵢ₋₁;
  so every UTF-8 byte of the text is predicted, and a sample's bytes are those of its whole text;
- a text longer than ``max_tokens`` is scored in lm-eval's disjoint rolling windows, never
  truncated: the first window predicts t₀ … t_{M−1} from ``[prefix] + t₀ … t_{M−2}`` (M =
  max_tokens); each next window predicts the next min(M, rest) tokens from the M tokens that end
  just before its last one, so every token is predicted exactly once.

A sample's bits per byte = Σ NLL (nats) / ln 2 / UTF-8 bytes. A domain's is the byte-weighted
mean over its samples, with the standard error of unit_score.py, documents as the independent
observations (`domain_bits_per_byte`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
