"""`OnlinePreferenceTrainer` / `OnlinePreferenceConfig` take what TRL's `OnlineDPOTrainer` / `OnlineDPOConfig` take:
reward functions called TRL's way (keywords, `completion_ids`, dataset columns), reward models with
`reward_processing_classes`, every `OnlineDPOConfig` field, `max_steps`, TRL's `state.log_history`. The scenarios of
TRL's own test file run in `trl_suite.py` (against a TRL checkout); here, on the same stand-ins, in CI."""

import dataclasses
import itertools
import json
import math
import statistics

import pytest
import torch
import trl_doc_rewards
from datasets import Dataset
from helpers import cli_error, make_model, save_checkpoint, tiny_reward_model, write_splits
from test_online import a_count, online_args, online_command, prompts
from trl.experimental.online_dpo import OnlineDPOConfig
from trl_suite import POLICY_ID, REWARD_ID, save_standins, zen

from dpo_plugin import OnlinePreferenceConfig, OnlinePreferenceTrainer
from dpo_plugin.cli import main
from dpo_plugin.utils.errors import ConfigError


def with_ground_truth(n=16):
    return Dataset.from_list([{"prompt": f"Q{i}: write", "ground_truth": str(i)} for i in range(n)])


class Recorder:
    """A reward function in TRL's form that keeps what each call received and rewards nothing."""

    __name__ = "recorder"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, completion_ids, ground_truth, **kwargs):
        self.calls.append(
            {"prompts": prompts, "completions": completions, "ids": completion_ids, "truth": ground_truth}
        )
        self.calls[-1]["others"] = sorted(kwargs)
        self.calls[-1]["step"] = kwargs["trainer_state"].global_step
        return [0.0] * len(prompts)


def test_reward_functions_written_for_trl_run_unchanged_with_keywords_ids_and_columns(tokenizer, tmp_path):
    """TRL's documented reward functions (token count; a `ground_truth` column) rank the samples as TRL calls them:
    `completion_ids` are the completions' tokens, each extra column arrives aligned with its prompt, and
    `trainer_state` is the trainer's `state`."""
    recorder = Recorder()
    trainer = OnlinePreferenceTrainer(
        model=make_model(len(tokenizer)),
        reward_funcs=[trl_doc_rewards.reward_func, trl_doc_rewards.ground_truth_reward_func, recorder],
        args=online_args(tmp_path, rounds=1),
        train_dataset=with_ground_truth(),
        processing_class=tokenizer,
    )
    rounds = trainer.train()
    assert trainer.reward_func_names == ["reward_func", "ground_truth_reward_func", "recorder"]
    calls = recorder.calls
    assert sum(len(call["prompts"]) for call in calls) == 8 * 4
    assert all(call["others"] == ["trainer_state"] and call["step"] == 0 for call in calls)
    for call in calls:
        assert all(
            truth == prompt.split(":")[0][1:] for prompt, truth in zip(call["prompts"], call["truth"], strict=True)
        )
        assert call["ids"] == [tokenizer(text, add_special_tokens=False).input_ids for text in call["completions"]]
    token_counts = [len(ids) for call in calls for ids in call["ids"]]
    assert rounds[0]["reward/mean"] == pytest.approx(statistics.fmean(token_counts))  # the others gave 0


def test_trl_reward_functions_as_module_function_strings_through_the_command(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "tiny")
    data = write_splits(tmp_path / "prompts", with_ground_truth(16), with_ground_truth(4))
    rewards = ["--reward_funcs", "trl_doc_rewards:reward_func", "trl_doc_rewards:ground_truth_reward_func"]
    main(online_command(checkpoint, data, tmp_path / "run", *rewards, "--rounds", "1"))
    rounds = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]
    assert rounds[0]["reward/mean"] > 1  # token counts


