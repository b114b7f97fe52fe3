"""Shared-prompt packing gives the plain path's logits, log-probs, losses and metrics, and falls back cleanly."""

import pytest
import torch
from helpers import make_model, make_pairs, tiny_args
from transformers import GPT2Config, GPT2LMHeadModel

from dpo_plugin import PreferenceConfig, PreferenceTrainer
from dpo_plugin.objectives.logprobs import completion_logits, summed_logps
from dpo_plugin.objectives.packing import completion_logits_shared_prompt, pack_pairs, supports_shared_prompt


@pytest.fixture
def batch(tokenizer, tmp_path):
    """A collated `[chosen; rejected]` batch of 6 pairs with mixed prompt and completion lengths, as TRL builds it."""
    args = PreferenceConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_length=64)
    trainer = PreferenceTrainer(
        model=make_model(len(tokenizer)), args=args, train_dataset=make_pairs(), processing_class=tokenizer
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, batch["completion_mask"]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_logits_equal_the_plain_paths(tokenizer, batch, attention):
    model_kwargs, completion_mask = batch
    model = make_model(len(tokenizer)).eval()
    model.config._attn_implementation = attention
    assert (
        pack_pairs(model_kwargs["input_ids"], model_kwargs["attention_mask"], completion_mask)["input_ids"].size(0) == 6
    )  # one row per pair
    with torch.no_grad():
        plain, _ = completion_logits(model, model_kwargs, completion_mask)
        packed, _ = completion_logits_shared_prompt(model, model_kwargs, completion_mask)
    torch.testing.assert_close(packed.logits, plain.logits, rtol=0, atol=1e-5)
    assert torch.equal(packed.labels, plain.labels)
    torch.testing.assert_close(summed_logps(packed), summed_logps(plain), rtol=0, atol=1e-4)


def test_packed_gradients_equal_the_plain_paths(tokenizer, batch):
    model_kwargs, completion_mask = batch
    grads = []
    for path in (completion_logits, completion_logits_shared_prompt):
        model = make_model(len(tokenizer))
        selected, _ = path(model, model_kwargs, completion_mask)
        summed_logps(selected).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loss_type", ["dpo", "ipo", "tdpo2"])
def test_training_with_and_without_packing_logs_the_same_numbers(tokenizer, pairs, tmp_path, loss_type):
    histories = []
    for share_prompt in (False, True):
        args = tiny_args(PreferenceConfig, tmp_path / str(share_prompt), loss_type=loss_type, share_prompt=share_prompt)
        trainer = PreferenceTrainer(
            model=make_model(len(tokenizer)), args=args, train_dataset=pairs, processing_class=tokenizer
        )
        trainer.train()
        histories.append(trainer.state.log_history[:-1])
    for plain, packed in zip(*histories, strict=True):
        for key, value in plain.items():
            assert packed[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_batches_that_cannot_be_packed_fall_back_to_the_plain_path(tokenizer, batch):
    model_kwargs, completion_mask = batch
    other_prompt = model_kwargs["input_ids"].clone()
    other_prompt[6, 0] = (other_prompt[6, 0] + 1) % len(tokenizer)  # pair 0's rejected row has another prompt
    assert pack_pairs(other_prompt, model_kwargs["attention_mask"], completion_mask) is None
    left_padded = model_kwargs["attention_mask"].flip(1)
    assert pack_pairs(model_kwargs["input_ids"], left_padded, completion_mask) is None
    no_completion = completion_mask.clone()
    no_completion[2] = 0
    assert pack_pairs(model_kwargs["input_ids"], model_kwargs["attention_mask"], no_completion) is None
    model = make_model(len(tokenizer)).eval()
    kwargs = {**model_kwargs, "input_ids": other_prompt}
    with torch.no_grad():
        fallback, _ = completion_logits_shared_prompt(model, kwargs, completion_mask)
        plain, _ = completion_logits(model, kwargs, completion_mask)
    assert torch.equal(fallback.logits, plain.logits)


def test_other_architectures_use_the_plain_path(tokenizer, batch):
    model_kwargs, completion_mask = batch
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)).eval()
    assert not supports_shared_prompt(gpt2) and supports_shared_prompt(make_model(len(tokenizer)))
    with torch.no_grad():
        fallback, _ = completion_logits_shared_prompt(gpt2, model_kwargs, completion_mask)
        plain, _ = completion_logits(gpt2, model_kwargs, completion_mask)
    assert torch.equal(fallback.logits, plain.logits)
