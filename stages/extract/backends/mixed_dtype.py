"""``extract.dtype: bf16_mixed``: a bf16 decoder body under an fp32 final norm, head and log-softmax.

A model loaded in bf16 rounds everything to 8 mantissa bits, the last steps included: the final
norm's output, the [H → V] head's weights and its logits. On SmolLM2-135M that left the top-10
sets equal to fp32's on only 72.7 % of positions (docs/material.md §1). The decoder layers hold almost
all of the arithmetic, so running only them in bf16 keeps most of the speed of bf16 on a CPU with
native bf16 (AMX, AVX512_BF16), while the steps that shape the logits directly stay fp32:

    embed_tokens (fp32 weights) → cast to bf16 → decoder layers (bf16 weights, bf16 activations)
      → cast to fp32 → final norm (fp32) → lm_head (fp32) → log-softmax (fp32, as for every dtype)

The embedding table stays fp32, so a head tied to it (SmolLM2, Gemma) stays tied and fp32; only
its output is rounded to bf16, as in a bf16 model. Whether the fidelity holds on the real teachers
is measured, not assumed: ``bench/extract_fidelity.py``. A cache written this way is a different
teacher: the dtype is part of the teacher key.
"""

from __future__ import annotations

import torch

from stages.extract.settings import MIXED_DTYPE as MIXED


def make_body_bf16(model: torch.nn.Module) -> None:
    """Turn an fp32 causal LM into the mixed form above, in place.

    The model must have the usual decoder layout (``model.model.embed_tokens``, ``.layers``,
    ``.norm``; Llama, Gemma 3, Qwen 2 and most decoders in transformers do); ``ValueError``
    naming the fix otherwise.
    """
    body = getattr(model, "model", None)
    embed, layers, norm = (getattr(body, name, None) for name in ("embed_tokens", "layers", "norm"))
    if embed is None or layers is None or norm is None:
        raise ValueError(
            f"extract.dtype={MIXED} needs a decoder with model.embed_tokens, model.layers and "
            f"model.norm, which {type(model).__name__} lacks: use extract.dtype float32 or bfloat16"
        )
    layers.to(torch.bfloat16)
    # The body's activations (and the attention mask built from the embeddings' dtype) are bf16
    # from the first layer on; the final norm then sees fp32 input, so it computes and returns
    # fp32 (an RMSNorm returns its input's dtype).
    embed.register_forward_hook(lambda _module, _args, output: output.to(torch.bfloat16))
    norm.register_forward_pre_hook(lambda _module, args: (args[0].float(), *args[1:]))
