"""``extract.dtype: bf16_mixed``: bf16 decoder layers between an fp32 embedding table and an fp32
final norm, head and log-softmax; close to fp32 on a tiny teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stages.extract.backends import open_backend
from stages.extract.backends.mixed_dtype import make_body_bf16
from stages.extract.backends.transformers_backend import TransformersBackend
from stages.extract.settings import ExtractSettings
from tests.stages.extract.conftest import TOP_K
from tests.tiny_models import tiny_llama_config


def test_only_the_decoder_layers_run_in_bf16() -> None:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(300)).eval()
    make_body_bf16(model)
    assert {p.dtype for p in model.model.layers.parameters()} == {torch.bfloat16}
    for part in (model.model.embed_tokens, model.model.norm, model.lm_head):
        assert {p.dtype for p in part.parameters()} == {torch.float32}
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied, still fp32
    seen: dict[str, torch.dtype] = {}

    def record(name: str, tensor: torch.Tensor) -> None:  # hooks must return None: no change
        seen[name] = tensor.dtype

    model.model.layers[0].register_forward_pre_hook(
        lambda _m, args, kwargs: record("layer_in", (args or (kwargs["hidden_states"],))[0]), with_kwargs=True
    )
    model.model.norm.register_forward_hook(
        lambda _m, args, out: record("norm_in", args[0]) or record("norm_out", out)
    )
    with torch.inference_mode():
        logits = model(input_ids=torch.arange(1, 12)[None]).logits
    assert seen["layer_in"] == torch.bfloat16
    assert seen["norm_in"] == seen["norm_out"] == logits.dtype == torch.float32


def test_a_model_without_the_decoder_layout_is_refused() -> None:
    with pytest.raises(ValueError, match=r"bf16_mixed needs a decoder with model.embed_tokens.*Linear"):
        make_body_bf16(torch.nn.Linear(3, 3))


def test_mixed_rows_are_close_to_fp32(tiny_teacher: Path, tokenized, space_mask) -> None:
    seqs = [t.ids for t in tokenized if len(t.ids) > 1]
    rows = {}
    for dtype in ("float32", "bf16_mixed"):
        backend = TransformersBackend(tiny_teacher, top_k=TOP_K, dtype=dtype, space_mask=space_mask)
        assert backend._split  # body + head still reproduces the model's forward
        rows[dtype] = backend.topk_logprobs(seqs)
    target = {d: np.concatenate([r.target_logprobs for r in rows[d]]) for d in rows}
    top1 = {d: np.concatenate([r.topk_ids[:, 0] for r in rows[d]]) for d in rows}
    space = {d: np.concatenate([r.space_logprobs for r in rows[d]]) for d in rows}
    assert np.abs(target["bf16_mixed"] - target["float32"]).mean() < 0.05
    assert np.abs(space["bf16_mixed"] - space["float32"]).mean() < 0.05
    assert (top1["bf16_mixed"] == top1["float32"]).mean() > 0.9
    assert not np.array_equal(target["bf16_mixed"], target["float32"])  # the body did run in bf16


def test_vllm_refuses_the_mixed_dtype_before_loading() -> None:
    with pytest.raises(
        ValueError, match=r"bf16_mixed is a transformers-backend mode.*teachers.t.backend=transformers"
    ):
        open_backend(
            "vllm",
            teacher="t",
            model_path="nowhere",
            settings=ExtractSettings(),
            dtype="bf16_mixed",
            vocab_size=10,
            space_mask=np.zeros(10, bool),
        )
