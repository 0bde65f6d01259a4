"""Log-probabilities of given tokens under a causal LM: the one forward pass that the hand-written
bits-per-byte and multiple-choice scorers of hand_scorer.py share (the oracles lm-eval is tested
against; stages/evaluate/harness.py).

Batches are right-padded and need no attention mask: in a causal model a real token attends
only to the tokens before it, so pads placed after the last real token are never seen, and the
default position ids (0, 1, 2, …) are the real ones. Log-softmax is taken per row slice with one
logsumexp and a gather, so the temporary is one sequence's `[T, V]`, not the batch's (Gemma's
vocabulary is 262k: 1 MB per position in fp32).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


def token_logprobs(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """log p(target) per row.

    Args:
        logits: `[N, V]` (any float dtype; computed in fp32).
        target_ids: `[N]` int64.

    Returns:
        `[N]` fp32 log-probabilities.
    """
    logits = logits.float()
    return logits.gather(-1, target_ids[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def plan_batches(lengths: Sequence[int], batch_tokens: int) -> Iterator[list[int]]:
    """Indices grouped so that (longest length in batch) × (batch size) ≤ ``batch_tokens``.

    Longest first, so the batch that needs the most memory runs first and an out-of-memory
    shows at once; a single sequence longer than the budget forms its own batch.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for i in order:
        # Sorted longest first: the batch's width is its first member's length.
        width = lengths[batch[0]] if batch else lengths[i]
        if batch and width * (len(batch) + 1) > batch_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _right_padded(rows: Sequence[Sequence[int]], width: int, device: torch.device) -> torch.Tensor:
    batch = torch.zeros((len(rows), width), dtype=torch.long)
    for r, ids in enumerate(rows):
        batch[r, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return batch.to(device)


@torch.inference_mode()
def sequence_logprobs(
    model: torch.nn.Module, sequences: Sequence[Sequence[int]], *, batch_tokens: int
) -> list[np.ndarray]:
    """For each token sequence, the log-probability of every token given the tokens before it.

    Returns one fp32 array per sequence, of length ``len(seq) - 1``: entry t is
    log p(seq[t + 1] | seq[: t + 1]). The first token is the condition, never scored.
    """
    device = next(model.parameters()).device
    out: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(sequences)
    lengths = [len(s) for s in sequences]
    for batch in plan_batches(lengths, batch_tokens):
        batch = [i for i in batch if lengths[i] >= 2]
        if not batch:
            continue
        ids = _right_padded([sequences[i] for i in batch], lengths[batch[0]], device)
        logits = model(input_ids=ids, use_cache=False).logits
        for r, i in enumerate(batch):
            n = lengths[i]
            out[i] = token_logprobs(logits[r, : n - 1], ids[r, 1:n]).cpu().numpy()
        del logits
    return out


@torch.inference_mode()
def continuation_logprobs(
    model: torch.nn.Module, context_ids: Sequence[int], continuations: Sequence[Sequence[int]]
) -> list[np.ndarray]:
    """Log-probabilities of each continuation's tokens after one shared context.

    The context runs once; its key/value cache is repeated for every continuation, which then
    runs as one right-padded batch. Entry t of the result for continuation c is
    log p(c[t] | context, c[:t]): the same numbers as scoring ``context + c`` whole (to fp32
    rounding), at the cost of the context once instead of once per choice.
    """
    if not context_ids:
        raise ValueError("the context must hold at least one token")
    if any(len(c) == 0 for c in continuations):
        raise ValueError("every continuation must hold at least one token")
    device = next(model.parameters()).device
    context = torch.as_tensor([list(context_ids)], dtype=torch.long, device=device)
    first = model(input_ids=context, use_cache=True, logits_to_keep=1)
    first_logits = first.logits[0, -1:].float()
    results = [
        token_logprobs(first_logits, torch.as_tensor([c[0]], device=device)).cpu().numpy()
        for c in continuations
    ]
    width = max(len(c) for c in continuations) - 1
    if width == 0:
        return results
    cache = first.past_key_values
    cache.batch_repeat_interleave(len(continuations))
    # Row c feeds c[:-1]; its logits at step t predict c[t + 1].
    feeds = [list(c[:-1]) or [c[0]] for c in continuations]
    logits = model(
        input_ids=_right_padded(feeds, width, device), past_key_values=cache, use_cache=True
    ).logits
    for r, cont in enumerate(continuations):
        n = len(cont) - 1
        if n:
            rest = token_logprobs(logits[r, :n], torch.as_tensor(list(cont[1:]), device=device))
            results[r] = np.concatenate([results[r], rest.cpu().numpy()])
    return results
