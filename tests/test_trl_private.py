"""Every private TRL/transformers member listed in `dpo_plugin.trl_private` still exists with the arguments the
plugin uses: moving the TRL pin fails here first, by name."""

import inspect

import pytest
from helpers import make_model, tiny_args
from trl import DPOTrainer

from dpo_plugin import PreferenceConfig, PreferenceTrainer
from dpo_plugin.trl_private import OVERRIDDEN_METHODS, TRAINER_ATTRIBUTES


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
