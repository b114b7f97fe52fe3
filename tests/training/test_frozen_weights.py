"""A LoRA policy's frozen base held in the autocast precision while training (`cast_frozen_weights_once`): the same
training to the bit as autocast casting it at every use, the float weights back afterwards, nothing else held."""

import copy

import pytest
import torch
from helpers import make_model, tiny_args
from peft import LoraConfig, get_peft_model
from transformers import TrainerCallback

from dpo_plugin import PreferenceConfig, PreferenceTrainer
from dpo_plugin.training.frozen_weights import frozen_linears, frozen_weights_cast

LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


class WeightDtypes(TrainerCallback):
    """The dtype of every weight of the models at the first step."""

    def __init__(self, *models):
        self.models, self.dtypes = models, None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.dtypes is None:
            self.dtypes = [{name: p.dtype for name, p in model.named_parameters()} for model in self.models]


def train(tokenizer, pairs, tmp_path, model, ref_model=None, **settings):
    """Three bf16-autocast steps: the losses, the trainable weights after them, and the weights' dtypes at step one."""
    args = tiny_args(PreferenceConfig, tmp_path, max_steps=3, bf16=True, logging_steps=1, **settings)
    trainer = PreferenceTrainer(
        model=model, ref_model=ref_model, args=args, train_dataset=pairs, processing_class=tokenizer
    )
    watched = WeightDtypes(trainer.model, *([ref_model] if ref_model is not None else []))
    trainer.add_callback(watched)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    trained = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    return losses, trained, watched.dtypes, trainer


@pytest.mark.parametrize("loss_type", ["dpo", "tdpo2"])
def test_training_is_the_same_to_the_bit_and_the_float_weights_come_back(loss_type, tokenizer, pairs, tmp_path):
    model, reference = get_peft_model(make_model(len(tokenizer)), LORA), None
    originals = {name: p for name, p in model.named_parameters() if not p.requires_grad}
    values = {name: p.detach().clone() for name, p in originals.items()}
    copies = copy.deepcopy(model), copy.deepcopy(reference)
    losses, trained, dtypes, _ = train(tokenizer, pairs, tmp_path / "held", model, reference, loss_type=loss_type)
    plain_losses, plain_trained, plain_dtypes, _ = train(
        tokenizer, pairs, tmp_path / "cast", *copies, loss_type=loss_type, cast_frozen_weights_once=False
    )
    assert losses == plain_losses
    assert trained.keys() == plain_trained.keys() and all(torch.equal(trained[n], plain_trained[n]) for n in trained)
    cast_names = [name for name, dtype in dtypes[0].items() if dtype == torch.bfloat16]
    assert cast_names and all("proj" in name and "lora" not in name for name in cast_names)
    assert all(dtype == torch.float32 for dtype in plain_dtypes[0].values())
    for name, parameter in model.named_parameters():  # the very float Parameters, unchanged
        if name in originals:
            assert parameter is originals[name] and torch.equal(parameter, values[name]), name


def test_only_frozen_plain_linears_outside_heads_and_adapters_are_held(tokenizer):
    model = get_peft_model(make_model(len(tokenizer)), LORA)
    model.add_adapter("ref", LORA)  # a frozen adapter, saved with the policy
    layers = frozen_linears([model, model], torch.bfloat16)
    names = {id(module): name for name, module in model.named_modules()}
    chosen = sorted(names[id(layer)] for layer in layers)
    assert chosen and len(chosen) == len(set(chosen))
    assert all(name.endswith(("proj", "proj.base_layer")) for name in chosen), chosen
    assert not any("lora_" in name or "lm_head" in name for name in chosen)
    with frozen_weights_cast([model], torch.bfloat16) as count:
        assert count == len(layers) and all(layer.weight.dtype == torch.bfloat16 for layer in layers)
        assert model.get_output_embeddings().weight.dtype == torch.float32
    assert all(layer.weight.dtype == torch.float32 for layer in layers)


def test_the_float_weights_come_back_when_training_fails(tokenizer):
    model = make_model(len(tokenizer)).requires_grad_(False)
    before = [layer.weight for layer in frozen_linears([model], torch.bfloat16)]
    with pytest.raises(RuntimeError), frozen_weights_cast([model], torch.bfloat16):
        raise RuntimeError("a step failed")
    assert [layer.weight for layer in frozen_linears([model], torch.bfloat16)] == before


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
    watched = WeightDtypes(model if lora else reference)
    trainer.add_callback(watched)
    trainer.train()
    assert set(watched.dtypes[0].values()) == {torch.float32}
