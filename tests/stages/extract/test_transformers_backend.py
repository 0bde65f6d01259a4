"""The batched transformers backend against a naive one-sample-at-a-time reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from stages.extract.backends import transformers_backend
from stages.extract.backends.transformers_backend import TransformersBackend, length_sorted_batches
from tests.stages.extract.conftest import TOP_K


def naive_rows(
    model: torch.nn.Module, ids: np.ndarray, space_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full logits of one unpadded sequence → log-softmax → top-k, the target's logprob and
    log σ = log Σ exp(logprobs) over the space mask, in float64."""
    with torch.inference_mode():
        logits = model(input_ids=torch.from_numpy(ids.astype(np.int64))[None]).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    values, indices = torch.topk(logprobs, TOP_K, dim=-1)
    target = logprobs.gather(-1, torch.from_numpy(ids[1:].astype(np.int64))[:, None])[:, 0]
    space = np.log(np.exp(logprobs.double().numpy())[:, space_mask].sum(axis=1))
    return indices.numpy(), values.numpy(), target.numpy(), space


def test_batched_rows_match_a_naive_reference(
    tiny_teacher: Path, transformers_backend, tokenized, space_mask
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher, dtype=torch.float32).eval()
    assert transformers_backend._split, "body + lm_head should reproduce the Llama forward"
    rows = transformers_backend.topk_logprobs([t.ids for t in tokenized])
    assert len(rows) == len(tokenized)
    for tok, got in zip(tokenized, rows, strict=True):
        assert got.n_rows == max(len(tok.ids) - 1, 0) == len(got.space_logprobs)
        if got.n_rows == 0:
            continue
        ids, logprobs, target, space = naive_rows(model, tok.ids, space_mask)
        np.testing.assert_array_equal(got.topk_ids, ids)
        np.testing.assert_allclose(got.topk_logprobs, logprobs, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got.target_logprobs, target, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got.space_logprobs, space, atol=1e-5, rtol=0)
        assert (
            got.topk_ids.dtype == np.int32
            and got.topk_logprobs.dtype == got.space_logprobs.dtype == np.float32
        )
        assert (got.space_logprobs <= 0).all()


def test_space_logprobs_only_with_a_mask_and_fitted_to_the_head(tiny_teacher: Path, tokenized) -> None:
    """No mask: no σ. A mask of every id: σ = 1. A mask shorter than the head (a tokenizer with
    fewer ids than the model's rows) is padded with ids that are not word starts: [False, True]
    makes σ the probability of id 1."""
    seqs = [t.ids for t in tokenized[1:3]]
    bare = TransformersBackend(tiny_teacher, top_k=TOP_K)
    assert all(r.space_logprobs is None for r in bare.topk_logprobs(seqs))
    everything = TransformersBackend(tiny_teacher, top_k=TOP_K, space_mask=np.ones(49152, bool))
    for rows in everything.topk_logprobs(seqs):
        np.testing.assert_allclose(rows.space_logprobs, 0.0, atol=1e-5)
    only_one = TransformersBackend(tiny_teacher, top_k=TOP_K, space_mask=np.array([False, True]))
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher, dtype=torch.float32).eval()
    id_one = np.zeros(49152, bool)
    id_one[1] = True
    for seq, rows in zip(seqs, only_one.topk_logprobs(seqs), strict=True):
        np.testing.assert_allclose(rows.space_logprobs, naive_rows(model, seq, id_one)[3], atol=1e-5, rtol=0)
    empty = only_one.topk_logprobs([np.array([5], np.int32)])[0]
    assert empty.n_rows == 0 and empty.space_logprobs.shape == (0,)


@pytest.mark.gpu
def test_cuda_rows_match_the_cpu_rows(tiny_teacher: Path, tokenized) -> None:
    """The same fp32 teacher on the GPU and on the CPU: the same top-k sets (near-ties aside) and
    logprobs within 1e-3 nat (other kernels, other summation order)."""
    rows = {}
    for device in ("cpu", "cuda"):
        backend = TransformersBackend(tiny_teacher, top_k=TOP_K, batch_tokens=600, device=device)
        try:
            rows[device] = backend.topk_logprobs([t.ids for t in tokenized])
        finally:
            backend.close()
    same = positions = 0
    for cpu, cuda in zip(rows["cpu"], rows["cuda"], strict=True):
        assert cuda.n_rows == cpu.n_rows
        np.testing.assert_allclose(cuda.target_logprobs, cpu.target_logprobs, atol=1e-3, rtol=0)
        for r in range(cpu.n_rows):
            positions += 1
            same += set(cuda.topk_ids[r]) == set(cpu.topk_ids[r])
    assert positions > 300 and same / positions >= 0.995


def test_top_k_above_the_vocabulary_is_refused_before_loading(tiny_teacher: Path, monkeypatch) -> None:
    def no_load(*args, **kwargs):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(transformers_backend.AutoModelForCausalLM, "from_pretrained", no_load)
    with pytest.raises(
        ValueError, match=r"top_k must be between 1 and the transformers backend's maximum \(49152\)"
    ):
        TransformersBackend(tiny_teacher, top_k=49153)
    with pytest.raises(ValueError, match="top_k must be between 1"):
        TransformersBackend(tiny_teacher, top_k=0)
    with pytest.raises(ValueError, match=r"extract.max_tokens must be at most 1024 .* got 1025"):
        TransformersBackend(tiny_teacher, top_k=TOP_K, max_tokens=1025)


def test_missing_model_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model folder .*nope does not exist: run `make setup`"):
        TransformersBackend(tmp_path / "nope", top_k=TOP_K)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="has no weight files"):
        TransformersBackend(tmp_path / "empty", top_k=TOP_K)


def test_batches_respect_the_padded_token_budget() -> None:
    lengths = [5, 300, 40, 41, 299, 1000, 7]
    batches = length_sorted_batches(lengths, 600)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * longest <= 600
    assert batches[0] == [5]  # longest first, alone above the budget
