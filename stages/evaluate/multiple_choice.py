"""Multiple-choice accuracy by log-likelihood, written by hand the way lm-evaluation-harness (0.4.x,
`hf` model, `output_type: multiple_choice`, zero-shot) scores it. `polyfuse evaluate` runs lm-eval
itself on these sets (harness.py); this is the oracle the tests hold it to and the baseline of
bench/eval_bench.py. `ChoiceItem` and `ACCURACY_METRICS` are the sets' records (mc_sets.py).

- request: (context, choice), the task's `target_delimiter` being "" in our task files;
- encoding (lm-eval `_encode_pair`): trailing whitespace of the context moves to the front of the
  continuation; `whole = encode(context + continuation)`, `ctx = encode(context)`,
  `cont = whole[len(ctx):]`; `encode` adds the tokenizer's default special tokens (BOS where it
  adds one), as lm-eval does when `add_bos_token` is not set;
- the model sees `ctx + cont`, left-truncated to `max_tokens + 1` tokens; the score of a choice is
  Σ log p(cont tokens);
- acc: argmax of the scores is the gold; acc_norm: argmax of score / len(choice) in characters;
  acc_bytes: argmax of score / UTF-8 bytes of the choice (ties: the first, like `np.argmax`);
- standard error: lm-eval's `mean_stderr`, sample standard deviation (n − 1) over √n.

The context runs once per item and its cache is shared by the choices (token_logprobs.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from stages.evaluate.token_logprobs import continuation_logprobs
from stages.evaluate.unit_score import UnitScore

ACCURACY_METRICS = ("acc", "acc_norm", "acc_bytes")


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question: pick the choice that best continues the context."""

    item_id: str
    context: str
    choices: tuple[str, ...]
    gold: int
    """Index of the right choice."""


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
