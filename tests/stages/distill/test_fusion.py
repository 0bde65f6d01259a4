"""Analytic tests of the sparse fusion loss against hand-built targets and a dense reference."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from stages.distill.fusion import fuse_position_weights, fusion_cross_entropy
from stages.distill.losses import clm_loss, position_logsumexp


def random_sparse_batch(
    batch: int, teachers: int, length: int, vocab: int, top_k: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Teacher rows as the loader delivers them: distinct ids per row (duplicates merged),
    supports overlapping across teachers (ids drawn from a narrow range), some padding
    entries (id 0, prob 0), absent positions and masked positions."""
    gen = torch.Generator().manual_seed(seed)
    narrow = min(vocab, 2 * top_k)  # overlap across teachers is likely in a narrow id range
    ids = torch.stack(
        [torch.randperm(narrow, generator=gen)[:top_k] for _ in range(batch * teachers * length)]
    ).view(batch, teachers, length, top_k)
    probs = torch.rand(batch, teachers, length, top_k, generator=gen)
    padding = torch.rand(batch, teachers, length, top_k, generator=gen) < 0.2
    padding[..., 0] = False  # keep at least one real entry per row
    probs = probs.masked_fill(padding, 0.0)
    ids = ids.masked_fill(padding, 0)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    available = torch.rand(batch, teachers, length, generator=gen) < 0.7
    available[0, :, 1] = False  # one position with no teacher at all
    loss_mask = torch.rand(batch, length, generator=gen) < 0.9
    loss_mask[:, -1] = False
    return {
        "logits": torch.randn(batch, length, vocab, generator=gen) * 3,
        "support_ids": ids,
        "support_probs": probs,
        "available": available,
        "loss_mask": loss_mask,
        "weights": torch.softmax(torch.randn(batch, teachers, generator=gen), dim=-1),
    }


def dense_fusion_reference(
    logits: torch.Tensor,
    support_ids: torch.Tensor,
    support_probs: torch.Tensor,
    weights: torch.Tensor,
    available: torch.Tensor,
    loss_mask: torch.Tensor,
) -> torch.Tensor:
    """The textbook computation in fp64: dense [B, K, T, V] targets, mixed, CE, mean."""
    batch, teachers, length, _ = support_ids.shape
    vocab = logits.shape[-1]
    dense = torch.zeros(batch, teachers, length, vocab, dtype=torch.float64)
    dense.scatter_add_(-1, support_ids, support_probs.double())
    total, count = torch.zeros((), dtype=torch.float64), 0
    log_softmax = torch.log_softmax(logits.double(), dim=-1)
    for b in range(batch):
        for j in range(length):
            mass = sum(weights[b, k].double() * available[b, k, j] for k in range(teachers))
            if not loss_mask[b, j] or mass == 0:
                continue
            target = sum(
                weights[b, k].double() * available[b, k, j] / mass * dense[b, k, j] for k in range(teachers)
            )
            total = total - (target * log_softmax[b, j]).sum()
            count += 1
    return total / max(count, 1)


