"""A LoRA policy's frozen base held in the autocast precision while training (`cast_frozen_weights_once`): the same
training to the bit as autocast casting it at every use, the float weights back afterwards, nothing else held."""

import copy

import pytest
import torch
from helpers import make_model, tiny_args
from peft import LoraConfig, get_peft_model
from transformers import TrainerCallback

from dpo_plugin import PreferenceConfig, PreferenceTrainer
from dpo_plugin.training.frozen_weights import _linear_with_held_weight, frozen_linears, frozen_weights_cast

LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


class HeldAtStepOne(TrainerCallback):
    """At the first step: the names of the layers of `model` that compute with a held weight, every weight's dtype,
    and the model's logits on `probe` outside autocast (as a callback that samples mid-training gets them)."""

    def __init__(self, model, probe):
        self.model, self.probe, self.names = model, probe, None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.names is None:
            self.names = held_layers(self.model)
            self.dtypes = {param.dtype for param in self.model.parameters()}
            inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            with torch.no_grad():  # the inner model, as `generate` calls it: accelerate's autocast wraps the outer one
                self.logits = inner(input_ids=self.probe).logits


PROBE = torch.tensor([[5, 9, 14, 20, 3]])


def held_layers(model) -> list[str]:
    """The names of `model`'s layers that compute with a held weight (their `forward` patched)."""
    patched = {name: getattr(vars(module).get("forward"), "func", None) for name, module in model.named_modules()}
    return [name for name, forward in patched.items() if forward is _linear_with_held_weight]


def train(tokenizer, pairs, tmp_path, model, **settings):
    """Three bf16-autocast steps: the losses, the trainable weights after them, and what `HeldAtStepOne` saw."""
    args = tiny_args(PreferenceConfig, tmp_path, max_steps=3, bf16=True, logging_steps=1, **settings)
    trainer = PreferenceTrainer(model=model, args=args, train_dataset=pairs, processing_class=tokenizer)
    watched = HeldAtStepOne(trainer.model, PROBE)
    trainer.add_callback(watched)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    trained = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    return losses, trained, watched


@pytest.mark.parametrize("loss_type", ["dpo", "tdpo2"])
def test_training_is_the_same_to_the_bit_and_the_weights_are_untouched(loss_type, tokenizer, pairs, tmp_path):
    model = get_peft_model(make_model(len(tokenizer)), LORA)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    with torch.no_grad():
        start_logits = model(input_ids=PROBE).logits
    plain_copy = copy.deepcopy(model)
    losses, trained, held = train(tokenizer, pairs, tmp_path / "held", model, loss_type=loss_type)
    plain_losses, plain_trained, plain = train(
        tokenizer, pairs, tmp_path / "cast", plain_copy, loss_type=loss_type, cast_frozen_weights_once=False
    )
    assert losses == plain_losses
    assert trained.keys() == plain_trained.keys() and all(torch.equal(trained[n], plain_trained[n]) for n in trained)
    assert held.names and all(name.endswith(("proj", "proj.base_layer")) for name in held.names), held.names
    assert not plain.names and held.dtypes == plain.dtypes == {torch.float32}
    # outside autocast mid-training, the float weights: the start's logits exactly (LoRA's B starts at zero)
    assert torch.equal(held.logits, start_logits) and torch.equal(plain.logits, start_logits)
    assert not held_layers(model)  # restored
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_only_frozen_plain_linears_outside_heads_and_adapters_are_held(tokenizer):
    model = get_peft_model(make_model(len(tokenizer)), LORA)
    model.add_adapter("ref", LORA)  # a frozen adapter
    layers = frozen_linears(model, torch.bfloat16)
    names = {id(module): name for name, module in model.named_modules()}
    chosen = sorted(names[id(layer)] for layer in layers)
    assert chosen and len(chosen) == len(set(chosen))
    assert all(name.endswith(("proj", "proj.base_layer")) for name in chosen), chosen
    assert not any("lora_" in name or "lm_head" in name for name in chosen)
    hidden = torch.randn(3, layers[0].in_features)
    with frozen_weights_cast(model, torch.bfloat16) as count, torch.no_grad():
        assert count == len(layers)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast_by_autocast = torch.nn.functional.linear(hidden, layers[0].weight)
            assert torch.equal(layers[0](hidden), cast_by_autocast)
        assert torch.equal(layers[0](hidden), torch.nn.functional.linear(hidden, layers[0].weight))  # no autocast
    assert all(layer.weight.dtype == torch.float32 for layer in layers) and not held_layers(model)


def test_layers_are_restored_when_training_fails(tokenizer):
    model = make_model(len(tokenizer)).requires_grad_(False)
    with pytest.raises(RuntimeError), frozen_weights_cast(model, torch.bfloat16):
        raise RuntimeError("a step failed")
    assert not held_layers(model)


@pytest.mark.parametrize("case", ["lora-without-autocast", "separate-reference"])
def test_nothing_else_is_held(case, tokenizer, pairs, tmp_path):
    """No autocast: nothing to hand it. A separate reference: its casts never outlive a layer, holding them would
    add memory."""
    lora = case == "lora-without-autocast"
    model = get_peft_model(make_model(len(tokenizer)), LORA) if lora else make_model(len(tokenizer))
    reference = None if lora else make_model(len(tokenizer), seed=1)
    args = tiny_args(PreferenceConfig, tmp_path, max_steps=1, bf16=not lora)
    trainer = PreferenceTrainer(
        model=model, ref_model=reference, args=args, train_dataset=pairs, processing_class=tokenizer
    )
    watched = HeldAtStepOne(model if lora else reference, PROBE)
    trainer.add_callback(watched)
    trainer.train()
    assert watched.names == []
