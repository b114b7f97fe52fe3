"""Tests for dpo_plugin.objectives.losses: hand-computed values, gradient directions and numerical safety."""

import pytest
import torch

from dpo_plugin.objectives.logprobs import completion_lengths, masked_sum
from dpo_plugin.objectives.losses import dpo_loss, ipo_loss, tdpo_loss


def pair(chosen: list[float], rejected: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Leaf tensors for chosen and rejected log-ratios that record gradients."""
    return torch.tensor(chosen, requires_grad=True), torch.tensor(rejected, requires_grad=True)


# Every objective as a function of (chosen, rejected) log-ratios, with fixed sequence KLs and lengths.
OBJECTIVES = {
    "dpo": lambda c, r: dpo_loss(c, r, beta=0.1),
    "cdpo": lambda c, r: dpo_loss(c, r, beta=0.1, label_smoothing=0.1),
    "ipo_summed": lambda c, r: ipo_loss(c, r, beta=0.1),
    "ipo_averaged": lambda c, r: ipo_loss(
        c, r, beta=0.1, chosen_lengths=torch.full_like(c, 3.0), rejected_lengths=torch.full_like(r, 2.0)
    ),
    "tdpo1": lambda c, r: tdpo_loss(c, r, torch.full_like(c, 0.3), torch.full_like(r, 1.3), beta=0.1),
    "tdpo2": lambda c, r: tdpo_loss(c, r, torch.full_like(c, 0.3), torch.full_like(r, 1.3), beta=0.1, alpha=0.5),
}


def test_dpo_hand_computed_values_and_rewards():
    chosen, rejected = pair([1.5, -1.0], [-0.5, 1.0])
    out = dpo_loss(chosen, rejected, beta=0.1)
    # h = 2:  -log σ(0.1·2)  = log(1 + e^-0.2) = 0.5981388693815918
    # h = -2: -log σ(0.1·-2) = log(1 + e^0.2)  = 0.7981388693815918
    assert out.losses.tolist() == pytest.approx([0.5981388693815918, 0.7981388693815918], rel=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.15, -0.1])  # 0.1 · [1.5, -1.0]
    assert out.rejected_rewards.tolist() == pytest.approx([-0.05, 0.1])  # 0.1 · [-0.5, 1.0]
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_dpo_hand_computed_value_large_beta():
    # β = 0.5, h = -2: -log σ(-1) = log(1 + e) = 1.3132616875182228
    out = dpo_loss(torch.tensor([-1.0]), torch.tensor([1.0]), beta=0.5)
    assert out.losses.item() == pytest.approx(1.3132616875182228, rel=1e-6)


def test_cdpo_hand_computed_value():
    # β = 0.1, h = 2, ε = 0.1: 0.9 · log(1 + e^-0.2) + 0.1 · log(1 + e^0.2)
    #   = 0.9 · 0.5981388693815918 + 0.1 · 0.7981388693815918 = 0.6181388693815918
    out = dpo_loss(torch.tensor([1.5]), torch.tensor([-0.5]), beta=0.1, label_smoothing=0.1)
    assert out.losses.item() == pytest.approx(0.6181388693815918, rel=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.15)
    assert out.rejected_rewards.item() == pytest.approx(-0.05)


def test_cdpo_with_zero_smoothing_equals_dpo_exactly():
    chosen, rejected = torch.tensor([1.5, -3.0, 40.0]), torch.tensor([-0.5, 2.0, -7.0])
    expected = -torch.nn.functional.logsigmoid(0.1 * (chosen - rejected))
    assert torch.equal(dpo_loss(chosen, rejected, beta=0.1, label_smoothing=0.0).losses, expected)
    assert torch.equal(dpo_loss(chosen, rejected, beta=0.1).losses, expected)


def test_ipo_summed_hand_computed_values_and_rewards():
    # β = 0.1: 1/(2β) = 5; h = 1.5 - (-0.5) = 2 → (2 - 5)² = 9
    out = ipo_loss(torch.tensor([1.5]), torch.tensor([-0.5]), beta=0.1)
    assert out.losses.item() == pytest.approx(9.0)
    # β = 0.5: 1/(2β) = 1; h = 3 → (3 - 1)² = 4
    assert ipo_loss(torch.tensor([2.0]), torch.tensor([-1.0]), beta=0.5).losses.item() == pytest.approx(4.0)
    assert out.chosen_rewards.item() == pytest.approx(0.15)  # 0.1 · 1.5
    assert out.rejected_rewards.item() == pytest.approx(-0.05)  # 0.1 · -0.5


def test_ipo_averaged_hand_computed_value_and_summed_rewards():
    # β = 0.25: 1/(2β) = 2; h = 6/3 - (-4)/2 = 2 + 2 = 4 → (4 - 2)² = 4
    out = ipo_loss(
        torch.tensor([6.0]),
        torch.tensor([-4.0]),
        beta=0.25,
        chosen_lengths=torch.tensor([3.0]),
        rejected_lengths=torch.tensor([2.0]),
    )
    assert out.losses.item() == pytest.approx(4.0)
    assert out.chosen_rewards.item() == pytest.approx(1.5)  # 0.25 · 6 (summed, not averaged)
    assert out.rejected_rewards.item() == pytest.approx(-1.0)  # 0.25 · -4


def test_ipo_rejects_only_one_length():
    with pytest.raises(ValueError):
        ipo_loss(torch.tensor([1.0]), torch.tensor([0.0]), beta=0.1, chosen_lengths=torch.tensor([2.0]))


def test_ipo_minimum_sits_at_half_inverse_beta():
    beta = 0.25  # 1/(2β) = 2
    h = torch.linspace(0.0, 4.0, 401)
    losses = ipo_loss(h, torch.zeros_like(h), beta=beta).losses
    assert h[losses.argmin()].item() == pytest.approx(2.0, abs=1e-5)
    assert ipo_loss(torch.tensor([2.0]), torch.tensor([0.0]), beta=beta).losses.item() == 0.0


def test_tdpo1_hand_computed_value_and_rewards():
    # β = 0.1, h = 2, SeqKL(y_w) = 0.3, SeqKL(y_l) = 1.3: β (2 - (1.3 - 0.3)) = 0.1
    #   → -log σ(0.1) = log(1 + e^-0.1) = 0.6443966600735709
    out = tdpo_loss(torch.tensor([1.5]), torch.tensor([-0.5]), torch.tensor([0.3]), torch.tensor([1.3]), beta=0.1)
    assert out.losses.item() == pytest.approx(0.6443966600735709, rel=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.18)  # 0.1 · (1.5 + 0.3)
    assert out.rejected_rewards.item() == pytest.approx(0.08)  # 0.1 · (-0.5 + 1.3)


def test_tdpo2_hand_computed_value_and_rewards():
    # β = 0.1, α = 0.5, h = 2: β (2 - 0.5 · (1.3 - 0.3)) = 0.15 → log(1 + e^-0.15) = 0.6209570477895321
    out = tdpo_loss(
        torch.tensor([1.5]), torch.tensor([-0.5]), torch.tensor([0.3]), torch.tensor([1.3]), beta=0.1, alpha=0.5
    )
    assert out.losses.item() == pytest.approx(0.6209570477895321, rel=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.18)
    assert out.rejected_rewards.item() == pytest.approx(0.08)


def test_tdpo2_with_alpha_one_equals_tdpo1():
    args = (torch.tensor([1.5, -2.0]), torch.tensor([-0.5, 3.0]), torch.tensor([0.3, 2.0]), torch.tensor([1.3, 0.1]))
    assert torch.equal(tdpo_loss(*args, beta=0.1, alpha=1.0).losses, tdpo_loss(*args, beta=0.1).losses)


def test_tdpo2_stops_gradient_of_chosen_seq_kl_only():
    chosen_kl, rejected_kl = pair([0.3], [1.3])
    loss = tdpo_loss(torch.tensor([1.5]), torch.tensor([-0.5]), chosen_kl, rejected_kl, beta=0.1, alpha=0.5).losses
    grad_chosen, grad_rejected = torch.autograd.grad(
        loss.sum(), [chosen_kl, rejected_kl], allow_unused=True, materialize_grads=True
    )
    assert torch.equal(grad_chosen, torch.zeros(1))
    assert grad_rejected.item() != 0.0


def test_tdpo1_passes_gradient_to_both_seq_kls():
    chosen_kl, rejected_kl = pair([0.3], [1.3])
    tdpo_loss(torch.tensor([1.5]), torch.tensor([-0.5]), chosen_kl, rejected_kl, beta=0.1).losses.sum().backward()
    assert chosen_kl.grad.item() != 0.0 and rejected_kl.grad.item() != 0.0


@pytest.mark.parametrize("name", OBJECTIVES)
def test_gradient_raises_chosen_and_lowers_rejected(name):
    chosen, rejected = pair([1.5], [-0.5])  # h = 2 < 1/(2β) = 5, so IPO still pushes the margin up
    OBJECTIVES[name](chosen, rejected).losses.sum().backward()
    assert chosen.grad.item() < 0.0
    assert rejected.grad.item() > 0.0


@pytest.mark.parametrize("name", OBJECTIVES)
def test_extreme_logratios_give_finite_losses_and_gradients(name):
    chosen, rejected = pair([1e4, -1e4], [-1e4, 1e4])
    out = OBJECTIVES[name](chosen, rejected)
    out.losses.sum().backward()
    for t in (out.losses, out.chosen_rewards, out.rejected_rewards, chosen.grad, rejected.grad):
        assert torch.isfinite(t).all()


def test_all_masked_completion_gives_finite_ipo_averaged_loss():
    mask = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0]])
    token_logratios = torch.tensor([[0.5, -0.2, 0.1, 0.3], [0.4, 0.2, 9.0, 9.0]], requires_grad=True)
    chosen = masked_sum(token_logratios, mask)
    lengths = completion_lengths(mask)
    assert chosen.tolist() == pytest.approx([0.0, 0.6])
    assert lengths.tolist() == [1.0, 2.0]
    out = ipo_loss(chosen, torch.zeros(2), beta=0.1, chosen_lengths=lengths, rejected_lengths=lengths)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(token_logratios.grad).all()
    assert out.losses[0].item() == pytest.approx(25.0)  # h = 0 → (0 - 5)²
    assert out.losses[1].item() == pytest.approx(22.09)  # h = 0.6 / 2 = 0.3 → (0.3 - 5)²
