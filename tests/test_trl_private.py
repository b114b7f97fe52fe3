"""Every private TRL/transformers member listed in `dpo_plugin.trl_private` still exists with the arguments the
plugin uses: moving the TRL pin fails here first, by name."""

import inspect

import pytest
import torch
from helpers import make_model, tiny_args
from peft import LoraConfig
from trl import DPOTrainer

from dpo_plugin import PreferenceConfig, PreferenceTrainer
from dpo_plugin.trl_private import OVERRIDDEN_METHODS, REF_ADAPTER, TRAINER_ATTRIBUTES, forward_restored


@pytest.mark.parametrize("name", sorted(OVERRIDDEN_METHODS))
def test_each_overridden_method_exists_with_the_same_parameters(name):
    assert hasattr(DPOTrainer, name), f"DPOTrainer.{name} is gone: see dpo_plugin/trl_private.py"
    parameters = list(inspect.signature(getattr(DPOTrainer, name)).parameters)[1:]  # without self
    assert parameters[: len(OVERRIDDEN_METHODS[name])] == list(OVERRIDDEN_METHODS[name])
    ours = list(inspect.signature(getattr(PreferenceTrainer, name)).parameters)[1:]
    assert ours[: len(OVERRIDDEN_METHODS[name])] == list(OVERRIDDEN_METHODS[name])


def test_each_attribute_the_plugin_reads_is_set_by_dpo_trainer(tokenizer, pairs, tmp_path):
    trainer = DPOTrainer(
        model=make_model(len(tokenizer)),
        ref_model=make_model(len(tokenizer)),
        args=tiny_args(PreferenceConfig, tmp_path, loss_type="sigmoid", max_steps=1),
        train_dataset=pairs,
        processing_class=tokenizer,
    )
    trainer.train()  # some are set only once training starts
    missing = [name for name in TRAINER_ATTRIBUTES if not hasattr(trainer, name)]
    assert not missing, f"DPOTrainer no longer sets {missing}: see dpo_plugin/trl_private.py"


def test_dpo_trainer_patches_forward_and_forward_restored_takes_it_out(tokenizer, pairs, tmp_path):
    """What `forward_restored` undoes: `DPOTrainer.__init__` wraps the policy's and the reference's `forward` (an
    instance attribute around the previous one), and a second trainer would wrap the wrapper."""
    policy, reference = make_model(len(tokenizer)), make_model(len(tokenizer), seed=1)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = policy(input_ids=ids).logits
    args = tiny_args(PreferenceConfig, tmp_path, loss_type="sigmoid", max_steps=1)
    with forward_restored(policy, reference):
        DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=pairs, processing_class=tokenizer)
        assert "forward" in vars(policy) and "forward" in vars(reference), "DPOTrainer no longer patches forward"
        patched = policy.forward
        DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=pairs, processing_class=tokenizer)
        assert policy.forward is not patched  # stacked
    assert "forward" not in vars(policy) and "forward" not in vars(reference)
    assert torch.equal(policy(input_ids=ids).logits, before)


def test_dpo_trainer_copies_a_peft_policys_adapters_into_the_ref_adapter(tokenizer, pairs, tmp_path):
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    from peft import get_peft_model

    policy = get_peft_model(make_model(len(tokenizer)), lora)
    args = tiny_args(PreferenceConfig, tmp_path, loss_type="sigmoid", max_steps=1)
    DPOTrainer(model=policy, args=args, train_dataset=pairs, processing_class=tokenizer)
    assert REF_ADAPTER in policy.peft_config, f"DPOTrainer no longer adds a {REF_ADAPTER!r} adapter"
    default = dict(policy.named_parameters())
    for name, parameter in default.items():
        if f".{REF_ADAPTER}." in name:
            assert torch.equal(parameter, default[name.replace(f".{REF_ADAPTER}.", ".default.")])
