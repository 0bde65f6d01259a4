"""The hand-written scorer: bits per byte and multiple-choice accuracy computed with transformers
alone, by lm-evaluation-harness's conventions (stages/evaluate/bits_per_byte.py and
multiple_choice.py describe them). `polyfuse evaluate` scores with lm-eval itself (harness.py);
this is the oracle the tests hold lm-eval to, and the baseline of bench/eval_bench.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from stages.evaluate.bits_per_byte import ScoredText
from stages.evaluate.multiple_choice import ACCURACY_METRICS, ChoiceItem
from stages.evaluate.unit_score import UnitScore
from tests.stages.evaluate.token_logprobs import continuation_logprobs, sequence_logprobs


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


@dataclass(frozen=True)
class ItemResult:
    item_id: str
    logprobs: tuple[float, ...]
    """Σ log p(continuation tokens | context), per choice."""
    gold: int
    predictions: dict[str, int]
    """Metric name → chosen index."""
    context_truncated: bool


def encode_pair(
    tokenizer: PreTrainedTokenizerFast, context: str, continuation: str
) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) exactly as lm-eval's `_encode_pair` for a causal model."""
    if not context:
        raise ValueError("multiple-choice contexts must be non-empty")
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids) :]


def predictions(logprobs: Sequence[float], choices: Sequence[str]) -> dict[str, int]:
    """Chosen index per metric (module docstring)."""
    lls = np.asarray(logprobs, dtype=np.float64)
    chars = np.array([float(len(c)) for c in choices])
    n_bytes = np.array([float(len(c.encode("utf-8"))) for c in choices])
    return {
        "acc": int(np.argmax(lls)),
        "acc_norm": int(np.argmax(lls / chars)),
        "acc_bytes": int(np.argmax(lls / n_bytes)),
    }


def score_items(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    items: Sequence[ChoiceItem],
    *,
    max_tokens: int,
) -> list[ItemResult]:
    """Score every choice of every item (one context pass per item)."""
    results = []
    for item in items:
        pairs = [encode_pair(tokenizer, item.context, choice) for choice in item.choices]
        # The context encoding depends on the context alone: one per item.
        context_ids = pairs[0][0]
        continuations = [cont for _, cont in pairs]
        if any(not cont for cont in continuations):
            raise ValueError(f"item {item.item_id}: a choice encodes to no tokens: remove empty choices")
        # lm-eval keeps the last max_tokens + 1 tokens of context + continuation (the last one is
        # only a target); a long context loses its start.
        keep = max_tokens + 1 - max(len(c) for c in continuations)
        if keep < 1:
            raise ValueError(f"item {item.item_id}: a choice is longer than max_tokens ({max_tokens})")
        truncated = len(context_ids) > keep
        logprobs = continuation_logprobs(model, context_ids[-keep:], continuations)
        totals = tuple(float(lp.sum(dtype="float64")) for lp in logprobs)
        results.append(
            ItemResult(item.item_id, totals, item.gold, predictions(totals, item.choices), truncated)
        )
    return results


def task_accuracy(task: str, results: Sequence[ItemResult]) -> dict[str, UnitScore]:
    """``acc/<task>``, ``acc_norm/<task>``, ``acc_bytes/<task>`` with lm-eval's standard errors."""
    if len({r.item_id for r in results}) != len(results):
        raise ValueError(f"task {task}: item ids repeat: give every item its own id")
    return {
        f"{metric}/{task}": UnitScore.from_observations(
            f"{metric}/{task}",
            metric,
            True,
            {r.item_id: (float(r.predictions[metric] == r.gold), 1.0) for r in results},
        )
        for metric in ACCURACY_METRICS
    }
