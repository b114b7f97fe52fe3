"""The chunked head against a direct full-logit computation: values and gradients, every block size, the models'
logit transforms, a reference for the KL, bf16 autocast, and no positions at all."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import Gemma3TextConfig, GraniteConfig, LlamaConfig

from dpo_plugin.objectives.chunked_head import Head, LogitTransform, auto_block_size, chunked_head

N, D, V, D_REF = 23, 12, 97, 10
TRANSFORMS = [LogitTransform(), LogitTransform(scale=0.7), LogitTransform(softcap=4.0), LogitTransform(1.3, 6.0)]


def direct(hidden, labels, head, ref_hidden=None, ref_head=None):
    """Everything `chunked_head` returns, from the whole (N, V) logits."""
    z = head.transform(F.linear(hidden, head.weight, head.bias).float())
    log_probs = torch.log_softmax(z, -1)
    logps = log_probs.gather(-1, labels[:, None]).squeeze(-1)
    kl = ref_logps = torch.zeros_like(logps)
    if ref_head is not None:
        ref_log_probs = torch.log_softmax(ref_head.transform(F.linear(ref_hidden, ref_head.weight, ref_head.bias)), -1)
        ref_logps = ref_log_probs.gather(-1, labels[:, None]).squeeze(-1)
        kl = (ref_log_probs.exp() * (ref_log_probs - log_probs)).sum(-1)
    return logps, kl, ref_logps, -(log_probs.exp() * log_probs).sum(-1), z.mean(-1), z.argmax(-1) == labels


def inputs(seed=0, n=N):
    torch.manual_seed(seed)
    hidden = torch.randn(n, D, requires_grad=True)
    weight, bias = torch.randn(V, D, requires_grad=True), torch.randn(V, requires_grad=True)
    ref = torch.randn(n, D_REF), Head(torch.randn(V, D_REF), torch.randn(V), LogitTransform())
    return hidden, torch.randint(0, V, (n,)), weight, bias, ref


def relative(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


@pytest.mark.parametrize("block_size", [1, 7, N + 5], ids=["block-1", "block-7", "block-past-N"])
@pytest.mark.parametrize("transform", TRANSFORMS, ids=["plain", "scaled", "softcapped", "scaled-softcapped"])
@pytest.mark.parametrize("with_reference", [False, True], ids=["policy-only", "with-kl"])
def test_values_and_gradients_equal_the_full_computation(block_size, transform, with_reference):
    hidden, labels, weight, bias, (ref_hidden, ref_head) = inputs()
    head = Head(weight, bias, transform)
    reference = (ref_hidden, ref_head) if with_reference else (None, None)
    ours, theirs = chunked_head(hidden, labels, head, block_size, *reference), direct(hidden, labels, head, *reference)
    for name, a, b in zip(ours._fields, ours, theirs, strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), name
    g_logps, g_kl = torch.randn(N), torch.randn(N)

    def grads(result):
        loss = (result[0] * g_logps).sum() + ((result[1] * g_kl).sum() if with_reference else 0.0)
        return torch.autograd.grad(loss, (hidden, weight, bias))

    for name, a, b in zip(("hidden", "weight", "bias"), grads(ours), grads(theirs), strict=True):
        assert relative(a, b) <= 1e-5, name


def test_the_reference_gets_no_gradient():
    hidden, labels, weight, bias, (ref_hidden, ref_head) = inputs()
    ref_hidden.requires_grad_(True)
    result = chunked_head(hidden, labels, Head(weight, bias, LogitTransform()), 5, ref_hidden, ref_head)
    result.kl.sum().backward()
    assert ref_hidden.grad is None and hidden.grad is not None


def test_bf16_autocast_matches_the_full_computation_to_bf16_precision():
    """Under autocast both project in bf16; the chunked head sums the weight gradient over blocks in float32 where
    one bf16 matmul rounds it once, so gradients agree to about 1e-2 relative, values exactly."""
    hidden, labels, weight, _, _ = inputs()
    head = Head(weight, None, LogitTransform())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = chunked_head(hidden, labels, head, 8), direct(hidden, labels, head)
    assert torch.allclose(ours.logps, theirs[0], atol=1e-4)
    g = torch.randn(N)
    for a, b in zip(
        torch.autograd.grad((ours.logps * g).sum(), (hidden, weight)),
        torch.autograd.grad((theirs[0] * g).sum(), (hidden, weight)),
        strict=True,
    ):
        assert relative(a, b) <= 2e-2


class WeightCasts(TorchDispatchMode):
    """Counts the copies made of tensors of one shape (autocast's casts are `aten._to_copy`)."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.count = tuple(shape), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and tuple(args[0].shape) == self.shape:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("shared", [True, False], ids=["reference shares the head", "reference head of its own"])
def test_under_autocast_a_frozen_head_is_cast_once_per_pass_not_once_per_block(shared):
    """A LoRA policy's head needs no gradient, so autocast would cast it to bf16 again at every block (and again for
    the reference and in backward); the head casts each weight once per forward and once per backward."""
    hidden, labels, weight, _, _ = inputs()
    weight.requires_grad_(False)
    ref_weight = weight if shared else weight.clone()
    ref_hidden = torch.randn_like(hidden).detach()
    with WeightCasts(weight.shape) as casts:
        head, ref_head = Head(weight, None, LogitTransform()), Head(ref_weight, None, LogitTransform())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            result = chunked_head(hidden, labels, head, 2, ref_hidden, ref_head)
        (result.logps.sum() + result.kl.sum()).backward()
    assert casts.count == (2 if shared else 4)  # block by block: 12 blocks of 2 positions, 36 or 48 casts


def test_no_positions_give_empty_results_and_zero_gradients():
    hidden, labels, weight, bias, _ = inputs(n=0)
    result = chunked_head(hidden, labels, Head(weight, bias, LogitTransform()), 4)
    assert all(value.shape == (0,) for value in result)
    (result.logps.sum() + weight.sum() * 0).backward()
    assert hidden.grad.shape == (0, D) and torch.count_nonzero(weight.grad) == 0


def test_block_sizes_follow_the_memory_budget():
    assert [auto_block_size(v) for v in (49_152, 131_072, 262_144)] == [256, 128, 64]
    assert auto_block_size(100) == 4096 and auto_block_size(10**9) == 16


def test_logit_transforms_are_read_from_model_configs():
    assert LogitTransform.of(LlamaConfig()) == LogitTransform()
    assert LogitTransform.of(Gemma3TextConfig(final_logit_softcapping=30.0)) == LogitTransform(1.0, 30.0)
    assert LogitTransform.of(GraniteConfig(logits_scaling=8.0)) == LogitTransform(0.125, None)