def test_a_reward_model_object_scores_prompt_and_completion_with_its_processing_class(tokenizer, tmp_path):
    """A sequence classifier in `reward_funcs`, with its tokenizer in `reward_processing_classes` (None for a
    function beside it): the round's mean reward is its logit on prompt + completion, averaged over the samples."""
    reward_model, recorder = tiny_reward_model(tokenizer), Recorder()
    trainer = OnlinePreferenceTrainer(
        model=make_model(len(tokenizer)),
        reward_funcs=[reward_model, recorder],
        args=online_args(tmp_path, rounds=1, reward_weights=[1.0, 0.0]),
        train_dataset=with_ground_truth(),
        processing_class=tokenizer,
        reward_processing_classes=[tokenizer, None],
    )
    rounds = trainer.train()
    assert trainer.reward_weights.tolist() == [1.0, 0.0] and len(trainer.reward_funcs) == 2
    texts = [p + c for call in recorder.calls for p, c in zip(call["prompts"], call["completions"], strict=True)]
    logits = []
    with torch.no_grad():
        for text in texts:
            inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
            logits.append(reward_model(**inputs).logits[0, 0].item())
    assert rounds[0]["reward/mean"] == pytest.approx(statistics.fmean(logits), rel=1e-4)


def test_a_reward_model_folder_string_is_loaded_as_trl_loads_a_model_id(tmp_path):
    standins = save_standins(tmp_path / "models")
    trainer = OnlinePreferenceTrainer(
        model=standins[POLICY_ID],
        reward_funcs=standins[REWARD_ID],
        args=online_args(tmp_path / "run", rounds=1),
        train_dataset=zen("standard_prompt_only", "train"),
    )
    assert trainer.reward_func_names == ["reward"] and trainer.rewards["reward"].model.config.num_labels == 1


def test_every_online_dpo_config_field_is_accepted_and_trls_values_construct(tmp_path):
    ours = {field.name for field in dataclasses.fields(OnlinePreferenceConfig)}
    assert {field.name for field in dataclasses.fields(OnlineDPOConfig)} <= ours
    config = online_args(
        tmp_path,
        beta=[0.2],
        min_p=0.05,
        repetition_penalty=1.2,
        cache_implementation="static",
        generation_kwargs={"do_sample": False},
        missing_eos_penalty=1.0,
        use_vllm=False,
        vllm_mode="server",
        ds3_gather_for_generation=False,
    )
    assert config.beta == 0.2
    assert config.generation == {
        "max_new_tokens": 8,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.05,
        "repetition_penalty": 1.2,
        "cache_implementation": "static",
        "do_sample": False,
    }


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"beta": [0.1, 0.2]}, "one β"),
        ({"reward_model_path": "some/model"}, "put the reward model's path in reward_funcs"),
        ({"missing_eos_penalty": -1.0}, "missing_eos_penalty must be a finite number >= 0"),
        ({"generation_kwargs": ["do_sample"]}, "generation_kwargs must be a mapping"),
    ],
)
def test_config_values_trl_would_not_run_are_refused(settings, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        online_args(tmp_path, **settings)


def test_use_vllm_is_refused_by_the_trainer_and_the_command_in_one_line(tokenizer, tmp_path, capsys):
    config = online_args(tmp_path, use_vllm=True)  # constructs, as TRL's config does
    with pytest.raises(ConfigError, match="samples with transformers' generate"):
        OnlinePreferenceTrainer(make_model(len(tokenizer)), None, a_count, config, train_dataset=prompts())
    checkpoint = save_checkpoint(tmp_path / "tiny")
    data = write_splits(tmp_path / "prompts", prompts(16), prompts(4))
    command = online_command(checkpoint, data, tmp_path / "run", "--reward_funcs", "test_online:a_count")
    assert "use_vllm: true" in cli_error(capsys, [*command, "--use_vllm", "true"])
    assert not (tmp_path / "run").exists()


def test_trl_arguments_the_rounds_cannot_use_are_refused_and_ref_model_is_not_model(tokenizer, tmp_path):
    model, config = make_model(len(tokenizer)), online_args(tmp_path)
    with pytest.raises(ValueError, match="same object"):
        OnlinePreferenceTrainer(model, model, a_count, config, train_dataset=prompts(), processing_class=tokenizer)
    with pytest.raises(ConfigError, match="data_collator, optimizers: OnlinePreferenceTrainer"):
        OnlinePreferenceTrainer(
            model,
            reward_funcs=a_count,
            args=config,
            data_collator=lambda rows: rows,
            train_dataset=prompts(),
            processing_class=tokenizer,
            optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None),
        )


