"""The real Gemma-3-270M (vocabulary 262,144; the optional asset, fetched here on first use) with LoRA on real review
pairs: every objective trains through the chunked head, and its first step equals the full-logit path's."""

import math

import pytest
from helpers import tiny_args
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_plugin import PreferenceConfig, PreferenceTrainer
from dpo_plugin.data import load_preference_dataset
from dpo_plugin.data.assets import gemma3_path
from dpo_plugin.objectives.chunked_head import head_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma():
    path = str(gemma3_path())
    return path, AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def review_pairs():
    return load_preference_dataset("review-pairs", "train").select(range(8))


def trainer_for(path, tokenizer, pairs, tmp_path, **overrides):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return PreferenceTrainer(
        model=AutoModelForCausalLM.from_pretrained(path),
        args=tiny_args(PreferenceConfig, tmp_path, max_steps=2, learning_rate=1e-3, max_length=48, **overrides),
        train_dataset=pairs,
        processing_class=tokenizer,
        peft_config=lora,
    )


@pytest.mark.parametrize("loss_type", ["dpo", "ipo", "tdpo1", "tdpo2"])
def test_each_objective_trains_through_the_chunked_head(loss_type, gemma, review_pairs, tmp_path):
    trainer = trainer_for(*gemma, review_pairs, tmp_path, loss_type=loss_type)
    trainer.train()
    assert trainer.readers and all(reader.chunked for reader in trainer.readers.values())  # no fallback
    assert head_of(trainer.model)[0].weight.shape == (262_144, 640)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    first = (1 / (2 * trainer.args.beta)) ** 2 if loss_type == "ipo" else math.log(2)  # policy == reference at step 1
    assert len(losses) == 2 and losses[0] == pytest.approx(first, abs=1e-3) and losses[1] != losses[0]


@pytest.mark.parametrize("loss_type", ["dpo", "tdpo2"])
def test_the_first_step_equals_the_full_logit_path(loss_type, gemma, review_pairs, tmp_path):
    runs = {}
    for chunked in (True, False):
        trainer = trainer_for(*gemma, review_pairs, tmp_path / str(chunked), loss_type=loss_type, chunked_head=chunked)
        trainer.train()
        runs[chunked] = [entry for entry in trainer.state.log_history if "loss" in entry]
    for chunked_step, full_step in zip(runs[True], runs[False], strict=True):
        for key in ("loss", "grad_norm", "rewards/margins", "logps/chosen", "entropy"):
            assert chunked_step[key] == pytest.approx(full_step[key], rel=1e-4, abs=1e-5), key
