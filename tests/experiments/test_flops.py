"""The model-FLOPs rule of `bench speed`, against a count by hand, and the matmul rate it is read against."""

import torch
from helpers import make_model
from peft import LoraConfig, get_peft_model

from dpo_plugin.experiments.bench.flops import dense_matmul_rate, model_flops_per_step


def test_model_flops_follow_the_stated_rule():
    model = make_model(vocab_size=100, hidden_size=32)  # 2 layers; untied head
    batch = {
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]),
        "completion_mask": torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]]),
    }
    tokens, positions, head = 7, 4, 100 * 32
    matmul = sum(p.numel() for name, p in model.named_parameters() if p.dim() >= 2 and "embed" not in name)
    matmul -= head  # lm_head
    full = model_flops_per_step(model, [batch])
    assert full == 2 * matmul * tokens * 2 + 2 * matmul * tokens + 2 * head * positions * 3 + (
        2 * matmul * tokens + 2 * head * positions
    )
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    adapters = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    frozen_head = 2 * head * positions * 2
    expected = 2 * (matmul + adapters) * tokens * 2 + 2 * adapters * tokens + frozen_head
    assert model_flops_per_step(lora, [batch]) == expected + 2 * (matmul + adapters) * tokens + 2 * head * positions


def test_the_matmul_rate_is_measured():
    assert dense_matmul_rate("cpu", torch.float32, size=128, seconds=0.05) > 1e6
