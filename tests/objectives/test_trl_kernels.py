"""The chunked head against TRL's own chunked kernels (`trl.kernels`, run here as their torch tiles): the same
per-position log π(y_t), entropy, mean logit and argmax flag as `ChunkedLogProbFunction`, and the same
KL(π_ref ‖ π_θ) as `ChunkedDivergenceFunction` with the reference as teacher (beta 0, the forward KL), values and
gradients, with and without Gemma's soft-capping and a logit scale."""

import pytest
import torch
from trl.kernels.chunked_divergence import ChunkedDivergenceFunction
from trl.kernels.chunked_logprob import ChunkedLogProbFunction

from dpo_plugin.objectives.chunked_head import Head, LogitTransform, chunked_head

TRANSFORMS = {"plain": LogitTransform(), "scaled, soft-capped": LogitTransform(scale=0.5, softcap=3.0)}


def tensors(seed: int, positions: int = 37, width: int = 16, vocab: int = 300):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(positions, width, generator=generator, requires_grad=True)
    weight = (torch.randn(vocab, width, generator=generator) / 2).requires_grad_()
    bias = (torch.randn(vocab, generator=generator) / 4).requires_grad_()
    labels = torch.randint(0, vocab, (positions,), generator=generator)
    return hidden, weight, bias, labels


def gradients(value: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    upstream = torch.linspace(-1.0, 1.0, value.numel()).reshape(value.shape)  # a gradient that weighs positions apart
    return torch.autograd.grad((value * upstream).sum(), inputs)


@pytest.mark.parametrize("transform", list(TRANSFORMS.values()), ids=list(TRANSFORMS))
def test_log_probs_and_statistics_equal_trls_chunked_log_prob_kernel(transform):
    hidden, weight, bias, labels = tensors(0)
    ours = chunked_head(hidden, labels, Head(weight, bias, transform), block_size=8)
    logps, entropy, _, mean_logits, is_top1 = ChunkedLogProbFunction.apply(
        hidden, weight, bias, labels, 1.0, 64, transform.softcap, transform.scale
    )
    torch.testing.assert_close(ours.logps, logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.entropy, entropy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.mean_logits, mean_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours.is_top1.bool(), is_top1)
    for mine, theirs in zip(
        gradients(ours.logps, hidden, weight, bias), gradients(logps, hidden, weight, bias), strict=True
    ):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("transform", list(TRANSFORMS.values()), ids=list(TRANSFORMS))
def test_token_kl_equals_trls_chunked_forward_kl_with_the_reference_as_teacher(transform):
    hidden, weight, bias, labels = tensors(1)
    ref_hidden, ref_weight, ref_bias, _ = tensors(2)
    ours = chunked_head(
        hidden,
        labels,
        Head(weight, bias, transform),
        block_size=8,
        ref_hidden=ref_hidden,
        ref_head=Head(ref_weight, ref_bias, transform),
    )
    kl, _ = ChunkedDivergenceFunction.apply(
        hidden,
        weight,
        bias,
        ref_hidden,
        ref_weight,
        ref_bias,
        0.0,
        1.0,
        transform.scale,
        transform.softcap,
        transform.scale,
        transform.softcap,
    )
    torch.testing.assert_close(ours.kl, kl, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(gradients(ours.kl, hidden, weight, bias), gradients(kl, hidden, weight, bias), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