def test_max_steps_ends_the_run_and_log_history_ends_as_trainers_does(tokenizer, tmp_path):
    trainer = OnlinePreferenceTrainer(
        model=make_model(len(tokenizer)),
        reward_funcs=a_count,
        args=online_args(tmp_path, max_steps=3, rounds=4),
        train_dataset=prompts(),
        processing_class=tokenizer,
    )
    rounds = trainer.train()
    assert trainer.state.global_step == 3 and sum(entry["steps"] for entry in rounds) == 3
    steps_so_far = list(itertools.accumulate(entry["steps"] for entry in rounds))
    assert [entry["step"] for entry in trainer.state.log_history[:-1]] == steps_so_far
    summary = trainer.state.log_history[-1]
    losses = [(entry["loss"], entry["steps"]) for entry in rounds]
    assert summary["train_loss"] == pytest.approx(sum(v * n for v, n in losses) / 3) and summary["step"] == 3


def test_generation_kwargs_reach_the_sampler_greedy_groups_tie_and_train_loss_is_nan(tokenizer, tmp_path):
    """`do_sample: False` through `generation_kwargs`: each group's samples are one greedy completion, every group
    ties, no pair is trained on (the plugin drops ties; TRL would train on the tie as a pair), train_loss is NaN."""
    trainer = OnlinePreferenceTrainer(
        model=make_model(len(tokenizer)),
        reward_funcs=a_count,
        args=online_args(tmp_path, rounds=1, generation_kwargs={"do_sample": False}),
        train_dataset=prompts(),
        processing_class=tokenizer,
    )
    assert trainer.generation_config.do_sample is False and trainer.generation_config.max_new_tokens == 8
    rounds = trainer.train()
    assert rounds[0]["groups/tie_fraction"] == 1.0 and rounds[0]["pairs"] == 0
    assert math.isnan(trainer.state.log_history[-1]["train_loss"])


def test_missing_eos_penalty_is_taken_from_the_reward_of_completions_without_eos(tokenizer, tmp_path):
    nothing = lambda prompts, completions: [0.0] * len(completions)  # noqa: E731
    trainer = OnlinePreferenceTrainer(
        model=make_model(len(tokenizer)),
        reward_funcs=nothing,
        args=online_args(tmp_path, rounds=1, missing_eos_penalty=2.0),
        train_dataset=prompts(),
        processing_class=tokenizer,
    )
    entry = trainer.train()[0]
    assert 0 < entry["completions/eos_rate"] < 1  # 8 new tokens: most completions are cut short
    assert entry["reward/mean"] == pytest.approx(-2.0 * (1 - entry["completions/eos_rate"]))


def test_an_eval_dataset_mapping_is_evaluated_per_name(tokenizer, tmp_path):
    eval_dataset = {"short": prompts(3), "long": Dataset.from_list([{"prompt": "A longer held-out prompt:"}] * 2)}
    trainer = OnlinePreferenceTrainer(
        model=make_model(len(tokenizer)),
        reward_funcs=a_count,
        args=online_args(tmp_path, rounds=1),
        train_dataset=prompts(),
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    assert trainer.eval_dataset is eval_dataset
    assert {"short/reward/a_count", "long/kl_se"} <= set(trainer.start_eval)


@pytest.mark.parametrize("config_name", ["standard_prompt_only", "conversational_prompt_only"])
def test_trls_train_scenario_a_reward_model_and_trl_defaults(config_name, tmp_path):
    """TRL's `test_train`: a reward model with its own tokenizer, OnlineDPOConfig's fields at TRL's test values,
    plain and conversational prompts; `train_loss` ends the log."""
    standins = save_standins(tmp_path / "models")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    args = OnlinePreferenceConfig(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=2,
        max_steps=3,
        learning_rate=5.0e-7,
        report_to="none",
        use_cpu=True,
        bf16=False,
        prompts_per_round=8,
        max_new_tokens=8,
    )
    trainer = OnlinePreferenceTrainer(
        model=standins[POLICY_ID],
        reward_funcs=AutoModelForSequenceClassification.from_pretrained(standins[REWARD_ID], num_labels=1),
        args=args,
        train_dataset=zen(config_name, "train"),
        processing_class=AutoTokenizer.from_pretrained(standins[POLICY_ID]),
        reward_processing_classes=AutoTokenizer.from_pretrained(standins[REWARD_ID]),
    )
    trainer.train()
    assert "train_loss" in trainer.state.log_history[-1] and trainer.state.global_step <= 3
