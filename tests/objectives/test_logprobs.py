"""Tests for dpo_plugin.objectives.logprobs: agreement with explicit float64 formulas and numerical safety."""

import pytest
import torch

from dpo_plugin.objectives.logprobs import completion_lengths, log_probs_from_logits, masked_sum, token_kl, token_logps


def manual_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log(exp(z) / Σ exp(z)) in float64, written out without log_softmax."""
    z = logits.double()
    return torch.log(torch.exp(z) / torch.exp(z).sum(-1, keepdim=True))


def random_logits(*shape: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    """Small reproducible float32 logits."""
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def kl_of_logits(ref_logits: torch.Tensor, policy_logits: torch.Tensor) -> torch.Tensor:
    return token_kl(log_probs_from_logits(ref_logits), log_probs_from_logits(policy_logits))


def test_token_logps_matches_manual_computation():
    logits = random_logits(2, 3, 5)
    labels = torch.tensor([[0, 4, 2], [3, 1, 1]])
    expected = manual_log_softmax(logits).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    result = token_logps(log_probs_from_logits(logits), labels)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result.double(), expected, rtol=0, atol=1e-5)


def test_token_logps_is_zero_at_ignored_labels():
    labels = torch.tensor([[-100, 4, -100]])
    result = token_logps(log_probs_from_logits(random_logits(1, 3, 5)), labels)
    assert result[0, 0].item() == 0.0 and result[0, 2].item() == 0.0
    assert result[0, 1].item() < 0.0


def test_token_logps_accepts_bf16_logits():
    log_probs = log_probs_from_logits(random_logits(2, 3, 5).bfloat16())
    result = token_logps(log_probs, torch.tensor([[0, 4, 2], [3, 1, -100]]))
    assert result.dtype == torch.float32
    assert torch.isfinite(result).all()


def test_token_kl_matches_float64_brute_force():
    ref, policy = random_logits(2, 3, 7, seed=1), random_logits(2, 3, 7, seed=2)
    log_p, log_q = manual_log_softmax(ref), manual_log_softmax(policy)
    expected = (log_p.exp() * (log_p - log_q)).sum(-1)
    result = kl_of_logits(ref, policy)
    assert result.shape == (2, 3) and result.dtype == torch.float32
    torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5)


def test_token_kl_is_zero_for_identical_logits():
    logits = random_logits(2, 3, 7)
    assert torch.equal(kl_of_logits(logits, logits.clone()), torch.zeros(2, 3))


def test_token_kl_is_nonnegative():
    assert (kl_of_logits(random_logits(4, 5, 11, seed=3), random_logits(4, 5, 11, seed=4)) >= 0).all()


def test_token_kl_is_finite_for_extreme_logits():
    ref = torch.tensor([[1e4, 0.0, -1e4]])
    policy = torch.tensor([[-1e4, 1e4, 0.0]])
    naive = (ref.softmax(-1) * (ref.softmax(-1).log() - policy.softmax(-1).log())).sum(-1)
    assert not torch.isfinite(naive).all()
    # p_ref = (1, 0, 0) and log p_θ(v_0) = -2e4, so KL = 0 - (-2e4) = 2e4
    assert kl_of_logits(ref, policy).item() == pytest.approx(2e4)


def test_token_kl_gradient_reaches_policy_logits():
    policy = random_logits(2, 3, 7, seed=5).requires_grad_()
    kl_of_logits(random_logits(2, 3, 7, seed=6), policy).sum().backward()
    assert policy.grad is not None and policy.grad.abs().sum().item() > 0.0


def test_masked_sum_and_lengths_of_all_masked_row():
    values = torch.tensor([[0.5, -1.0, 2.0], [0.5, -1.0, 2.0]])
    mask = torch.tensor([[0, 0, 0], [1, 0, 1]])
    assert masked_sum(values, mask).tolist() == [0.0, 2.5]
    assert completion_lengths(mask).tolist() == [1.0, 2.0]
