"""Held-out bits per byte of a causal LM, per domain: tokenizer-neutral, so models with different
tokenizers compare on the same text.

The predicted span of a sample, exactly (the extract stage's per-sample `bits_per_byte` uses the
same definition): the text is tokenised as the model's tokenizer does by default (BOS where it adds
one), truncated to ``max_tokens`` tokens (not slid: corpus chunks are at most `corpus.max_chars`
characters, so truncation is rare and every truncated sample is counted). Token 0 is never scored;
tokens 1 … n−1 are, each from all tokens before it. With `ends[t]` the character up to which the
text is covered once token t is emitted (stages/tokenization.py), the predicted span is
`text[ends[0] : ends[n−1]]`:
- with a BOS, `ends[0] = 0`, so the first text token is scored from BOS and every byte counts;
- without one, the first token's bytes are context, not prediction, and are left out.
A sample's bits per byte = Σ next-token NLL (nats) / ln 2 / UTF-8 bytes of that span. A domain's
is the byte-weighted mean over its samples, with the standard error of unit_score.py, documents
as the independent observations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerFast

from stages.evaluate.token_logprobs import sequence_logprobs
from stages.evaluate.unit_score import UnitScore
from stages.tokenization import tokenize_many_with_ends


@dataclass(frozen=True)
class ScoredText:
    """One sample's predicted span and its negative log-likelihood."""

    nats: float
    """Σ −log p(token t | tokens < t) over the predicted tokens 1 … n−1."""
    n_bytes: int
    """UTF-8 bytes of the predicted span `text[ends[0]:ends[n−1]]`."""
    n_tokens: int
    """Predicted tokens (n − 1)."""
    truncated: bool

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.n_bytes if self.n_bytes else math.nan


def score_texts(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    *,
    add_special_tokens: bool = True,
    max_tokens: int = 1024,
    batch_tokens: int = 4096,
) -> list[ScoredText]:
    """Next-token NLL of each text over its predicted span (module docstring); fp32 log-softmax."""
    tokenized = tokenize_many_with_ends(
        tokenizer, texts, add_special_tokens=add_special_tokens, max_tokens=max_tokens
    )
    appended = set(tokenizer.all_special_ids)
    sequences = []
    for tok in tokenized:
        n = len(tok.ids)
        # A tokenizer that appends EOS would make the model "predict" the end of a chunk that
        # does not end there: such trailing zero-width special tokens are not scored.
        while n > 1 and int(tok.ids[n - 1]) in appended and tok.ends[n - 1] == tok.ends[n - 2]:
            n -= 1
        sequences.append(tok.ids[:n].tolist())
    logprobs = sequence_logprobs(model, sequences, batch_tokens=batch_tokens)
    scored = []
    for text, tok, ids, lp in zip(texts, tokenized, sequences, logprobs, strict=True):
        n = len(ids)
        span = text[int(tok.ends[0]) : int(tok.ends[n - 1])] if n >= 2 else ""
        scored.append(
            ScoredText(
                nats=float(-lp.sum(dtype="float64")),
                n_bytes=len(span.encode("utf-8")),
                n_tokens=max(n - 1, 0),
                truncated=tok.truncated,
            )
        )
    return scored


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
