"""The transformers backend: batched forwards, log-softmax and top-k on the device, top-k to host.

Sequences are sorted by length and packed into right-padded batches of at most ``batch_tokens``
tokens. Right padding needs no attention mask in a causal model: a pad token sits after every real
token of its row, so no real position can attend to it (and the fused causal SDPA path stays on).

The LM head runs separately from the body, on the real rows only and in chunks of rows, so the
[rows, V] logits never exist for a whole batch at once (Gemma's 262k vocabulary makes a 4k-token
batch 4.3 GB of fp32 logits otherwise) and no head work is spent on padding. Whether body + head
reproduces the model's own forward is checked once at load time on a short probe; a model whose
forward does more than ``lm_head`` (+ Gemma-style soft-capping) falls back to the full forward.

Given the tokenizer's space mask, each row's σ (the mass on ids that start a new word) is taken
last from the chunk's fp32 log-softmax: exponentiated in place and multiplied by the 0/1 mask
vector (one exp pass and a matrix-vector product, ~0.06 ms per row on one core at 49k ids, a
third of a gather + logsumexp). In fp32 a term below e^−87 underflows, and even 262k such terms
add less than e^−74, so every σ above the stored floor e^−64 keeps fp32 accuracy (≈ 1e-5 relative).
``dtype`` ``bf16_mixed`` runs the decoder layers in bf16 and the rest in fp32 (``mixed_dtype.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

from stages.extract.backends.base import TopkRows, check_max_tokens, check_top_k, fit_space_mask
from stages.extract.backends.mixed_dtype import MIXED, make_body_bf16
from stages.extract.draws import draw_tokens, row_uniforms
from stages.extract.model_fingerprint import check_model_folder
from stages.extract.settings import ExtractSettings

logger = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    MIXED: torch.float32,
}
"""The dtype each ``extract.dtype`` loads the weights in (``bf16_mixed`` then casts its body)."""
HEAD_CHUNK_ELEMENTS = 1 << 25
"""Logits per head chunk (rows × vocabulary): 128 MB of fp32 whatever the vocabulary size."""
_PROBE_TOLERANCE = 1e-4


def length_sorted_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches whose padded size (rows × longest) stays within ``batch_tokens``.

    Longest first, so the first batch shows the peak memory at once; a sequence longer than
    ``batch_tokens`` gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class TransformersBackend:
    """A Hugging Face causal LM in this process (CPU, or the first GPU when there is one)."""

    name = "transformers"
    version = transformers.__version__
    logprobs_mode = "raw_logprobs"

    def __init__(
        self,
        model_path: str | Path,
        *,
        top_k: int,
        dtype: str = "float32",
        batch_tokens: int = ExtractSettings.batch_tokens,
        max_tokens: int | None = None,
        device: str | None = None,
        draws: int = ExtractSettings.draws,
        space_mask: np.ndarray | None = None,
    ) -> None:
        folder = check_model_folder(model_path)
        config = AutoConfig.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False
        ).get_text_config()
        check_top_k(top_k, config.vocab_size, self.name, "lower extract.top_k")
        if max_tokens is not None:
            check_max_tokens(max_tokens, getattr(config, "max_position_embeddings", None), self.name)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}: fix extract.dtype")
        self.top_k = top_k
        self.draws = draws
        """N > 0: also draw N tokens per row from the full softmax (the `sampled` cache)."""
        self.batch_tokens = batch_tokens
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=DTYPES[dtype], local_files_only=True, trust_remote_code=False
        )
        if dtype == MIXED:
            make_body_bf16(self.model)
        self.model.to(self.device).eval()
        self._space_weights = (
            None
            if space_mask is None
            else torch.from_numpy(fit_space_mask(space_mask, config.vocab_size)).float().to(self.device)
        )
        """[V] 1.0 on the ids whose mass is σ (``space_mask`` fitted to the model's vocabulary), 0.0
        elsewhere; None: no σ."""
        self._split = self._body_and_head_match()
        if not self._split:
            logger.warning("%s: body + lm_head differs from the model's forward; using full forwards", folder)

    # -- the model pieces -------------------------------------------------------------------

    def _hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T, H] final hidden states (after the final norm)."""
        return self.model.model(input_ids=input_ids, use_cache=False).last_hidden_state

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, H] hidden states → [N, V] fp32 logits, as the model's own forward computes them."""
        logits = self.model.get_output_embeddings()(hidden).float()
        cap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    @torch.inference_mode()
    def _body_and_head_match(self) -> bool:
        if not hasattr(self.model, "model") or self.model.get_output_embeddings() is None:
            return False
        probe = torch.arange(1, 9, device=self.device).unsqueeze(0)
        full = self.model(input_ids=probe, use_cache=False).logits.float()
        split = self._head(self._hidden_states(probe)[0]).unsqueeze(0)
        return bool(torch.allclose(full, split, atol=_PROBE_TOLERANCE, rtol=_PROBE_TOLERANCE))

    # -- the interface ----------------------------------------------------------------------

    @torch.inference_mode()
    def topk_logprobs(self, token_ids: Sequence[np.ndarray]) -> list[TopkRows]:
        results: list[TopkRows | None] = [None] * len(token_ids)
        lengths = [len(ids) for ids in token_ids]
        for i, n in enumerate(lengths):
            if n < 2:
                results[i] = TopkRows.empty(self.top_k, self.draws, space=self._space_weights is not None)
        scored = [i for i, n in enumerate(lengths) if n >= 2]
        for batch in length_sorted_batches([lengths[i] for i in scored], self.batch_tokens):
            members = [scored[b] for b in batch]
            for i, rows in zip(members, self._score_batch([token_ids[i] for i in members]), strict=True):
                results[i] = rows
        return results  # type: ignore[return-value]

    def _score_batch(self, sequences: list[np.ndarray]) -> list[TopkRows]:
        longest = max(len(s) for s in sequences)
        padded = np.zeros((len(sequences), longest), np.int64)  # pad id 0: never attended (see top)
        for b, seq in enumerate(sequences):
            padded[b, : len(seq)] = seq
        input_ids = torch.from_numpy(padded).to(self.device)
        # Real rows only: row t of sample b predicts token t+1, so rows 0..n−2.
        row_b = np.concatenate([np.full(len(s) - 1, b) for b, s in enumerate(sequences)])
        row_t = np.concatenate([np.arange(len(s) - 1) for s in sequences])
        rows = torch.from_numpy(row_b * longest + row_t).to(self.device)
        targets = input_ids.view(-1)[rows + 1]
        if self._split:
            source, head = self._hidden_states(input_ids).flatten(0, 1)[rows], self._head
        else:
            source, head = self.model(input_ids=input_ids, use_cache=False).logits.flatten(0, 1)[rows], None
        uniforms = (
            torch.from_numpy(np.concatenate([row_uniforms(s, self.draws) for s in sequences]))
            if self.draws
            else None
        )
        batch_rows = self._topk_in_chunks(source, head, targets, uniforms)
        stops = np.cumsum([len(s) - 1 for s in sequences])
        return [batch_rows.select(stop - len(s) + 1, stop) for s, stop in zip(sequences, stops, strict=True)]

    def _topk_in_chunks(
        self,
        source: torch.Tensor,
        head: Callable[[torch.Tensor], torch.Tensor] | None,
        targets: torch.Tensor,
        uniforms: torch.Tensor | None = None,
    ) -> TopkRows:
        """Log-softmax, top-k, the target's logprob (and log σ, and draws), a chunk of rows at a
        time; only [N, k], [N] (and [N, draws]) leave the device.

        source: [N, H] hidden states when ``head`` maps them to logits, else [N, V] logits.
        targets: [N] the actual next token of each row.
        uniforms: [N, draws] when tokens are to be drawn from each row (`draws.draw_tokens`).
        Returns the N rows of the whole batch.
        """
        vocab = self.model.get_output_embeddings().weight.shape[0] if head else source.shape[-1]
        chunk = max(1, HEAD_CHUNK_ELEMENTS // vocab)
        ids, lps, tgt, drawn, space = [], [], [], [], []
        for a in range(0, len(targets), chunk):
            logits = head(source[a : a + chunk]) if head else source[a : a + chunk].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            values, indices = torch.topk(logprobs, self.top_k, dim=-1, sorted=True)
            ids.append(indices.to(torch.int32).cpu())
            lps.append(values.cpu())
            tgt.append(logprobs.gather(-1, targets[a : a + chunk, None]).squeeze(-1).cpu())
            if uniforms is not None:
                drawn.append(draw_tokens(logprobs, uniforms[a : a + chunk]).to(torch.int32).cpu())
            if self._space_weights is not None:  # last: exp_ overwrites the log-softmax
                sigma = torch.mv(logprobs.exp_(), self._space_weights)
                # log σ ≤ 0 in exact arithmetic; the clamp removes a rounding excess of ~1e-7.
                space.append(sigma.log_().clamp_(max=0.0).cpu())
        return TopkRows(
            torch.cat(ids).numpy(),
            torch.cat(lps).numpy(),
            torch.cat(tgt).numpy(),
            torch.cat(drawn).numpy() if uniforms is not None else None,
            torch.cat(space).numpy() if self._space_weights is not None else None,
        )

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
