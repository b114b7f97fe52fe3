"""The trainer's chunked head against its full-logit path on the same batch: the loss, every logged metric and the
gradient of every trainable parameter, for every objective, packed and unpacked, at several block sizes; rows with
no completion token; tied embeddings; soft-capped logits; and the fallbacks, which say why."""

import copy
import logging

import pytest
import torch
from helpers import make_model, tiny_args
from peft import LoraConfig
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, TrainerCallback

from dpo_plugin import PreferenceConfig, PreferenceTrainer
from dpo_plugin.objectives.chunked_head import head_of

OBJECTIVES = {
    "dpo": {"loss_type": "dpo"},
    "cdpo": {"loss_type": "dpo", "label_smoothing": 0.2},
    "reference-free": {"loss_type": "dpo", "reference_free": True},
    "ipo-averaged": {"loss_type": "ipo"},
    "ipo-summed": {"loss_type": "ipo", "ipo_normalize": False},
    "tdpo1": {"loss_type": "tdpo1"},
    "tdpo2": {"loss_type": "tdpo2", "tdpo_alpha": 0.7},
}


class GradientsBeforeTheStep(TrainerCallback):
    """Keeps every trainable parameter's gradient just before the first optimizer step."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def one_step(model, ref_model, tokenizer, pairs, tmp_path, mask_rows=(), peft_config=None, **settings):
    """Per-pair losses, logged metrics and gradients of one real training step (the trainer's own loop, no
    clipping)."""
    args = tiny_args(PreferenceConfig, tmp_path, max_steps=1, max_grad_norm=0.0, **settings)
    capture = GradientsBeforeTheStep()
    trainer = PreferenceTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=pairs,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[capture],
    )
    collate = trainer.data_collator

    def collate_with_masked_rows(rows):  # completions cut away entirely by truncation
        batch = collate(rows)
        for row in mask_rows:
            batch["completion_mask"][row] = 0
        return batch

    trainer.data_collator = collate_with_masked_rows
    objective, per_pair = trainer._objective, []

    def recording_objective(*args):
        result = objective(*args)
        per_pair.append(result.losses.detach().clone())
        return result

    trainer._objective = recording_objective
    trainer.train()
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    metrics = {key: value for key, value in logged.items() if key not in ("loss", "grad_norm", "epoch", "step")}
    return per_pair[0], metrics, capture.grads, trainer


def assert_same_step(chunked, full, rtol=1e-5):
    (losses_c, metrics_c, grads_c, _), (losses_f, metrics_f, grads_f, _) = chunked, full
    assert torch.allclose(losses_c, losses_f, rtol=rtol, atol=1e-7)  # per pair
    assert metrics_c.keys() == metrics_f.keys()
    for key in metrics_f:
        assert metrics_c[key] == pytest.approx(metrics_f[key], rel=rtol, abs=1e-6), key
    for name in grads_f:
        scale = grads_f[name].abs().max().clamp(min=1e-12)
        assert ((grads_c[name] - grads_f[name]).abs().max() / scale).item() <= rtol, name


def both_paths(tokenizer, pairs, tmp_path, model=None, **settings):
    model = model if model is not None else make_model(len(tokenizer))
    ref = None if settings.get("reference_free") else make_model(len(tokenizer), seed=1)
    results = []
    for chunked in (True, False):
        results.append(
            one_step(
                copy.deepcopy(model),
                copy.deepcopy(ref),
                tokenizer,
                pairs,
                tmp_path / str(chunked),
                chunked_head=chunked,
                **settings,
            )
        )
    return results


@pytest.mark.parametrize("objective", sorted(OBJECTIVES), ids=sorted(OBJECTIVES))
@pytest.mark.parametrize("share_prompt", [True, False], ids=["packed", "two-rows"])
def test_every_objective_computes_the_same_step(objective, share_prompt, tokenizer, pairs, tmp_path):
    chunked, full = both_paths(
        tokenizer, pairs, tmp_path, logits_block_size=7, share_prompt=share_prompt, **OBJECTIVES[objective]
    )
    assert chunked[3].readers and all(reader.chunked for reader in chunked[3].readers.values())  # the chunked path
    assert full[3].readers and not any(reader.chunked for reader in full[3].readers.values())
    assert_same_step(chunked, full)


@pytest.mark.parametrize("block_size", [1, 1000, None], ids=["block-1", "block-past-the-batch", "automatic"])
@pytest.mark.parametrize("objective", ["dpo", "tdpo2"])
def test_any_block_size_computes_the_same_step(block_size, objective, tokenizer, pairs, tmp_path):
    assert_same_step(*both_paths(tokenizer, pairs, tmp_path, logits_block_size=block_size, **OBJECTIVES[objective]))


@pytest.mark.parametrize("objective", ["dpo", "tdpo2"])
def test_rows_with_no_completion_token_compute_the_same_step(objective, tokenizer, pairs, tmp_path):
    assert_same_step(*both_paths(tokenizer, pairs, tmp_path, mask_rows=(1, 5), **OBJECTIVES[objective]))


@pytest.mark.parametrize("objective", ["dpo", "tdpo2"])
def test_a_lora_policy_under_bf16_autocast_computes_the_same_step(objective, tokenizer, pairs, tmp_path):
    """The reference is the policy with its adapters off, and the head runs in the autocast dtype the model's own
    head runs in (accelerate wraps the model's forward, not the code around it): at step one, exactly the reference."""
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    model = make_model(len(tokenizer))
    results = [
        one_step(
            copy.deepcopy(model),
            None,
            tokenizer,
            pairs,
            tmp_path / str(chunked),
            peft_config=lora,
            chunked_head=chunked,
            bf16=True,
            **OBJECTIVES[objective],
        )
        for chunked in (True, False)
    ]
    assert results[0][1]["rewards/margins"] == results[1][1]["rewards/margins"] == 0.0
    assert_same_step(*results, rtol=1e-3)


def test_tied_embeddings_get_the_gradient_of_both_uses(tokenizer, pairs, tmp_path):
    model = make_model(len(tokenizer))
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert_same_step(*both_paths(tokenizer, pairs, tmp_path, model=model, loss_type="tdpo2"))


def test_soft_capped_logits_take_the_chunked_path(tokenizer, pairs, tmp_path):
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        final_logit_softcapping=2.0,
        max_position_embeddings=256,
        sliding_window=16,
    )
    chunked, full = both_paths(tokenizer, pairs, tmp_path, model=Gemma3ForCausalLM(config), loss_type="tdpo2")
    assert chunked[3].readers[id(chunked[3].model)].chunked and head_of(chunked[3].model)[0].transform.softcap == 2.0
    assert_same_step(chunked, full)


def test_a_model_whose_logits_the_head_cannot_reproduce_falls_back_and_says_why(tokenizer, pairs, tmp_path, caplog):
    """A forward that changes the logits in a way no config key says (TRL refuses LoRA on lm_head, the other way a
    head stops being plain): the once-per-model check catches it, and the step is the full-logit path's."""

    class DoubledLogits(type(make_model(len(tokenizer)))):
        def forward(self, *args, **kwargs):
            outputs = super().forward(*args, **kwargs)
            outputs.logits = outputs.logits * 2
            return outputs

    model = make_model(len(tokenizer))
    model.__class__ = DoubledLogits
    with caplog.at_level(logging.WARNING, logger="dpo_plugin"):
        chunked, full = both_paths(tokenizer, pairs, tmp_path, model=model, loss_type="dpo")
    assert "falls back to full logits" in caplog.text and "do not reproduce the model's own logits" in caplog.text
    assert not chunked[3].readers[id(chunked[3].model)].chunked  # the policy falls back; its plain reference need not
    assert_same_step(chunked, full)
