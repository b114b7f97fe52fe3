"""The real SmolLM2-135M-Instruct with LoRA on real sentiment pairs: every objective learns, DPO matches TRL."""

import pytest
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from dpo_plugin import PreferenceConfig, PreferenceTrainer
from dpo_plugin.data import load_preference_dataset, resolve_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    path = resolve_model("smollm2-135m-instruct")
    return path, AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def eight_pairs():
    return load_preference_dataset("sentiment-pairs", "train").select(range(8))


def lora():
    return LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def settings(tmp_path, **overrides):
    return (
        dict(
            output_dir=str(tmp_path),
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            per_device_train_batch_size=8,
            learning_rate=2e-3,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            max_length=128,
            disable_tqdm=True,
            seed=0,
        )
        | overrides
    )


def train_lora(trainer_cls, args, path, tokenizer, pairs):
    """A fresh SmolLM2 with new LoRA adapters, trained with `trainer_cls` under `args`."""
    trainer = trainer_cls(
        model=AutoModelForCausalLM.from_pretrained(path),
        args=args,
        train_dataset=pairs,
        processing_class=tokenizer,
        peft_config=lora(),
    )
    trainer.train()
    return trainer


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry and "train_runtime" not in entry]


@pytest.mark.parametrize("loss_type", ["dpo", "ipo", "tdpo2"])
def test_each_objective_fits_eight_real_pairs(loss_type, smollm2, eight_pairs, tmp_path):
    """Six steps on the same eight pairs: the implicit reward margin on them grows from exactly zero."""
    path, tokenizer = smollm2
    args = PreferenceConfig(
        **settings(tmp_path, loss_type=loss_type, max_steps=6, beta=0.5 if loss_type == "ipo" else 0.1)
    )
    trainer = train_lora(PreferenceTrainer, args, path, tokenizer, eight_pairs)
    margins, losses = logged(trainer, "rewards/margins"), logged(trainer, "loss")
    assert margins[0] == pytest.approx(0.0, abs=1e-6)  # LoRA starts at the reference
    assert margins[-1] > 0.05 and losses[-1] < losses[0]
    if loss_type == "tdpo2":
        assert logged(trainer, "kl/chosen")[-1] > 0.0


def test_dpo_matches_trl_on_the_real_model(smollm2, eight_pairs, tmp_path):
    path, tokenizer = smollm2
    runs = []
    for trainer_cls, config_cls, loss_type in (
        (PreferenceTrainer, PreferenceConfig, "dpo"),
        (DPOTrainer, DPOConfig, "sigmoid"),
    ):
        args = config_cls(**settings(tmp_path, loss_type=loss_type, max_steps=2, per_device_train_batch_size=4))
        runs.append(train_lora(trainer_cls, args, path, tokenizer, eight_pairs).state.log_history[:2])
    for ours, trl in zip(*runs, strict=True):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins"):
            assert ours[key] == pytest.approx(trl[key], abs=1e-4), key
        for key in ("logps/chosen", "logps/rejected"):  # sums of ~30 token log-probs, two float32 summation orders
            assert ours[key] == pytest.approx(trl[key], rel=1e-5), key