def sparse_loss(batch: dict[str, torch.Tensor], weights: torch.Tensor | None = None):
    """The fusion loss of a `random_sparse_batch` (with its `rest_mass` when it has one)."""
    position_weights = fuse_position_weights(
        batch["weights"] if weights is None else weights, batch["available"]
    )
    return fusion_cross_entropy(
        batch["logits"],
        batch["support_ids"],
        batch["support_probs"],
        position_weights,
        batch["loss_mask"],
        rest_mass=batch.get("rest_mass"),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_matches_dense_reference_loss_and_grads(seed: int) -> None:
    batch = random_sparse_batch(batch=2, teachers=3, length=7, vocab=23, top_k=5, seed=seed)
    batch["logits"] = batch["logits"].double().requires_grad_()
    weights = batch["weights"].double().requires_grad_()

    sparse = sparse_loss(batch, weights).loss
    sparse_grads = torch.autograd.grad(sparse, [batch["logits"], weights])
    dense = dense_fusion_reference(**{k: v for k, v in batch.items() if k != "weights"}, weights=weights)
    dense_grads = torch.autograd.grad(dense, [batch["logits"], weights])

    torch.testing.assert_close(sparse, dense, atol=1e-6, rtol=0)
    for got, expected in zip(sparse_grads, dense_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_fp32_logits_match_dense_reference() -> None:
    batch = random_sparse_batch(batch=2, teachers=4, length=9, vocab=31, top_k=6, seed=3)
    sparse = sparse_loss(batch).loss
    dense = dense_fusion_reference(
        **{k: v for k, v in batch.items() if k != "weights"}, weights=batch["weights"]
    )
    assert sparse.dtype == torch.float32
    torch.testing.assert_close(sparse.double(), dense, atol=1e-5, rtol=0)


def test_one_hot_weights_fuse_to_that_teacher_exactly() -> None:
    batch = random_sparse_batch(batch=2, teachers=3, length=6, vocab=17, top_k=4, seed=4)
    batch["available"][:] = True
    batch["weights"] = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    # CE against teacher 1 alone, by hand: -Σ_v p(v) log softmax(z)(v).
    log_softmax = torch.log_softmax(batch["logits"], dim=-1)
    picked = log_softmax.gather(-1, batch["support_ids"][:, 1])
    per_position = -(batch["support_probs"][:, 1] * picked).sum(-1)
    mask = batch["loss_mask"]
    expected = (per_position * mask).sum() / mask.sum()
    torch.testing.assert_close(sparse_loss(batch).loss, expected)


def test_identical_teachers_fuse_to_themselves() -> None:
    one = random_sparse_batch(batch=1, teachers=1, length=5, vocab=13, top_k=3, seed=5)
    one["available"][:] = True
    three = dict(one)
    for key in ("support_ids", "support_probs", "available"):
        three[key] = one[key].expand(-1, 3, *one[key].shape[2:]).contiguous()
    three["weights"] = torch.tensor([[0.2, 0.5, 0.3]])
    single, fused = sparse_loss(one), sparse_loss(three)
    torch.testing.assert_close(fused.loss, single.loss)
    torch.testing.assert_close(fused.target_entropy, single.target_entropy)


def test_all_absent_batch_gives_zero_loss_and_finite_grads() -> None:
    batch = random_sparse_batch(batch=2, teachers=3, length=4, vocab=11, top_k=3)
    batch["available"][:] = False
    batch["logits"].requires_grad_()
    weights = batch["weights"].clone().requires_grad_()
    result = sparse_loss(batch, weights)
    result.loss.backward()
    assert result.loss.item() == 0.0 and result.fused_positions.item() == 0
    assert result.target_entropy.item() == 0.0
    for grad in (batch["logits"].grad, weights.grad):
        assert grad is not None and torch.isfinite(grad).all() and (grad == 0).all()


def test_position_weights_renormalise_over_available_teachers() -> None:
    weights = torch.tensor([[0.5, 0.3, 0.2]])
    available = torch.tensor([[[1, 1, 0], [1, 0, 0], [0, 1, 0]]], dtype=torch.bool)
    # position 0: teachers 0, 1; position 1: teachers 0, 2; position 2: none.
    expected = torch.tensor([[[0.5 / 0.8, 0.5 / 0.7, 0.0], [0.3 / 0.8, 0.0, 0.0], [0.0, 0.2 / 0.7, 0.0]]])
    torch.testing.assert_close(fuse_position_weights(weights, available), expected)


def test_fused_positions_and_entropy_by_hand() -> None:
    # One position, two teachers agreeing on token 2 with weights 0.5 / 0.5:
    # teacher 0: {2: 1.0}; teacher 1: {2: 0.5, 3: 0.5} -> fused {2: 0.75, 3: 0.25}.
    logits = torch.zeros(1, 2, 5)
    ids = torch.tensor([[[[2, 0]], [[2, 3]]]]).expand(1, 2, 2, 2).contiguous()
    probs = torch.tensor([[[[1.0, 0.0]], [[0.5, 0.5]]]]).expand(1, 2, 2, 2).contiguous()
    available = torch.ones(1, 2, 2, dtype=torch.bool)
    loss_mask = torch.tensor([[True, False]])
    result = fusion_cross_entropy(
        logits, ids, probs, fuse_position_weights(torch.tensor([[0.5, 0.5]]), available), loss_mask
    )
    assert result.fused_positions.item() == 1
    torch.testing.assert_close(result.loss, torch.tensor(math.log(5.0)))
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    torch.testing.assert_close(result.target_entropy, torch.tensor(entropy))


class _LargestOutput(TorchDispatchMode):
    """Records the element count and dtype of the largest tensor any aten op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest: dict[torch.dtype, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.largest[tensor.dtype] = max(self.largest.get(tensor.dtype, 0), tensor.numel())
        return out


def test_design_scale_never_allocates_beyond_one_logits_tensor() -> None:
    """T = 2048, V = 32000, K = 5, k = 10 (docs/design.md §12): no [B, K, T, V] or [B, T, V]-per-
    teacher tensor, forward and backward, fusion and CLM together. On the meta device every op
    runs with real shapes and no data, so the check costs milliseconds, not gigabytes."""
    b, k_teachers, t, v, k = 1, 5, 2048, 32000, 10
    meta = {"device": "meta"}
    logits = torch.empty(b, t, v, **meta).requires_grad_()
    ids = torch.empty(b, k_teachers, t, k, dtype=torch.long, **meta)
    probs = torch.empty(b, k_teachers, t, k, **meta)
    available = torch.ones(b, k_teachers, t, dtype=torch.bool, **meta)
    loss_mask = torch.ones(b, t, dtype=torch.bool, **meta)
    input_ids = torch.empty(b, t, dtype=torch.long, **meta)
    weights = torch.empty(b, k_teachers, **meta).requires_grad_()

    with _LargestOutput() as mode:
        lse = position_logsumexp(logits)
        fused = fusion_cross_entropy(
            logits, ids, probs, fuse_position_weights(weights, available), loss_mask, lse=lse
        )
        (clm_loss(logits, input_ids, loss_mask, lse=lse) + fused.loss).backward()
    assert logits.grad is not None and weights.grad is not None
    assert max(mode.largest.values()) <= b * t * v
    # Only the logits' own gradient is that large; the teacher side stays at K·T·k scale.
    assert mode.largest[torch.long] <= b * k_teachers * t * k


def test_bf16_logits_are_never_upcast_whole() -> None:
    """With bf16 logits no fp32 tensor of [B, T, V] size exists: the logsumexp upcasts chunks."""
    b, t, v = 2, 64, 1000
    logits = torch.randn(b, t, v).bfloat16().requires_grad_()
    batch = random_sparse_batch(batch=b, teachers=2, length=t, vocab=v, top_k=4)
    weights = batch["weights"]
    with _LargestOutput() as mode:
        lse = position_logsumexp(logits, chunk_elements=8 * v)
        result = fusion_cross_entropy(
            logits,
            batch["support_ids"],
            batch["support_probs"],
            fuse_position_weights(weights, batch["available"]),
            batch["loss_mask"],
            lse=lse,
        )
        result.loss.backward()
    assert result.loss.dtype == torch.float32
    assert mode.largest[torch.float32] <= 8 * v
    reference = fusion_cross_entropy(
        logits.detach().float(),
        batch["support_ids"],
        batch["support_probs"],
        fuse_position_weights(weights, batch["available"]),
        batch["loss_mask"],
    )
    torch.testing.assert_close(result.loss, reference.loss)


def test_teacher_rows_of_another_length_are_rejected() -> None:
    batch = random_sparse_batch(batch=1, teachers=2, length=4, vocab=9, top_k=3)
    with pytest.raises(ValueError, match="logits' B and T"):
        fusion_cross_entropy(
            batch["logits"][:, :3],
            batch["support_ids"],
            batch["support_probs"],
            fuse_position_weights(batch["weights"], batch["available"]),
            batch["loss_mask"],
        )


# -- targets with a rest bucket (residual top-k, sampled) ------------------------------------------


def with_rest(batch: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """The batch's targets as the residual kind delivers them: the support keeps a share of the
    mass (0.3–0.95) and the rest bucket holds what is left."""
    gen = torch.Generator().manual_seed(seed)
    kept = 0.3 + 0.65 * torch.rand(batch["support_probs"].shape[:3], generator=gen)
    return {**batch, "support_probs": batch["support_probs"] * kept[..., None], "rest_mass": 1.0 - kept}


rest_loss = sparse_loss


def dense_rest_reference(batch: dict[str, torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """fp64, position by position: Σ_k w' [−Σ_S p log q − r log(1 − Σ_S q)], mean over fused rows."""
    q = torch.softmax(batch["logits"].double(), dim=-1)
    ids, probs, rest = batch["support_ids"], batch["support_probs"].double(), batch["rest_mass"].double()
    b_size, k_size, length, _ = ids.shape
    total, count = torch.zeros((), dtype=torch.float64), 0
    for b in range(b_size):
        for j in range(length):
            present = [k for k in range(k_size) if batch["available"][b, k, j]]
            mass = sum(weights[b, k].double() for k in present)
            if not batch["loss_mask"][b, j] or not present or mass == 0:
                continue
            for k in present:
                real = probs[b, k, j] > 0
                support_q = q[b, j, ids[b, k, j]]
                ce = -(probs[b, k, j] * support_q.log()).sum() - rest[b, k, j] * torch.log1p(
                    -(support_q * real).sum()
                )
                total = total + weights[b, k].double() / mass * ce
            count += 1
    return total / max(count, 1)


def test_residual_cross_entropy_by_hand() -> None:
    # One support token v of mass 0.6, the other 0.4 in the rest: −0.6 log q(v) − 0.4 log(1 − q(v)).
    logits = torch.tensor([[[1.0, 2.0, 0.5, -1.0]]], dtype=torch.float64)
    q = torch.softmax(logits[0, 0], dim=-1)
    result = fusion_cross_entropy(
        logits,
        support_ids=torch.tensor([[[[1, 0]]]]),
        support_probs=torch.tensor([[[[0.6, 0.0]]]], dtype=torch.float64),
        position_weights=torch.ones(1, 1, 1, dtype=torch.float64),
        loss_mask=torch.tensor([[True]]),
        rest_mass=torch.tensor([[[0.4]]], dtype=torch.float64),
    )
    expected = -0.6 * math.log(q[1]) - 0.4 * math.log(1 - q[1])
    assert result.loss.item() == pytest.approx(expected, abs=1e-12)
    # The entropy of the target counts the rest as one outcome: −0.6 log 0.6 − 0.4 log 0.4.
    assert result.target_entropy.item() == pytest.approx(-0.6 * math.log(0.6) - 0.4 * math.log(0.4))


@pytest.mark.parametrize("seed", [0, 1])
def test_rest_bucket_matches_dense_reference_loss_and_grads(seed: int) -> None:
    batch = with_rest(random_sparse_batch(batch=2, teachers=3, length=7, vocab=23, top_k=5, seed=seed), seed)
    batch["logits"] = batch["logits"].double().requires_grad_()
    weights = batch["weights"].double().requires_grad_()
    sparse = rest_loss(batch, weights).loss
    dense = dense_rest_reference(batch, weights)
    torch.testing.assert_close(sparse, dense, atol=1e-9, rtol=0)
    for got, expected in zip(
        torch.autograd.grad(sparse, [batch["logits"], weights]),
        torch.autograd.grad(dense, [batch["logits"], weights]),
        strict=True,
    ):
        torch.testing.assert_close(got, expected, atol=1e-9, rtol=0)


def test_rest_gradient_on_the_support_is_the_full_kd_gradient() -> None:
    # d CE / d z(v) = q(v) − p(v) on support tokens, whatever the rest: full KD's gradient there.
    batch = with_rest(random_sparse_batch(batch=1, teachers=1, length=3, vocab=11, top_k=3, seed=7))
    batch["available"][:] = True
    batch["loss_mask"][:] = True
    batch["loss_mask"][:, -1] = False
    batch["logits"] = batch["logits"].double().requires_grad_()
    (grad,) = torch.autograd.grad(rest_loss(batch).loss, batch["logits"])
    q = torch.softmax(batch["logits"].detach(), dim=-1)
    rows = int(batch["loss_mask"].sum())
    for j in range(rows):
        for slot in range(3):
            p = batch["support_probs"][0, 0, j, slot].item()
            if p > 0:
                v = batch["support_ids"][0, 0, j, slot]
                assert grad[0, j, v].item() * rows == pytest.approx(q[0, j, v].item() - p, abs=1e-9)


def test_zero_rest_is_the_renormalised_loss_exactly() -> None:
    batch = random_sparse_batch(batch=2, teachers=3, length=6, vocab=17, top_k=4, seed=8)
    zero_rest = {**batch, "rest_mass": torch.zeros(batch["support_probs"].shape[:3])}
    assert torch.equal(rest_loss(zero_rest).loss, sparse_loss(batch).loss)


def test_rest_identities_one_hot_identical_and_all_absent() -> None:
    batch = with_rest(random_sparse_batch(batch=2, teachers=3, length=6, vocab=17, top_k=4, seed=9))
    batch["available"][:] = True
    one_hot = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    alone = {
        key: (value[:, 1:2] if key in ("support_ids", "support_probs", "available", "rest_mass") else value)
        for key, value in batch.items()
    }
    torch.testing.assert_close(rest_loss(batch, one_hot).loss, rest_loss(alone, torch.ones(2, 1)).loss)

    three = dict(alone)
    for key in ("support_ids", "support_probs", "available", "rest_mass"):
        three[key] = alone[key].expand(-1, 3, *alone[key].shape[2:]).contiguous()
    mixed = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    torch.testing.assert_close(rest_loss(three, mixed).loss, rest_loss(alone, torch.ones(2, 1)).loss)

    batch["available"][:] = False
    assert rest_loss(batch).loss.item() == 0.0
