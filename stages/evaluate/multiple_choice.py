"""The records of a multiple-choice set (mc_sets.py), and how lm-evaluation-harness (0.4.x, `hf`
model, `output_type: multiple_choice`, zero-shot) scores it: `polyfuse evaluate` runs lm-eval on
these sets (harness.py); the hand-written scorer the tests hold it to
(tests/stages/evaluate/hand_scorer.py) follows the same rules:

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
"""

from __future__ import annotations

from dataclasses import dataclass

ACCURACY_METRICS = ("acc", "acc_norm", "acc_bytes")
"""The accuracies of every set, each a `<metric>/<task>` unit."""


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question: pick the choice that best continues the context."""

    item_id: str
    context: str
    choices: tuple[str, ...]
    gold: int
    """Index of the right choice."""
